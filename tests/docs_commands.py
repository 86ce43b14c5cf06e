"""Check the shell commands of the docs against the code: what tests/test_docs_commands.py runs.

Every fenced ```bash / ```sh block of README.md and docs/*.md is split into commands (continuation
lines joined, `;` `&&` `||` `|` split, comments and redirections dropped, `VAR=value` and `export`
remembered and substituted, `cd` followed). Each command is then checked as cheaply as it can be:

- `expo ...` (or `.venv/bin/expo`): parsed by the real argument parser; `--help` is run; `run`,
  `compile` and `submit` compile the pipeline for their `--config`/`--set` (the config must load and the
  DAG must build); `models`/`promote` must name a model that some shipped config registers;
- `make TARGET`: the target exists in the Makefile;
- `python SCRIPT ...` (also `.venv/bin/python`, after `nice`/`time`): the script exists and takes
  every `--option` the command passes (its `--help` lists them);
- every command: each word that names a file of this repository (configs/..., manifests/..., a
  .yaml/.py/.md path) exists, relative to the `cd` in effect. Outputs (`--output`, `--out`, `-o`),
  absolute paths, URLs, `<placeholders>`, unset `$VARS` and generated folders (expo-runs/) are skipped.

`problems(markdown, name)` returns one line per problem ("" problems = the docs match the code).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell")
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_VAR = re.compile(r"\$\{?(\w+)\}?")
SEPARATORS = {";", "&&", "||", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "2>&1"}
OUTPUT_OPTIONS = {"--output", "--out", "-o"}
PATH_OPTIONS = {"-k", "-f", "--kustomize", "--filename", "--config", "--from-env-file"}  # always a path
REPO_DIRS = ("configs/", "manifests/", "expo/", "bench/", "docs/", "tests/", "pipelines/", "components/",
             "docker/", ".venv/")
GENERATED = ("expo-runs/", ".venv/")


@dataclass
class Command:
    where: str  # "README.md:160"
    argv: list[str]
    cwd: Path
    unresolved: set[str] = field(default_factory=set)  # $VARS with no value in the block


def blocks(markdown: str) -> list[tuple[int, str]]:
    """(line number, text) of each shell block."""
    return [(markdown[: m.start()].count("\n") + 2, m.group(2)) for m in _FENCE.finditer(markdown)
            if m.group(1) in SHELLS]


def commands(markdown: str, name: str) -> list[Command]:
    out: list[Command] = []
    for first_line, text in blocks(markdown):
        env: dict[str, str] = {}
        cwd = ROOT
        joined, lines = "", []
        for offset, raw in enumerate(text.splitlines()):
            joined += raw[:-1] + " " if raw.rstrip().endswith("\\") else raw
            if not raw.rstrip().endswith("\\"):
                lines.append((first_line + offset, joined))
                joined = ""
        for line_no, line in lines:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            argv: list[str] = []
            for token in [*lexer, ";"]:
                if token not in SEPARATORS:
                    argv.append(token)
                    continue
                cwd = _one(argv, env, cwd, f"{name}:{line_no}", out)
                argv = []
    return out


def _one(argv: list[str], env: dict[str, str], cwd: Path, where: str, out: list[Command]) -> Path:
    """Record one command (or its assignments / cd); returns the working directory after it."""
    words = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in REDIRECTS:
            skip = True
        elif not token.startswith(("2>", ">")):
            words.append(token)
    if words and words[0] == "export":
        words = words[1:]
    while words and re.fullmatch(r"\w+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = _substitute(value, env)[0]
    if not words:
        return cwd
    unresolved: set[str] = set()
    resolved = []
    for word in words:
        value, missing = _substitute(word, env)
        resolved.append(value)
        unresolved |= missing
    if resolved[0] == "cd" and len(resolved) > 1 and not unresolved:
        return (cwd / resolved[1]).resolve()
    out.append(Command(where, resolved, cwd, unresolved))
    return cwd


def _substitute(word: str, env: dict[str, str]) -> tuple[str, set[str]]:
    missing = {m for m in _VAR.findall(word) if m not in env}
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(1)), word), missing


# ---------------------------------------------------------------------------------------------


def registered_names() -> set[str]:
    """register.model_name of every shipped config and of the defaults."""
    from expo.config import load_config

    names = {load_config(None).register.model_name}
    toy = [ROOT / "expo" / "toy" / name for name in ("defaults.yaml", "smoke.yaml")]  # its other YAML is no config
    for path in [*(ROOT / "configs").glob("*.yaml"), *toy]:
        names.add(load_config(path).register.model_name)
    return names


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def check(cmd: Command) -> list[str]:
    """The problems of one command (empty: it matches the code)."""
    problems = _missing_files(cmd)
    if problems:  # the checks below would only say it again
        return [f"{cmd.where}: {' '.join(cmd.argv)}: {p}" for p in problems]
    argv = cmd.argv
    while argv and argv[0] in ("nice", "time", "/usr/bin/time", "-v", "-o"):
        argv = argv[2:] if argv[0] == "-o" else argv[1:]  # time's -o FILE: where its report goes
    if not argv:
        return problems
    program = argv[0]
    if program in ("expo", ".venv/bin/expo"):
        problems += _check_expo(argv[1:])
    elif program == "make":
        problems += [f"no make target {t!r}" for t in argv[1:] if "=" not in t and t not in make_targets()]
    elif program in ("python", "python3", ".venv/bin/python") and len(argv) > 1 and argv[1].endswith(".py"):
        problems += _check_script(cmd.cwd / argv[1], argv[2:])
    return [f"{cmd.where}: {' '.join(cmd.argv)}: {p}" for p in problems]


def _missing_files(cmd: Command) -> list[str]:
    found = []
    previous = ""
    for word in cmd.argv[1:]:
        option, _, value = word.partition("=") if word.startswith("--") and "=" in word else ("", "", word)
        is_output, is_path = previous in OUTPUT_OPTIONS, previous in PATH_OPTIONS or option in PATH_OPTIONS
        previous = word
        remote = "://" in value or "github.com/" in value or "?ref=" in value
        if is_output or remote or any(ch in value for ch in "<>*$") or value.startswith("/"):
            continue
        if _VAR.search(word) or any(v in word for v in cmd.unresolved):
            continue
        looks_like_file = is_path or value.startswith(REPO_DIRS) or re.search(r"\.(ya?ml|py|md|json)$", value)
        if not looks_like_file or value.startswith(GENERATED) or value.startswith("-"):
            continue
        if "=" in value and not is_path:
            continue
        if not (cmd.cwd / value).exists():
            found.append(f"{value} does not exist")
    return found


def _run_expo(argv: list[str]) -> tuple[int, str]:
    """`expo ARGV` in this process (the real dispatcher): (exit code, stdout + stderr)."""
    from expo.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help (0) and bad options (2)
            code = int(exc.code or 0)
    return code, buf.getvalue()


def _check_expo(args: list[str]) -> list[str]:
    if "--help" in args or "-h" in args or not args:
        code, text = _run_expo(args or ["--help"])
        return [] if code == 0 else [f"--help failed: {text.strip()[-200:]}"]
    from expo.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            parsed = build_parser().parse_args(args)
    except SystemExit:
        return [f"rejected by the argument parser: {err.getvalue().strip().splitlines()[-1]}"]
    sub = args[0]
    if sub in ("run", "compile", "submit"):
        with tempfile.TemporaryDirectory() as tmp:
            config = ["--config", parsed.config] if parsed.config else []
            sets = [a for s in parsed.overrides for a in ("--set", s)]
            code, text = _run_expo(["compile", *config, *sets, "--output", str(Path(tmp) / "p.yaml")])
        return [] if code == 0 else [f"does not compile: {text.strip()[-300:]}"]
    if sub in ("models", "promote") and parsed.name not in registered_names():
        return [f"no config registers a model named {parsed.name!r}"]
    return []


def _check_script(script: Path, args: list[str]) -> list[str]:
    if not script.is_file():
        return [f"{os.path.relpath(script, ROOT)} does not exist"]
    if "--" in args:  # the end of the script's options: what follows is another program's (bench/record.py)
        args = args[:args.index("--")]
    options = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if not options:
        return []
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return [f"--help failed: {proc.stderr.strip()[-200:]}"]
    return [f"{script.name} has no option {o}" for o in sorted(options) if o not in proc.stdout]


def problems(markdown: str, name: str) -> list[str]:
    return [p for cmd in commands(markdown, name) for p in check(cmd)]
