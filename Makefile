# Two commands do all the set-up: `make demo` and `make test` (both create .venv and install this project into it,
# editable, with the extras the tests need, at the versions pinned in constraints.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-run
# `make constraints` holds torch at this release (pyproject.toml leaves it open; its CPU build is on our machines)
TORCH ?= 2.13.0

.PHONY: demo lint test test-fast bench constraints clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[s3,cluster,test]' -c constraints.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) cli.py demo --out $(DEMO_DIR)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest-xdist, a worker per core (one more was no faster on 2 cores);
# --dist loadfile keeps a file's tests, and so its module fixtures, on one worker; the files go out in
# collection order (tests/conftest.py puts the long ones first), not xdist's most-tests-first
XDIST := -n auto --dist loadfile --no-loadscope-reorder

test: lint
	$(PY) -m pytest -q -ra $(XDIST)

# the edit-test loop: everything but the tests marked slow (subprocesses, gloo, servers, tmpfs, HF); under a minute
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -ra $(XDIST) -m "not slow"

bench: $(VENV)/.installed
	$(PY) cli.py bench shard

# constraints.txt from pyproject.toml: the newest releases that fit every extra, torch at $(TORCH); the sed drops
# the local label of the CPU build the index here serves (PyPI has the same release without it)
constraints:
	$(PYTHON) -m venv build/pip-tools
	build/pip-tools/bin/pip install --quiet pip-tools==7.6.2
	CUSTOM_COMPILE_COMMAND="make constraints" build/pip-tools/bin/pip-compile --quiet --upgrade --all-extras \
	  --strip-extras --annotation-style=line --no-emit-index-url --no-emit-find-links -P torch==$(TORCH) \
	  -o constraints.txt pyproject.toml
	sed -i "s/^\(torch==[^+ ]*\)+cpu/\1    /" constraints.txt

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
