# Two commands on a fresh machine: `make run` (the whole pipeline on the embedded data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch (from local disk here), installed first: an unpinned torch pulls a multi-GB CUDA build.
# GPU users: see README, "Using a GPU".
TORCH ?= torch==2.13.0
# `make run`: core + ONNX + INT8 (the main job includes INT8; the tflite extra installs nothing, and the run
# skips INT8 with a warning, where TensorFlow / tflite-micro publish no wheels). `make test`: every extra.
RUN_EXTRAS := onnx,tflite
TEST_EXTRAS := onnx,tflite,ray,test
ARGS ?=
# Test processes (pytest-xdist): each module's tests stay on one (--dist loadfile: --dist loadgroup and its
# xdist_group marks no longer group anything with pytest 9.2, pytest-xdist issue #1386); 2 fits a 2-core machine.
TEST_WORKERS ?= 2

.PHONY: setup run test lint clean

# $(1): the extras; the stamp records that they are installed (remade when pyproject.toml changes).
define install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(1)]"
	touch $@
endef

$(VENV)/.installed-run: pyproject.toml
	$(call install,$(RUN_EXTRAS))

$(VENV)/.installed-test: pyproject.toml
	$(call install,$(TEST_EXTRAS))

setup: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(VENV)/bin/lcasc run $(ARGS)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check lcasc tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
