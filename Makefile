# Two entry points on a fresh machine: `make check` (the main job) and `make test` (the lint, then
# the suite). `make test-torch TORCH=x.y.z` runs the suite on another torch, in its own venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TORCH ?=
TORCH_VENV ?= .venv-torch-$(TORCH)
TORCH_STAMP := $(TORCH_VENV)/.installed
TORCH_ONLY_STAMP := $(TORCH_VENV)/.torch-installed

# pip's output goes to a log in the venv ($(1)), printed only when the install fails.
QUIET_PIP = > $(1)/pip.log 2>&1 || { cat $(1)/pip.log >&2; exit 1; }

.PHONY: check test test-torch install-torch lint install clean

ifneq ($(filter test-torch install-torch,$(MAKECMDGOALS)),)
ifeq ($(TORCH),)
$(error make $(filter test-torch install-torch,$(MAKECMDGOALS)) needs the torch version, e.g. make test-torch TORCH=2.15.0)
endif
endif

check: $(STAMP)
	$(BIN)/fullgraph check

test: lint
	$(BIN)/python -m pytest -n auto

lint: $(STAMP)
	$(BIN)/ruff check .

# The checkers' tests and the project's rules, all but the slow ones. What differs between
# releases is what dynamo does and says, and that is what the checkers read; test_suite.py runs the
# reference model through every check. The model's own tests (tests/model) and the slow ones
# (end-to-end inductor runs, waits on processes) run on the pinned torch, in `make test`. Then the
# CUDA kernels' tests under triton's interpreter, on CPU tensors: these torches are CUDA builds
# and bring triton, which the pinned CPU build lacks (triton older than 3.9 skips them).
TORCH_TESTS = tests/checks $(wildcard tests/test_*.py)

test-torch: $(TORCH_STAMP)
	$(TORCH_VENV)/bin/python -m pytest -n auto -m "not slow" $(TORCH_TESTS)
	TRITON_INTERPRET=1 $(TORCH_VENV)/bin/python -m pytest tests/model/test_kernels.py

install: $(STAMP)

$(STAMP): pyproject.toml ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip $(call QUIET_PIP,$(VENV))
	$(BIN)/python -m pip install --quiet -c ci/constraints.txt -e '.[test]' $(call QUIET_PIP,$(VENV))
	touch $@

# Any release but the pinned one is PyPI's, a CUDA build: it runs the suite on CPU all the same.
# `make install-torch` installs that torch alone, a multi-GB download that .ci/run makes for two
# releases side by side: it builds nothing from the checkout, where an install of the project
# writes its metadata.
install-torch: $(TORCH_ONLY_STAMP)

$(TORCH_ONLY_STAMP):
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet --upgrade pip $(call QUIET_PIP,$(TORCH_VENV))
	$(TORCH_VENV)/bin/python -m pip install --quiet 'torch==$(TORCH)' $(call QUIET_PIP,$(TORCH_VENV))
	touch $@

$(TORCH_STAMP): pyproject.toml $(TORCH_ONLY_STAMP)
	$(TORCH_VENV)/bin/python -m pip install --quiet -e '.[test]' 'torch==$(TORCH)' $(call QUIET_PIP,$(TORCH_VENV))
	$(TORCH_VENV)/bin/python -c 'import torch; print("torch", torch.__version__, "in $(TORCH_VENV)")'
	touch $@

clean:
	rm -rf $(VENV) .venv-torch-* build *.egg-info
