# Set-up is part of every target: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup dev test mutants bench sim
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

dev: setup        ## the whole stack: Redis, simulator, API, worker, beat, Flower
	$(BIN)/warmpool dev

sim: setup        ## the Vast.ai simulator alone
	$(BIN)/warmpool sim

test: mutants     ## the whole test suite (after the mutation check)
	$(BIN)/pytest

mutants: setup    ## each guarantee's test fails when its guard is broken (tests/mutants.py)
	$(BIN)/python tests/mutants.py

bench: setup      ## every benchmark, printed as ratios
	$(BIN)/python -m bench
