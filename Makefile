# speedlayer: `make run` and `make test` do all of their own setup (idempotent; a second call is fast).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup run test lint pytest clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The embedded stack, live: Polygon simulator -> ingest -> resampler -> ./data/speedlayer.db -> API.
# `make run SPEED=5` runs the simulated market at 5 minutes per second (0 = real time).
SPEED   ?= 0
SYMBOLS ?= 100
run: setup
	$(BIN)/speedlayer up --host $(HOST) --port $(PORT) --symbols $(SYMBOLS) --speed $(SPEED)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache data/synthetic.csv
