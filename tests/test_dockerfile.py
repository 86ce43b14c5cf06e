"""Dockerfile, checked without a Docker engine: hadolint, checkov, its stages, user, pins and locks.

"Its requirements resolve": docker/requirements-<target>.lock are pip's own resolution (docker/lock.py);
here they are checked against pyproject.toml in both directions (every dependency pinned within its
specifier, every pin asked for by a dependency or by something pinned) and, for every locked package
installed in this environment at the same version, against that package's own declared requirements.
The image itself is built and run by `make image-check` (docker/image_check.sh).
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lint_tools import ROOT, checkov_results, run, tool

SOURCE = (ROOT / "Dockerfile").read_text()
# The global build arguments' defaults (before the first FROM), and the Dockerfile as a build with
# no --build-arg sees it: its base images substituted, as checkov and these tests read it.
ARG_DEFAULTS = dict(re.findall(r"^ARG (\w+)=(\S+)$", SOURCE.split("\nFROM ")[0], re.M))
DOCKERFILE = re.sub(r"^FROM \$\{(\w+)\}", lambda m: f"FROM {ARG_DEFAULTS[m[1]]}", SOURCE, flags=re.M)
FINAL_STAGES = ("cpu", "gpu")


def instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        out.append((stage, word.upper(), rest.strip()))
    return out


def stage_lines(stage: str, word: str) -> list[str]:
    return [rest for s, w, rest in instructions() if s == stage and w == word]


def lock_text(target: str) -> str:
    return (ROOT / "docker" / f"requirements-{target}.lock").read_text()


def parse_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, what requires it), from `name==version  # via a, b` lines."""
    pins = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            pin, _, via = line.partition("# via ")
            name, _, version = pin.strip().partition("==")
            assert version and canonicalize_name(name) not in pins, f"bad or duplicate pin: {line}"
            pins[canonicalize_name(name)] = (version, {v.strip() for v in via.split(",") if v.strip()})
    return pins


def lock(target: str) -> dict[str, str]:
    return {name: version for name, (version, _) in parse_lock(lock_text(target)).items()}


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_hadolint_passes():
    proc = run([tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nUSER root\n")
    proc = run([tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(bad)])
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # :latest


def test_checkov_dockerfile_checks_pass(tmp_path):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    results = checkov_results(str(tmp_path))["dockerfile"]
    assert results["summary"]["passed"] > 50
    assert [c["check_id"] for c in results["failed_checks"]] == []


def test_stages_and_make_targets():
    stages = [rest.split(" AS ")[1] for _, w, rest in instructions() if w == "FROM"]
    assert stages == ["cpu-builder", "cpu", "gpu-python", "gpu-builder", "gpu"]
    makefile = (ROOT / "Makefile").read_text()
    assert set(re.findall(r"--target (\S+)", makefile)) == set(FINAL_STAGES)
    # Final stages copy only the environment from their builder: no compiler cache or pip cache.
    assert stage_lines("cpu", "COPY") == ["--from=cpu-builder /opt/venv /opt/venv"]
    assert stage_lines("gpu", "COPY") == ["--from=gpu-builder /opt/venv /opt/venv"]
    assert "nvidia/cuda:" in [rest for s, w, rest in instructions() if w == "FROM" and s == "gpu-python"][0]


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_final_stages_run_as_numeric_non_root_user(stage):
    users = stage_lines(stage, "USER")
    assert users and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", users[-1]), users
    last_user = max(i for i, (s, w, _) in enumerate(instructions()) if s == stage and w == "USER")
    after = [w for s, w, _ in instructions()[last_user + 1 :] if s == stage]
    assert "RUN" not in after  # nothing runs as root after the switch


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_expo_is_on_path(stage):
    env = " ".join(stage_lines(stage, "ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env
    builder = f"{stage}-builder"
    assert any("pip install --no-deps /src" in r for r in stage_lines(builder, "RUN"))
    assert pyproject()["scripts"]["expo"] == "expo.cli:main"
    assert stage_lines(stage, "CMD") == ['["expo", "--help"]']


def test_no_secret_in_build_args_or_env():
    for _stage, word, rest in instructions():
        if word in ("ARG", "ENV"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY)", rest, re.I), rest
    assert "--mount=type=secret" not in DOCKERFILE  # nothing needs one: the build uses public indexes only


def test_build_context_is_an_allow_list():
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = [ln[1:] for ln in lines if ln.startswith("!")]
    for bad in (".venv", ".venv-tools", ".git", "expo-runs", "mlflow.db", "mlruns", ".env"):
        assert not any(a.rstrip("/").startswith(bad) for a in allowed), bad
    # Every COPY source from the context exists and is let through.
    for _stage, word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: missing"
                assert any(
                    src == a.rstrip("/")
                    or src.startswith(a.rstrip("/"))
                    or re.fullmatch(a.replace("*", ".*"), src)
                    for a in allowed
                ), f"{src} is ignored"


def test_base_images_are_pinned():
    stages = {rest.split(" AS ")[1] for _, w, rest in instructions() if w == "FROM"}
    images = [
        rest.split()[0] for _, w, rest in instructions() if w == "FROM" and rest.split()[0] not in stages
    ]
    assert images == [
        "python:3.11.14-slim-bookworm",
        "python:3.11.14-slim-bookworm",
        "nvidia/cuda:13.0.1-base-ubuntu22.04",
    ]
    for image in images:
        assert re.search(r":\d+\.\d+\.\d+-", image), f"{image}: pin an exact release"


def test_base_images_are_build_arguments():
    """A build without registry access substitutes its own bases (docker/image_check.sh)."""
    froms = re.findall(r"^FROM (\S+)", SOURCE, re.M)
    assert sorted({f for f in froms if f.startswith("$")}) == ["${CUDA_IMAGE}", "${PYTHON_IMAGE}"]
    assert ARG_DEFAULTS["PYTHON_IMAGE"] == "python:3.11.14-slim-bookworm"
    assert ARG_DEFAULTS["CUDA_IMAGE"] == "nvidia/cuda:13.0.1-base-ubuntu22.04"
    check = (ROOT / "docker" / "image_check.sh").read_text()
    assert "--build-arg PYTHON_IMAGE=" in check and "--target cpu" in check


def test_cpu_and_gpu_images_run_alike():
    """The GPU image is not built here: its final stage must do what the checked CPU stage does,
    the base and the NVIDIA variables aside."""
    for word in ("RUN", "COPY", "WORKDIR", "USER", "HEALTHCHECK", "CMD"):
        cpu = [line.replace("cpu-builder", "BUILDER") for line in stage_lines("cpu", word)]
        assert cpu == [line.replace("gpu-builder", "BUILDER") for line in stage_lines("gpu", word)], word
    cpu_env, gpu_env = (" ".join(stage_lines(s, "ENV")).split() for s in ("cpu", "gpu"))
    assert set(cpu_env) <= set(gpu_env)
    assert {v.split("=")[0] for v in set(gpu_env) - set(cpu_env)} == {"NVIDIA_VISIBLE_DEVICES",
                                                                        "NVIDIA_DRIVER_CAPABILITIES"}


def test_cpu_torch_matches_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH := (torch==\S+)", makefile, re.M).group(1)
    assert f'"{torch}"' in DOCKERFILE
    assert not [n for n in lock("cpu") if n == "torch" or n.startswith("nvidia-") or n == "triton"]


def lock_script():
    """docker/lock.py as a module: what it asks for besides pyproject.toml (the server's clients, vLLM)."""
    spec = importlib.util.spec_from_file_location("docker_lock", ROOT / "docker" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drift(target: str, roots: list[tuple[str, str]], text: str) -> list[str]:
    """What keeps a lock from being the resolution of its roots ((requirement, who asks), as
    docker/lock.py builds them from pyproject.toml): a root unpinned, outside its specifier or not
    marked as asked for; a pin nothing asks for, directly or through other pins."""
    pins = parse_lock(text)
    skipped = lock_script().CPU_SKIP if target == "cpu" else ()  # torch from its own index in the CPU image
    refresh = f"(refresh: python docker/lock.py --keep {target})"
    problems, asked = [], set()
    for req_text, label in roots:
        req = Requirement(req_text)
        name = canonicalize_name(req.name)
        asked.add((name, label))
        if name.startswith(skipped):
            continue
        if name not in pins:
            problems.append(f"{label} asks for {req}; the {target} lock lacks {name} {refresh}")
            continue
        version, via = pins[name]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{label} asks for {req}; the {target} lock has {version} {refresh}")
        if label not in via:
            problems.append(f"{label} asks for {name}; the {target} lock does not say so {refresh}")
    children = {}
    for name, (_, via) in pins.items():
        for parent in via:
            children.setdefault(parent, set()).add(name)
            if parent in {label for _, label in roots} and (name, parent) not in asked:
                problems.append(f"{name}: the {target} lock says {parent} asks for it; it does not")
    reached = set()
    todo = [label for _, label in roots] + [n for n in children if n.startswith(skipped)]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo += children.get(node, ())
    problems += [f"{name}=={pins[name][0]}: in the {target} lock, but nothing the project asks for needs it"
                 for name in sorted(set(pins) - reached)]
    return problems


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_lock_and_pyproject_do_not_drift(target):
    assert drift(target, lock_script().requirements(target), lock_text(target)) == []
    pins = lock(target)
    for server in ("psycopg2-binary", "boto3"):  # the MLflow server's PostgreSQL and S3 clients
        assert server in pins


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # a dependency added to pyproject.toml, the lock not refreshed
        ({"root": ("leftpad>=1", "pyproject.toml")}, "the cpu lock lacks leftpad"),
        # a dependency's lower bound raised past the pin
        ({"root": ("mlflow>=99", "pyproject.toml")}, "pyproject.toml asks for mlflow>=99; the cpu lock has"),
        # a pin added to the lock alone
        ({"line": "leftpad==1.0\n"}, "leftpad==1.0: in the cpu lock, but nothing the project asks for"),
        # ... claiming pyproject.toml asks for it
        ({"line": "leftpad==1.0  # via pyproject.toml\n"}, "the cpu lock says pyproject.toml asks for it"),
        # ... or claiming a package that is not pinned needs it
        ({"line": "leftpad==1.0  # via rightpad\n"}, "leftpad==1.0: in the cpu lock, but nothing"),
    ],
)
def test_drift_is_caught(change, expected):
    roots = lock_script().requirements("cpu") + ([change["root"]] if "root" in change else [])
    text = lock_text("cpu") + change.get("line", "")
    problems = drift("cpu", roots, text)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_locked_packages_agree_with_their_own_requirements(target):
    """For each locked package installed here at the locked version, its requirements are locked too."""
    pins = lock(target)
    env = {
        **default_environment(),
        "python_version": "3.11",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "extra": "",
    }
    outside = {"torch"} if target == "cpu" else set()  # the CPU torch wheel comes from its own index
    locked = parse_lock(lock_text(target))
    checked = 0
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked += 1
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in outside:
                continue
            assert dep in pins, f"{name}=={version} needs {req}, not in the {target} lock"
            assert req.specifier.contains(pins[dep], prereleases=True), (
                f"{name}=={version} needs {req}, lock has {pins[dep]}"
            )
        # The lock's "via" is true: each package it names as needing another does name it (under
        # some marker or extra).
        named = {canonicalize_name(Requirement(text).name) for text in dist.requires or []}
        for child, (_, via) in locked.items():
            assert name not in via or child in named, f"{child}: the lock says {name} needs it; it does not"
    assert checked >= 40  # most of the lock is installed here; a near-empty check would prove nothing
