# The README's two commands: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup tools test lint unit run clean registry

setup: $(STAMP) tools

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

tools:
	scripts/setup-tools.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -m "not slow and not network" -q

test: lint
	$(VENV)/bin/pytest -q

run: setup
	$(VENV)/bin/basekiln lock --check || $(VENV)/bin/basekiln lock
	$(VENV)/bin/basekiln fetch

registry: setup
	scripts/registry.sh start

clean:
	rm -rf $(VENV) .tools .cache
