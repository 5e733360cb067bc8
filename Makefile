# One-command entry points. Each target is idempotent: it creates .venv on first use,
# reinstalls only when pyproject.toml or the constraints change, then runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
THREADS ?= 1

.PHONY: setup test demo lint clean

$(STAMP): pyproject.toml requirements/cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/cpu.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -q

# Each demo writes a new run folder (runs/demo-<time>), so running it again never clashes with an earlier run.
demo: $(STAMP)
	$(BIN)/rebalance demo --threads $(THREADS) --out runs/demo-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
