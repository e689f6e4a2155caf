# Two commands on a fresh machine: `make run` (the whole pipeline on the embedded data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of PyTorch (from local disk here); GPU users: see README, "Using a GPU".
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,tflite,ray]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lcasc run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check lcasc tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
