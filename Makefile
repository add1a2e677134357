# kvtool: the README's two commands are `make demo` and `make test`; both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
KVTOOL := $(VENV)/bin/kvtool
PYTEST_ARGS ?=

.PHONY: setup demo test lint unit bench notebook clean down

setup:
	@bash setup/setup.sh

demo: setup
	@bash examples/demo.sh

lint: setup
	$(VENV)/bin/ruff check kvtool tests bench
	$(VENV)/bin/lint-imports

test: setup lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/bin/pytest -m "not cluster" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python bench/controlplane.py

down:
	$(KVTOOL) cluster down

clean:
	-$(KVTOOL) cluster down
	rm -rf $(VENV) .pytest_cache
