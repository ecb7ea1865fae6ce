# Set-up is part of every target: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup dev test bench sim
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

test: setup       ## the whole test suite
	$(BIN)/pytest

bench: setup      ## every benchmark, printed as ratios
	$(BIN)/python -m bench
