# Set-up and everyday commands. Every target creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# glibc's malloc mmaps (and page-faults) every fresh tensor over 32 MiB; these settings keep
# large tensors on the heap. See docs/performance.md.
ALLOC  := MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776

.PHONY: install demo test bench lint docs clean wheel-check extras-check

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

# The documentation site (mkdocs.yml) into site/; --strict fails on a broken link, a missing
# cross-reference or a docstring warning.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --clean

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples docs/*.py conftest.py
	$(VENV)/bin/ruff format --check src tests benchmarks examples docs/*.py conftest.py
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache

# Build the wheel and install it, with only the required dependencies, in a fresh venv; import it
# there and check that no optional extra came along. .ci/run runs it after the tests.
WHEEL_DIR := build/wheel-check
wheel-check: install
	rm -rf $(WHEEL_DIR)
	$(PIP) wheel --quiet --no-deps --no-build-isolation -w $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install --quiet -c constraints.txt $(WHEEL_DIR)/dist/nlgraph-*.whl
	cd $(WHEEL_DIR) && venv/bin/python ../../tests/wheel_check.py

# Install the built wheel with every optional extra in a fresh venv (torch-scatter compiles
# against the installed torch: several minutes) and check that each extra imports and serves
# its feature. .ci/run runs it after the wheel check.
EXTRAS_DIR := build/extras-check
extras-check: install
	rm -rf $(EXTRAS_DIR)
	$(PIP) wheel --quiet --no-deps --no-build-isolation -w $(EXTRAS_DIR)/dist .
	$(PYTHON) -m venv $(EXTRAS_DIR)/venv
	$(EXTRAS_DIR)/venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(EXTRAS_DIR)/venv/bin/python -m pip install --quiet -c constraints.txt \
		"$$(ls $(EXTRAS_DIR)/dist/nlgraph-*.whl)[faiss,triton,viz,docs,dev]"
	$(EXTRAS_DIR)/venv/bin/python -m pip install --quiet --no-build-isolation -c constraints.txt \
		"$$(ls $(EXTRAS_DIR)/dist/nlgraph-*.whl)[scatter]"
	cd $(EXTRAS_DIR) && venv/bin/python ../../tests/extras_check.py
