#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it measures and prints).
#
#   make gpu-wheels               # here, with network: the wheels the GPU machine lacks, into .whl/
#   bench/gpu_check.sh            # there: one H100 or H200, no network, under 8 minutes
#   bench/gpu_check.sh --cpu-smoke  # anywhere: tiny shapes on the CPU (CI runs it)
#
# The GPU machine has torch, transformers, accelerate and peft but not TRL, Math-Verify or this project.
# What this Python cannot import is installed from .whl/ into .whl/site (a folder beside the wheels,
# never the system's packages), --no-deps so pip never tries to replace the machine's own torch or
# transformers. The project itself runs from the working tree (PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SITE=.whl/site
export PYTHONPATH=".:$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Nothing here may reach the network: a hub lookup would hang until it times out.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# import name=distribution, for every package the check imports that the GPU machine may lack
# (make gpu-wheels downloads the same list).
NEEDED="trl=trl datasets=datasets dill=dill multiprocess=multiprocess math_verify=math-verify
latex2sympy2_extended=latex2sympy2-extended antlr4=antlr4-python3-runtime"
missing=$("$PYTHON" - "$NEEDED" <<'EOF'
import importlib.util
import sys

pairs = [pair.split("=") for pair in sys.argv[1].split()]
print(" ".join(dist for module, dist in pairs if importlib.util.find_spec(module) is None))
EOF
)
if [[ -n "$missing" ]]; then
  if [[ ! -d .whl ]]; then
    echo "gpu check: $PYTHON lacks $missing, and there is no .whl/: run 'make gpu-wheels' where PyPI is reachable" >&2
    exit 2
  fi
  echo "gpu check: installing $missing from .whl/ into $SITE" >&2
  # shellcheck disable=SC2086  # one word per distribution
  "$PYTHON" -m pip install --quiet --no-index --find-links .whl --no-deps --target "$SITE" $missing
fi

# The machine's own versions first: if an import below fails, this line says against what.
"$PYTHON" - >&2 <<'EOF'
import importlib.metadata as md
import sys


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "missing"


names = ("torch", "transformers", "accelerate", "peft", "huggingface-hub", "pyarrow", "trl", "datasets")
print("gpu check: python", sys.version.split()[0], *(f"{n} {version(n)}" for n in names))
EOF

exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 bench/gpu_check.py "$@"
