"""The lint tools of the image and manifest tests: where they are, and one checkov run.

- hadolint, yamllint, kubernetes-validate and kubectl (for `kubectl kustomize`, kustomize v5 inside)
  come from the project's `lint` extra, in .venv beside this interpreter.
- checkov cannot share .venv: its pins would downgrade packages the project needs (packaging,
  networkx, importlib-metadata). It lives in its own tool venv, `.venv-tools/`, created here on first
  use with the pinned version below (a few minutes, once per machine), or taken from $CHECKOV.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKOV_VERSION = "3.3.30"
TOOLS_VENV = ROOT / ".venv-tools"
KUSTOMIZATIONS = (
    "overlays/self-contained",
    "overlays/kfp-standalone",
    "overlays/external",
    "trainer-runtime",
)

# Checks we skip, each with its reason (passed to checkov with --skip-check).
CHECKOV_SKIPS = {
    # "Image should use digest": images are pinned to exact release tags here; the digest of the
    # project image exists only once it is built and pushed, and is set at deploy time with
    # `kustomize edit set image ghcr.io/expo-pipeline/expo@sha256:...` (docs/cluster.md). Third-party
    # digests cannot be verified from this build environment, and an unverified digest is worse than a tag.
    "CKV_K8S_43": "digests are set at deploy time (docs/cluster.md)",
}


def tool(name: str) -> str:
    """A console script of this interpreter's environment (the project's lint extra), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `pip install -e '.[lint]'` (make test does it)")
    return found


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@cache
def kustomize_build(target: str) -> str:
    """`kubectl kustomize manifests/<target>`: the real kustomize (v5, built into kubectl)."""
    proc = run([tool("kubectl"), "kustomize", str(ROOT / "manifests" / target)])
    assert proc.returncode == 0, f"kustomize build of manifests/{target} failed:\n{proc.stderr}"
    return proc.stdout


def checkov_bin() -> str:
    if os.environ.get("CHECKOV"):
        return os.environ["CHECKOV"]
    exe = TOOLS_VENV / "bin" / "checkov"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True)
        proc = run([str(TOOLS_VENV / "bin" / "pip"), "install", "--quiet", f"checkov=={CHECKOV_VERSION}"])
        if proc.returncode != 0:
            pytest.fail(f"cannot install checkov into {TOOLS_VENV}:\n{proc.stderr[-2000:]}")
    return str(exe)


@cache
def checkov_results(folder: str) -> dict[str, dict]:
    """One checkov run over `folder` (Dockerfile, Kubernetes YAML, secrets).

    Returns {framework: {"summary": {"passed", "failed", ...}, "failed_checks": [...]}}."""
    proc = run(
        [
            checkov_bin(),
            "-d",
            folder,
            "--framework",
            "kubernetes",
            "dockerfile",
            "secrets",
            "--skip-check",
            ",".join(CHECKOV_SKIPS),
            "--skip-download",
            "--quiet",
            "-o",
            "json",
        ],
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_TRUNCATION": "1"},
    )
    if proc.returncode not in (0, 1):  # 1: some check failed; anything else: checkov itself broke
        pytest.fail(f"checkov failed to run (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout) if proc.stdout.strip() else []
    reports = data if isinstance(data, list) else [data]
    return {
        r["check_type"]: {"summary": r["summary"], "failed_checks": r["results"].get("failed_checks", [])}
        for r in reports
        if "check_type" in r
    }
