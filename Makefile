# Two commands on a fresh machine (Python 3.11+, git, make):
#   make demo   worker processes contending for locks on a private server
#   make test   lint, type checks and the whole test suite, against a real server,
#               then again on uvloop, and on the oldest and newest supported
#               servers and client libraries (make floors)
# Each creates .venv and installs what it needs, the server binary included.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint floors bench mutants clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "asynclock needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,server]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m asynclock demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy asynclock benchmarks

test: lint
	$(BIN)/pytest tests benchmarks --benchmark-disable
	ASYNCLOCK_TEST_LOOP=uvloop $(BIN)/pytest tests -q
	$(BIN)/python -m tests.floors

# The suite on Redis 6.2, on Valkey 9.1, and with redis-py and fakeredis at their
# declared minimums, each in its own environment under .floors/ (see tests/floors.py).
floors: $(STAMP)
	$(BIN)/python -m tests.floors

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# Planted bugs, one at a time: each must make a test fail (see tests/mutants.py).
mutants: $(STAMP)
	$(BIN)/python -m tests.mutants

clean:
	rm -rf $(VENV) .floors .pytest_cache .mypy_cache .ruff_cache .benchmarks
