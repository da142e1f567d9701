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

# The embedded stack on a synthetic data set: replay it into ./data/speedlayer.db, serve the API.
run: setup
	$(BIN)/speedlayer synth --out data/synthetic.csv --symbols 20 --days 2
	$(BIN)/speedlayer replay data/synthetic.csv
	$(BIN)/speedlayer api --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache data/synthetic.csv
