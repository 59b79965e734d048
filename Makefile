# disvae: `make demo` trains a small model on the built-in dSprites; `make test` runs the suite.
# Both build .venv from nothing. Override the interpreter or the torch build, e.g.
#   make install PYTHON=python3.12 TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_OUT ?= runs/demo
DEMO_STEPS ?= 600
BIN := $(VENV)/bin
SRC := src tests benchmarks

.PHONY: install demo test lint format bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The pinned CPU torch goes in first, so that the package's own (range) requirement on torch
# is already met and pip never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/disvae train --preset btcvae_dsprites --steps $(DEMO_STEPS) --log-every 100 \
		--checkpoint-every 200 --val-fraction 0.01 --out $(DEMO_OUT) --overwrite --no-progress
	$(BIN)/disvae evaluate $(DEMO_OUT)
	$(BIN)/disvae plot $(DEMO_OUT) all
	$(BIN)/disvae report $(DEMO_OUT)
	@echo "demo run written to $(DEMO_OUT): open $(DEMO_OUT)/report.html in a browser"

test: install lint browser
	$(BIN)/python -m pytest -q

# The HTML report's test drives a real headless Chromium (Debian's package). Installed when
# missing and possible (root with apt-get, as in CI); otherwise that one test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "note: chromium not found; the report's browser test will be skipped"

lint: install
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: install
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

bench: install
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
