# Two entry points on a fresh machine: `make check` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: check test install clean

check: $(STAMP)
	$(BIN)/fullgraph check

test: $(STAMP)
	$(BIN)/python -m pytest -n auto

install: $(STAMP)

$(STAMP): pyproject.toml ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c ci/constraints.txt -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
