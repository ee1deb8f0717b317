# Every target creates .venv if missing and installs what it needs.
# TORCH pins the PyTorch build; any torch >= 2.4 works (override: make test TORCH='torch>=2.4').
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: venv demo test test-all lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/chatfactory demo

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ''

lint: venv
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs test-artifacts
