# Everything a fresh machine needs: `make demo` runs the main example, `make test` the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# The other supported Pythons (pyenv has them on every development and CI
# machine): the core and integration tests run on each, with the Django the
# resolver picks there (5.2 + django-tasks on 3.11, 6.x on 3.12+).
COMPAT_PYTHONS ?= 3.12 3.13
# The core and integration tests: everything but the crash loops, the
# Hypothesis crash models, the real-browser tests and the process-supervision
# tests, which run once, on the main Python (they test backrun's logic, not
# the interpreter's).
COMPAT_TESTS ?= -m "not slow" --ignore=tests/crash --ignore=tests/web/test_browser.py \
	--ignore-glob='tests/storage/test_*model*.py' --ignore=tests/storage/test_postgres_stateful.py \
	--ignore=tests/storage/test_jsonfile_crashpoints.py --ignore=tests/storage/test_jsonfile_faults.py \
	--ignore-glob='tests/cli/test_processes*.py'

.PHONY: demo test lint typecheck unit compat bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e ".[all]" --group dev
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart/main.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict backrun

unit: $(STAMP)
	$(BIN)/python -m pytest

# Both Pythons at once (their tests wait on processes and disks more than on
# the CPU); each one's output is printed whole when it ends.
compat: $(STAMP)
	@$(MAKE) --no-print-directory -j2 --output-sync=target $(addprefix compat-,$(COMPAT_PYTHONS))

compat-%: $(STAMP)
	@v=$*; prefix=$$(pyenv prefix $$v 2>/dev/null || true); \
	py=$${prefix:+$$prefix/bin/python}; \
	[ -n "$$py" ] && [ -x "$$py" ] || py=$$(command -v python$$v || true); \
	if [ ! -x "$$py" ]; then \
	    echo "compat: Python $$v not found (pyenv install $$v)"; \
	    if [ "$${CI:-}" = true ]; then exit 1; else exit 0; fi; \
	fi; \
	venv=.venv-$$v; stamp=$$venv/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1); \
	if [ ! -f $$stamp ]; then \
	    rm -rf $$venv && $$py -m venv $$venv && \
	    $$venv/bin/python -m pip install --quiet --upgrade "pip>=25.1" && \
	    $$venv/bin/python -m pip install --quiet -e ".[all]" --group dev && touch $$stamp || exit 1; \
	fi; \
	echo "== Python $$v: $$($$venv/bin/python -c 'import django, sys; print(sys.version.split()[0], "Django", django.__version__)')"; \
	$$venv/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)

test: lint typecheck unit compat

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_overhead.py

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .ruff_cache .pytest_cache dist build
