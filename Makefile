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
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/bin/pytest -m "not cluster" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python bench/controlplane.py
	$(VENV)/bin/python bench/plan_apply.py
	$(VENV)/bin/python bench/vm_start.py
	$(VENV)/bin/python bench/scale.py
	$(VENV)/bin/python bench/net.py
	$(VENV)/bin/python bench/terraform.py

notebook: setup
	$(VENV)/bin/kvtool cluster up
	$(VENV)/bin/kvtool image build tiny-linux
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks --no-browser $(if $(filter 0,$(shell id -u)),--allow-root)

down:
	$(KVTOOL) cluster down

clean:
	-$(KVTOOL) cluster down
	rm -rf $(VENV) .pytest_cache
