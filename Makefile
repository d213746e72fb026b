# One command each: `make main` sets up and runs the product's main job on the embedded
# defaults (train a policy, tune the baselines, evaluate all of them and the oracle on held-out
# traffic); `make test` sets up and runs the tests (what CI runs). Both create .venv on first
# use. `make simulate` replays a day of the ServeGen trace under a fixed scaler.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes first and pinned: the CPU build. An open range would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup main simulate test lint bench clean

# the main job: a generated workload (no dataset needed) with one held-out day
MAIN_SCENARIO ?= synthetic-4day
MAIN_STEPS ?= 1500000
MAIN_SEEDS ?= 2
# one thread each for torch and numba, set before Python starts (on 2 cores the pools contend)
THREADS := OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[rl,eval,serve,registry,ray,dev]"
	touch $@

setup: $(BIN)/.installed

main: setup
	$(THREADS) $(BIN)/rlscale train --scenario $(MAIN_SCENARIO) --total-timesteps $(MAIN_STEPS)
	$(THREADS) $(BIN)/rlscale tune-baseline --scenario $(MAIN_SCENARIO) --policy all --max-trials 8
	$(THREADS) $(BIN)/rlscale evaluate --scenario $(MAIN_SCENARIO) --seeds $(MAIN_SEEDS) \
	  --policy ppo=models:/rlscale-policy@challenger --tuned
	$(BIN)/python -m rlscale.experiments.report out/evaluate/$(MAIN_SCENARIO)/results.json
	@echo "report: out/evaluate/$(MAIN_SCENARIO)/report.html"

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
