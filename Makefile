# `make demo` and `make test` work on a fresh machine: each creates .venv and installs everything.
# `make test-lowest` runs the suite again in .venv-lowest, at the lowest transformers of the supported range.
PYTHON ?= python3.11
# torch/torchvision are pinned to the wheels this platform's pip has locally (see README).
TORCH := torch==2.14.1 torchvision==0.29.1
# The lower end of pyproject's transformers range (the upper end is what a fresh install resolves to).
TRANSFORMERS_LOWEST_VERSION := 5.20.0
TRANSFORMERS_LOWEST := transformers==$(TRANSFORMERS_LOWEST_VERSION)
# lmms-eval's full dependency set is ~150 packages (CUDA wheels, wandb, ...). The tests need only its model
# interface and registry, so the test environment installs it without dependencies plus the three it imports.
LMMS_EVAL := lmms-eval==0.7.3
LMMS_EVAL_DEPS := loguru pytz sqlitedict
# DeepSpeed for the ZeRO-2/3 bf16 tests, run on its CPU accelerator (DS_ACCELERATOR=cpu, no compiled ops; tested
# version). GPU users install it themselves (`pip install deepspeed`); its tests skip where it is absent.
DEEPSPEED := deepspeed==0.19.8
# Both cores: the multi-process tests pick free ports (torchrun --standalone, accelerate --main_process_port).
# `make test` is the fast suite (under 5 minutes on 2 cores); the end-to-end tests marked `slow` (trained toy models,
# multi-process engines, the demo at reduced budgets) are `make test-slow`, and the real-width rehearsal of a first
# run (tests/test_rehearsal.py) is `make test-rehearsal`; .ci/run runs all three.
PYTEST := python -m pytest -q -n 2 --dist worksteal

# $(call venv,DIR,EXTRA PIP ARGS): create DIR if missing and install the package with its test extras
define venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet $(TORCH)
	$(1)/bin/pip install --quiet -e ".[test]" $(2)
	$(1)/bin/pip install --quiet --no-deps $(LMMS_EVAL)
	$(1)/bin/pip install --quiet $(LMMS_EVAL_DEPS)
	$(1)/bin/pip install --quiet $(DEEPSPEED)
	touch $(1)/bin/lavit
endef

.venv/bin/lavit: pyproject.toml
	$(call venv,.venv,)

.venv-lowest/bin/lavit: pyproject.toml Makefile
	$(call venv,.venv-lowest,"$(TRANSFORMERS_LOWEST)")

.PHONY: install demo test test-slow test-rehearsal test-lowest bench
install: .venv/bin/lavit

demo: .venv/bin/lavit
	.venv/bin/lavit demo --out runs/demo

test: .venv/bin/lavit
	.venv/bin/$(PYTEST) -m "not slow and not rehearsal"

test-slow: .venv/bin/lavit
	.venv/bin/$(PYTEST) -m "slow and not rehearsal"

test-rehearsal: .venv/bin/lavit
	.venv/bin/python -m pytest -q -m rehearsal

test-lowest: .venv-lowest/bin/lavit
	.venv-lowest/bin/python -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_LOWEST_VERSION)', transformers.__version__"
	.venv-lowest/bin/$(PYTEST) -m "not rehearsal"

bench: .venv/bin/lavit
	.venv/bin/lavit bench train --json
	.venv/bin/lavit bench extract --json
