# Two commands do all the set-up: `make demo` and `make test` (both create and fill .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-run

.PHONY: demo lint test test-fast bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) cli.py demo --out $(DEMO_DIR)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -ra

# the edit-test loop: everything but the tests marked slow (subprocesses, gloo, servers, tmpfs, HF); under a minute
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m "not slow"

bench: $(VENV)/.installed
	$(PY) cli.py bench shard

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
