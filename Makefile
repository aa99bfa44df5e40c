# Set-up and everyday commands. Every target creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# glibc's malloc mmaps (and page-faults) every fresh tensor over 32 MiB; these settings keep
# large tensors on the heap. See docs/performance.md.
ALLOC  := MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776

.PHONY: install demo test bench lint clean wheel-check

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The stamp is rebuilt only when the project's dependency files change: quick when installed.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(ALLOC) $(PY) -m nlgraph demo

test: install
	$(ALLOC) $(PY) -m pytest -q

bench: install
	$(ALLOC) $(PY) benchmarks/dense.py

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples conftest.py
	$(VENV)/bin/ruff format --check src tests benchmarks examples conftest.py
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

# Build the wheel and install it, with only the required dependencies, in a fresh venv; import it
# there and check that no optional extra came along. .ci/run runs it after the tests.
WHEEL_DIR := build/wheel-check
wheel-check: install
	rm -rf $(WHEEL_DIR)
	$(PIP) wheel --quiet --no-deps --no-build-isolation -w $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install --quiet -c constraints.txt $(WHEEL_DIR)/dist/nlgraph-*.whl
	cd $(WHEEL_DIR) && venv/bin/python ../../tests/wheel_check.py
