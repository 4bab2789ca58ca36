# The two commands of the README: `make demo` and `make test`. Both bootstrap .venv from
# requirements.lock (exact pins) the first time, and reuse it afterwards.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test lint bench lock clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/autobill demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/rating.py

# Re-resolve the pins from pyproject.toml's ranges (run by hand, then commit requirements.lock).
lock:
	rm -rf /tmp/autobill-lock && $(PY) -m venv /tmp/autobill-lock
	/tmp/autobill-lock/bin/pip install --quiet --upgrade pip
	/tmp/autobill-lock/bin/pip install --quiet ".[dev]"
	{ echo "# Exact pins of every package CI tested (pip freeze of a fresh .venv)."; \
	  echo "# Regenerate: make lock. Direct dependencies and their ranges are in pyproject.toml."; \
	  /tmp/autobill-lock/bin/pip freeze --all --exclude autobill --exclude pip; } > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
