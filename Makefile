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

# The main job: the nightly flow over the catalogue, into a local registry, signed
# with a throwaway key made on first use (its password is empty).
KEY := .cache/keys/cosign.key
REGISTRY_PORT ?= 5000

run: setup
	scripts/registry.sh start
	test -f $(KEY) || (mkdir -p $(dir $(KEY)) && cd $(dir $(KEY)) && \
	  COSIGN_PASSWORD= $(CURDIR)/.tools/bin/cosign generate-key-pair >/dev/null)
	COSIGN_PASSWORD= $(VENV)/bin/basekiln nightly \
	  --registry 127.0.0.1:$(REGISTRY_PORT)/basekiln --key $(KEY)

registry: setup
	scripts/registry.sh start

clean:
	rm -rf $(VENV) .tools .cache
