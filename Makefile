# `make test` and `make demo` set everything up on a fresh machine: a .venv with adapterlab installed.
# CPU machines use constraints-cpu.txt (the CPU torch wheel); on a GPU machine run `make test CONSTRAINTS=`.
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints-cpu.txt
PYTEST_ARGS ?=

.PHONY: install browser test test-fast lint demo clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The browser test of `adapterlab serve`'s page (tests/test_serve_page.py) drives Debian's chromium through
# chromium-driver. As root they are installed when missing; otherwise (or when apt-get fails) that test skips and
# its reason says how to install them.
browser:
	@if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "note: apt-get could not install chromium chromium-driver; the browser test will skip"; \
	else echo "note: chromium/chromium-driver missing (install: apt-get install -y chromium chromium-driver, as root); the browser test will skip"; fi

test: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install browser
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

demo: install
	$(PY) -m adapterlab demo

clean:
	rm -rf $(VENV) .pytest_cache
