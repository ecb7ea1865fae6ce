# Set-up is part of every target: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The exact versions, with hashes: requirements.lock is what the image runs (Dockerfile),
# requirements-dev.lock adds the `dev` and `test` extras for this machine. `make lock` refreshes both.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

.PHONY: setup dev test typecheck mutants bench sim lock
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

lock:             ## after changing a dependency in pyproject.toml: resolve and hash every version again
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file $(LOCK) pyproject.toml
	# the dev lock starts from the image's: pip-compile keeps an output file's pins, so both agree
	cp $(LOCK) $(DEV_LOCK)
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra dev --extra test --output-file $(DEV_LOCK) pyproject.toml

dev: setup        ## the whole stack: Redis, simulator, API, worker, beat, Flower
	$(BIN)/warmpool dev

sim: setup        ## the Vast.ai simulator alone
	$(BIN)/warmpool sim

test: typecheck mutants  ## the whole test suite (after the type and mutation checks)
	$(BIN)/pytest -n 2 --dist loadfile  # two processes, a test module to each at a time (its fixtures stay together)

typecheck: setup  ## mypy over app/ and tasks/ ([tool.mypy] in pyproject.toml)
	$(BIN)/mypy

mutants: setup    ## each guarantee's test fails when its guard is broken (tests/mutants.py)
	$(BIN)/python tests/mutants.py

bench: setup      ## every benchmark, printed as ratios
	$(BIN)/python -m bench
