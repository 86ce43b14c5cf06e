"""Cold `expo run` vs the cached re-run of the same config, and peak memory.

    python bench/pipeline.py            # expo/toy/smoke.yaml (a few minutes on 2 cores)
    python bench/pipeline.py --full     # the embedded default as `make run` runs it

Each run is a separate `expo run` process in a fresh temporary run folder (the second reuses it).
Peak RSS is the largest resident set of any process of the run (the CLI or one step's subprocess),
from getrusage(RUSAGE_CHILDREN). Prints a table, then one JSON line with keys
`cold_s`, `cached_s`, `speedup`, `peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOKE = ["--config", str(Path(__file__).resolve().parent.parent / "expo" / "toy" / "smoke.yaml")]


def expo_run(run_dir: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "expo", "run", "--output", str(run_dir), *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the embedded default instead of a tiny budget")
    args = parser.parse_args()
    extra = [] if args.full else SMOKE
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cold = expo_run(run_dir, extra)
        cached = expo_run(run_dir, extra)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    rows = [("cold expo run", f"{cold:.1f} s"), ("cached re-run", f"{cached:.1f} s"),
            ("speedup", f"{cold / cached:.1f}x"), ("peak RSS", f"{peak_mb:.0f} MB"),
            ("config", "embedded default" if args.full else "expo/toy/smoke.yaml")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps({"cold_s": round(cold, 2), "cached_s": round(cached, 2),
                      "speedup": round(cold / cached, 2), "peak_rss_mb": round(peak_mb, 1)}))


if __name__ == "__main__":
    main()
