"""Dockerfile, checked without a Docker engine: hadolint, checkov, its stages, user, pins and locks.

"Its requirements resolve": docker/requirements-<target>.lock are pip's own resolution (docker/lock.py);
here they are checked against pyproject.toml's specifiers and, for every locked package installed in
this environment at the same version, against that package's own declared requirements.
"""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lint_tools import ROOT, checkov_results, run, tool

DOCKERFILE = (ROOT / "Dockerfile").read_text()
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


def lock(target: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "docker" / f"requirements-{target}.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and canonicalize_name(name) not in pins, f"bad or duplicate pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


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


def test_cpu_torch_matches_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH := (torch==\S+)", makefile, re.M).group(1)
    assert f'"{torch}"' in DOCKERFILE
    assert not [n for n in lock("cpu") if n == "torch" or n.startswith("nvidia-") or n == "triton"]


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_locks_satisfy_pyproject(target):
    pins = lock(target)
    wanted = list(pyproject()["dependencies"])
    if target == "gpu":
        wanted += pyproject()["optional-dependencies"]["gpu"]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if target == "cpu" and name == "torch":
            continue  # from the CPU wheel index, pinned in the Dockerfile
        assert name in pins, f"{target} lock lacks {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {req}"
    for server in ("psycopg2-binary", "boto3"):  # the MLflow server's PostgreSQL and S3 clients
        assert server in pins


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
    assert checked >= 40  # most of the lock is installed here; a near-empty check would prove nothing
