# The two commands a user needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PACKAGES := -p linewatch

.PHONY: demo test unit lint typecheck pytest install system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,test,teachers]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests and the demo use (redis-server, prometheus, alertmanager, chromium).
system-deps:
	@sh deploy/system-deps.sh

# From a checkout the summary lands in ./demo-out (git-ignored); an installed `linewatch demo` writes to
# $$XDG_STATE_HOME/linewatch/demo instead of the current folder.
demo: install system-deps
	$(BIN)/linewatch demo --out demo-out

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy $(PACKAGES)

pytest: install system-deps
	$(BIN)/pytest

test: lint typecheck pytest

# The fast inner loop: tests that need no broker, Redis or other service and are not slow (under a minute).
unit: install
	$(BIN)/pytest -q -m 'unit and not slow'

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
