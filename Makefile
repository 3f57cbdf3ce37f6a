# The two commands a new machine needs: `make run` and `make test`. Both build .venv from scratch
# when pyproject.toml changes (uv makes that take seconds, TensorFlow included). Bytecode is
# compiled at install: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise
# compile TensorFlow's sources again (import tensorflow: 19.7 s without, 5.8 s with, here).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: install browser run test lint typecheck unit fuzz bench bench-quick clean
CHROMIUM ?= /usr/bin/chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.8
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## browser: Debian's chromium for the dashboard's browser tests (browsers are never downloaded
## by the test tools themselves)
browser:
	@test -x $(CHROMIUM) || { echo "installing chromium (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## run: the embedded default: API on http://127.0.0.1:8000, 2 local workers, SQLite in ./data
run: $(STAMP)
	@echo "hpsearch: launch the example study from another shell with"
	@echo "  curl -s -X POST http://127.0.0.1:8000/api/v1/studies -H 'Content-Type: application/json' -d @examples/digits-bn-clip.json"
	@echo "or, with a progress bar:  $(BIN)/hpsearch study create examples/digits-bn-clip.json --wait"
	@echo "API docs: http://127.0.0.1:8000/docs"
	$(BIN)/hpsearch serve --host 127.0.0.1 --port 8000 --workers 2

## test: everything CI checks: lint, the import contracts, types, then the test suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## unit: the suite, in one process. JOBS=N (N > 1) runs it in two passes instead: what is not
## timing-bound on N processes at once, then the tests marked `serial` (drains, grace periods,
## CPU shares, containers, network namespaces) alone. On these 2-core machines that did not pay:
## the suite is CPU-bound (training, process start-ups), and 3 processes took 22 min 28 s for
## the tests that take 22 min 40 s in one; it is for machines with more cores.
JOBS ?= 1
unit: $(STAMP) browser
ifeq ($(JOBS),1)
	$(BIN)/pytest $(PYTEST_ARGS)
else
	$(BIN)/pytest -n $(JOBS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(BIN)/pytest -m serial $(PYTEST_ARGS)
endif

## fuzz: the schema fuzzer and the spec's property tests at ten times CI's examples, random seed
fuzz: $(STAMP)
	HPSEARCH_FUZZ_EXAMPLES=200 HPSEARCH_FUZZ_SEED= HPSEARCH_PROPERTY_EXAMPLES=400 \
	  $(BIN)/pytest -s tests/service/test_fuzz.py tests/service/test_spec_properties.py

## bench: the benchmark suite, one table per benchmark (about an hour on 2 cores); one of them
## alone: `make bench BENCH=coordination`
bench: $(STAMP) browser
	$(BIN)/python -m benchmarks $(BENCH)

## bench-quick: checks that the benchmarks still run (CI runs it), never that a timing holds
bench-quick: $(STAMP) browser
	$(BIN)/python -m benchmarks --quick $(BENCH)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
