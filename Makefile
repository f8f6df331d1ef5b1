# `make test` and `make demo` set everything up on a fresh machine: a .venv with adapterlab installed.
# CPU machines use constraints-cpu.txt (the CPU torch wheel); on a GPU machine run `make test CONSTRAINTS=`.
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints-cpu.txt
PYTEST_ARGS ?=

.PHONY: install test test-fast lint demo clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

demo: install
	$(PY) -m adapterlab demo

clean:
	rm -rf $(VENV) .pytest_cache
