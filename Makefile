# `make test` and `make demo` set everything up themselves: a .venv, rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PYTEST_ARGS ?= -n 4

.PHONY: test demo sandbox soak fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The suite waits on sockets and subprocesses far more than it computes: 4 workers on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# 500 generate_image calls, 20 at a time, through one stdio server against a faulty sandbox.
soak: $(STAMP)
	$(BIN)/python -m tests.soak --calls 500 --concurrency 20

# The fuzz run with many more examples than `make test` uses.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=1000 $(BIN)/python -m pytest -q -s tests/test_fuzz.py

demo: $(STAMP)
	$(BIN)/qolaba-mcp demo

sandbox: $(STAMP)
	$(BIN)/qolaba-mcp sandbox

clean:
	rm -rf $(VENV) out .pytest_cache
