# `make test` and `make demo` set everything up themselves: a .venv, rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# 5 workers on 2 cores: the suite waits on sockets, subprocesses and generation latency more than it computes
# (measured on this 2-core machine, quiet: -n 3 142 s, -n 4 115-120 s, -n 5 102-104 s; it stays green with a core
# kept busy beside it at -n 4 and -n 5).
PYTEST_ARGS ?= -n 5
# Python writes its bytecode caches even where the environment says not to (PYTHONDONTWRITEBYTECODE is set on some
# machines, this one included): otherwise every worker and every server subprocess the suite starts compiles the
# package and pytest rewrites every test module again (about 4 s of collection per worker).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: test lint demo sandbox soak fuzz bench interop browser clean bundle dist scale

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Static checks first, then the suite (tests marked soak are left to `make soak`), then its ten slowest tests.
test: lint
	$(BIN)/python -m pytest -q --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check qolaba_mcp tests bench
	$(BIN)/ruff format --check qolaba_mcp tests bench
	$(BIN)/mypy qolaba_mcp
	$(BIN)/ruff check scripts/bundle scripts/interop
	$(BIN)/ruff format --check scripts/bundle scripts/interop

# Side by side with a bare MCP SDK server (the floor): prints a table and writes BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python bench/bench.py --out BENCHMARKS.md

# MCP clients and schema converters written elsewhere (MCP Inspector, TypeScript SDK current and 1.11, pydantic-ai
# 2.x and 1.x, langchain-mcp-adapters, OpenAI Agents SDK, fastmcp, fastmcp-tasks, @modelcontextprotocol/ext-tasks
# (tasks, and one recovered across kill -9), google-genai, JSON Schema 2020-12, and the MCP Apps host of
# `make browser`) against qolaba-mcp, each pinned in its own environment under .interop/; one result
# line per client, exit 1 on any FAIL. A registry that cannot be reached, or no Chromium for the Apps host: SKIPPED,
# or FAIL under CI=true. See scripts/interop.sh.
interop: $(STAMP)
	bash scripts/interop.sh
	$(BIN)/python -m bench.scale --calls 30 --latency-calls 10

# Three --stateless replicas on a throwaway PostgreSQL behind HAProxy (deploy/haproxy.cfg; apt-get installs it when
# missing), 200 generations while one replica is SIGKILLed and another SIGTERMed: generations lost, duplicate
# submissions, budget exactness, failed calls, added latency. Writes its section of BENCHMARKS.md; exit 1 on a loss.
scale: $(STAMP)
	$(BIN)/python -m bench.scale --calls 200 --out BENCHMARKS.md

# The gallery MCP App in headless Chromium (the system's: chromium, chromium-browser or google-chrome), mounted by a
# host page built on @modelcontextprotocol/ext-apps (scripts/apps_host, installed once under .interop/apps-host/),
# against the real server. Left out of `make test`; `make interop` runs it as its mcp-apps-host line.
browser: $(STAMP)
	bash scripts/apps_host/build.sh .interop/apps-host
	QOLABA_BROWSER_TESTS=1 $(BIN)/python -m pytest -q tests/browser

# The tests that wait out production constants over real processes (marked soak), then 500 generate_image calls,
# 20 at a time, through one stdio server against a faulty sandbox.
soak: $(STAMP)
	$(BIN)/python -m pytest -q -m soak --durations=10 $(PYTEST_ARGS)
	$(BIN)/python -m tests.soak --calls 500 --concurrency 20

# The fuzz run with many more examples than `make test` uses.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=1000 $(BIN)/python -m pytest -q -s tests/test_fuzz.py

# The MCP Bundle for Claude Desktop: dist/qolaba-mcp-<version>.mcpb, checked by the pinned mcpb CLI (npm ci under
# scripts/bundle), its SHA-256 written into server.json (only checked under CI=true); then the artifact tests, which
# start it from its manifest with uv against the sandbox. See docs/release.md.
BUNDLE_CLI := scripts/bundle/node_modules/.installed
$(BUNDLE_CLI): scripts/bundle/package-lock.json
	cd scripts/bundle && npm ci --no-audit --no-fund
	touch $(BUNDLE_CLI)

bundle: $(STAMP) $(BUNDLE_CLI)
	$(BIN)/python scripts/bundle/build.py
	$(BIN)/python -m pytest -q -m artifacts tests/test_bundle.py

# The sdist and wheel in dist/, twine check, then the artifact tests (a fresh install, uvx, the files inside).
dist: $(STAMP)
	rm -f dist/*.whl dist/*.tar.gz
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*.whl dist/*.tar.gz
	$(BIN)/python -m pytest -q -m artifacts tests/test_dist.py

demo: $(STAMP)
	$(BIN)/qolaba-mcp demo

sandbox: $(STAMP)
	$(BIN)/qolaba-mcp sandbox

clean:
	rm -rf $(VENV) out .pytest_cache .interop
