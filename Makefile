# Two entry points on a fresh machine: `make check` (the main job) and `make test` (the lint, then
# the suite). `make test-torch TORCH=x.y.z` runs the suite on another torch, in its own venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TORCH ?=
TORCH_VENV ?= .venv-torch-$(TORCH)
TORCH_STAMP := $(TORCH_VENV)/.installed

# pip's output goes to a log in the venv ($(1)), printed only when the install fails.
QUIET_PIP = > $(1)/pip.log 2>&1 || { cat $(1)/pip.log >&2; exit 1; }

.PHONY: check test test-torch lint install clean

ifneq ($(filter test-torch,$(MAKECMDGOALS)),)
ifeq ($(TORCH),)
$(error make test-torch needs the torch version to test, e.g. make test-torch TORCH=2.15.0)
endif
endif

check: $(STAMP)
	$(BIN)/fullgraph check

test: lint
	$(BIN)/python -m pytest -n auto

lint: $(STAMP)
	$(BIN)/ruff check .

# Every test but the slow ones: the end-to-end inductor runs of the reference model (bench,
# generate, `fullgraph check`) test inductor's generated code, which the pinned run covers; what
# differs between releases (dynamo's behaviour and wording) is in the rest.
test-torch: $(TORCH_STAMP)
	$(TORCH_VENV)/bin/python -m pytest -n auto -m "not slow"

install: $(STAMP)

$(STAMP): pyproject.toml ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip $(call QUIET_PIP,$(VENV))
	$(BIN)/python -m pip install --quiet -c ci/constraints.txt -e '.[test]' $(call QUIET_PIP,$(VENV))
	touch $@

# Any release but the pinned one is PyPI's, a CUDA build: it runs the suite on CPU all the same.
$(TORCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet --upgrade pip $(call QUIET_PIP,$(TORCH_VENV))
	$(TORCH_VENV)/bin/python -m pip install --quiet -e '.[test]' 'torch==$(TORCH)' $(call QUIET_PIP,$(TORCH_VENV))
	$(TORCH_VENV)/bin/python -c 'import torch; print("torch", torch.__version__, "in $(TORCH_VENV)")'
	touch $@

clean:
	rm -rf $(VENV) .venv-torch-* build *.egg-info
