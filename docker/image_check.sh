#!/usr/bin/env bash
# Builds the Dockerfile's CPU target without a Docker engine or a registry, then runs every pipeline
# step inside the built image the way Kubeflow runs it: as the image's own user (uid 10001), with the
# image's own environment, writing only to a mounted folder.
#
#   make image-check            # or docker/image_check.sh; needs root, buildah and mmdebstrap
#   docker/image_check.sh --inputs  # only the cached inputs (base, wheelhouse, GPU lock); make test
#                                   # makes them beside the test suites, as they wait on the network
#
# Base image: the registry's python:3.11.14-slim-bookworm cannot be pulled here, so mmdebstrap makes
# a Debian bookworm base: the same Debian release, Debian's Python 3.11 (3.11.2, not 3.11.14); cached,
# rebuilt when its package list or mirrors change.
# Packages: this machine's pip (its own indexes, proxy and certificates; here the CPU torch wheel is
# local) builds a wheelhouse of the lock and torch (cached per lock), and the build installs from it
# alone, so the Dockerfile's own pip commands run unchanged and offline.
# Builder: buildah with vfs storage and chroot isolation (no daemon, no overlay mounts, no cgroups);
# its storage is deleted on exit: vfs keeps full copies of every layer.
# Output: each phase with its time, the image size; a failure ends with one line naming the phase.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${IMAGE_CACHE:-$ROOT/build/image}
IMAGE=localhost/expo:cpu-check
SUITE=bookworm
# python3.11 is what python:3.11-slim has; python-is-python3 gives the `python` the Dockerfile calls;
# passwd holds useradd.
BASE_PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates
MIRRORS=("deb http://deb.debian.org/debian $SUITE main"
         "deb http://deb.debian.org/debian $SUITE-updates main"
         "deb http://deb.debian.org/debian-security $SUITE-security main")
TORCH=$(sed -n 's/^TORCH := //p' "$ROOT/Makefile")
LOGS=$CACHE/logs
STORE=(--root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)
BUILDAH=(buildah "${STORE[@]}")

fail() {  # the one line that says what failed
    echo "image-check: FAILED at $1: $2" >&2
    exit 1
}

# Runs one named phase with its output in $LOGS/<name>.log; prints its time, or the log's tail and
# the failing line.
phase() {
    local name=$1; shift
    local start=$SECONDS
    if "$@" >"$LOGS/$name.log" 2>&1; then
        printf '  %-14s %4d s\n' "$name" $((SECONDS - start))
    else
        local log=$LOGS/$name.log step cause
        tail -n 15 "$log" | sed 's/^/    | /' >&2
        # A failed Dockerfile step is named by its instruction; the cause is the last line above
        # buildah's own exit lines.
        step=$(grep -m1 -o 'building at STEP "[^"]*"' "$log" || true)
        cause=$(grep -v -e '^subprocess exited' -e '^Error: building at STEP' -e '^Error: exit status' \
                "$log" | tail -n 1)
        fail "$name" "${step:+$step: }$cause (log: $log)"
    fi
}

cleanup() {
    "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    rm -rf "$CACHE/storage" "$CACHE/run" "$CACHE/work"
}

# The phases' functions chain with && because `set -e` does not apply inside an `if` condition.
base_tar() {  # $1: the cached tarball to write
    mmdebstrap --variant=apt --format=tar --include="$BASE_PACKAGES" "$SUITE" "$1.tmp" "${MIRRORS[@]}" \
        && mv "$1.tmp" "$1"
}

import_base() {  # $1: tarball, $2: image name
    local ctr
    ctr=$("${BUILDAH[@]}" from scratch) && "${BUILDAH[@]}" add "$ctr" "$1" / \
        && "${BUILDAH[@]}" commit --rm "$ctr" "$2"
}

wheelhouse() {  # $1: folder for the lock's wheels and torch (sdists built here into wheels)
    rm -rf "$1.tmp" && pip wheel --no-deps -w "$1.tmp" -r "$ROOT/docker/requirements-cpu.lock" "$TORCH" \
        && mv "$1.tmp" "$1"
}

build() {  # $1: base image
    # The build's pip reads this machine's wheelhouse and nothing else.
    printf '[global]\nno-index = true\nfind-links = /wheels\n' >"$CACHE/pip.conf"
    "${BUILDAH[@]}" bud --isolation chroot --format docker --pull-never --layers=false \
        --target cpu --build-arg PYTHON_IMAGE="$1" \
        -v "$WHEELS:/wheels:ro" -v "$CACHE/pip.conf:/etc/pip.conf:ro" \
        -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
}

container() {  # sets CTR: a working container of the built image
    CTR=$("${BUILDAH[@]}" from --pull-never "$IMAGE") && echo "$CTR"
}

in_image() {  # a command in the image, as its user, the run folder mounted at /workspace
    "${BUILDAH[@]}" run --isolation chroot -v "$CACHE/work:/workspace" "$CTR" -- "$@"
}

CHECK_USER='test "$(id -u):$(id -g)" = 10001:10001 || { echo "runs as $(id -u):$(id -g)"; exit 1; }'

# The run's summary and its registered model, read inside the image from the mounted run folder.
CHECK_RUN='
import json, subprocess
run = "/workspace/run"
summary = json.load(open(f"{run}/summary.json"))
models = sorted(summary["models"])
assert models == ["base", "exp-grpo", "grpo"], f"summary.json has the models {models}"
uri = summary["registered_model_uri"]
assert uri.startswith("models:/expo-smoke/"), f"summary.json registered {uri}"
out = subprocess.run(["expo", "models", "expo-smoke", "--run", run, "--json"], check=True,
                     capture_output=True, text=True).stdout
aliases = {str(row["version"]): row["aliases"] for row in json.loads(out)}
version = uri.rsplit("/", 1)[1]
assert version in aliases, f"{uri} is not in the registry, which has the versions {sorted(aliases)}"
print(f"summary: models {models}; registered {uri}, aliases {aliases[version]}")
'

inputs_only=0
case "${1:-}" in
    --inputs) inputs_only=1 ;;
    "") ;;
    *) fail "setup" "unknown argument ${1} (the only one is --inputs)" ;;
esac
[ "$(id -u)" = 0 ] || fail "setup" "buildah with chroot isolation and mmdebstrap need root"
for tool in buildah mmdebstrap pip; do
    command -v "$tool" >/dev/null || fail "setup" "$tool is not installed (make image-check installs it)"
done
mkdir -p "$LOGS"
total=$SECONDS
if [ "$inputs_only" = 1 ]; then
    echo "image-check --inputs: the Debian base, the wheelhouse and the GPU lock (logs: $LOGS)"
else
    cleanup
    trap cleanup EXIT
    echo "image-check: CPU target of $ROOT/Dockerfile (logs: $LOGS)"
fi

key=$(printf '%s\n' tar "$SUITE" "$BASE_PACKAGES" "${MIRRORS[@]}" | sha256sum | cut -c1-12)
BASE_TAR=$CACHE/debian-$SUITE-$key.tar
if [ ! -f "$BASE_TAR" ]; then
    rm -rf "$CACHE"/debian-*.tar
    phase base-debian base_tar "$BASE_TAR"
else
    echo "  base-debian    cached ($(basename "$BASE_TAR"))"
fi

lock=$(sed 's/ *#.*//' "$ROOT/docker/requirements-cpu.lock" | cat - <(echo "$TORCH") | sha256sum | cut -c1-12)
WHEELS=$CACHE/wheels-$lock
if [ ! -d "$WHEELS" ]; then
    rm -rf "$CACHE"/wheels-*
    phase wheelhouse wheelhouse "$WHEELS"
else
    echo "  wheelhouse     cached ($(basename "$WHEELS"))"
fi
# The GPU target's CUDA base cannot be pulled here: its lock is resolved as it stands instead, by
# .venv's recent pip where it exists (it reads PyPI's metadata files; pip 23 downloads whole wheels,
# gigabytes of CUDA libraries).
lock_python=$ROOT/.venv/bin/python
[ -x "$lock_python" ] || lock_python=python3
gpu_ok=$CACHE/gpu-lock-$(sha256sum <"$ROOT/docker/requirements-gpu.lock" | cut -c1-12).ok
if [ ! -f "$gpu_ok" ]; then
    phase gpu-lock "$lock_python" "$ROOT/docker/lock.py" --check gpu
    rm -f "$CACHE"/gpu-lock-*.ok && touch "$gpu_ok"
else
    echo "  gpu-lock       passed before for this lock ($(basename "$gpu_ok"))"
fi
if [ "$inputs_only" = 1 ]; then
    echo "image-check --inputs: ready in $((SECONDS - total)) s"
    exit 0
fi

phase base-import import_base "$BASE_TAR" "localhost/expo-debian-base:$key"
phase build build "localhost/expo-debian-base:$key"
size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE")

phase container container
# The image's own user, like a pod with runAsUser unset: the folder it writes is its own, as a
# volume with fsGroup would be.
install -d -o 10001 -g 10001 "$CACHE/work"
phase user in_image sh -c "$CHECK_USER"
phase pip-check in_image pip check
phase expo-help in_image expo --help
phase expo-compile in_image expo compile --output /workspace/pipeline.yaml
# expo/toy/smoke.yaml as the installed package holds it: the image has no source tree.
phase expo-run in_image sh -c 'expo run --output /workspace/run \
    --config "$(python -c "import expo, os; print(os.path.dirname(expo.__file__))")/toy/smoke.yaml"'
phase run-checked in_image python -c "$CHECK_RUN"
tail -n 1 "$LOGS/run-checked.log" | sed 's/^/  /'
echo "image-check: passed in $((SECONDS - total)) s; image $IMAGE: $size" \
    "(uncompressed, as buildah reports it)"
