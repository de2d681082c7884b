# `make demo` and `make test` work on a fresh machine: each creates .venv and installs everything.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the wheels this platform's pip has locally (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

$(BIN)/lavit: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/lavit

.PHONY: install demo test test-fast bench
install: $(BIN)/lavit

demo: $(BIN)/lavit
	$(BIN)/lavit demo --out runs/demo

test: $(BIN)/lavit
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/lavit
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BIN)/lavit
	$(BIN)/lavit bench train --json
