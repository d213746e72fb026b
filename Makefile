# One command each: `make simulate` sets up and runs the main job on the embedded defaults;
# `make test` sets up and runs the tests (what CI runs). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes first and pinned: the CPU build. An open range would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup simulate test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[rl,eval,serve,registry,dev]"
	touch $@

setup: $(BIN)/.installed

simulate: setup
	$(BIN)/rlscale simulate

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/rlscale bench env

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
