# s3ferry: everything a fresh machine needs is installed from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LSVENV := .venv-localstack
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install demo test test-unit lint typecheck check lock clean

help:
	@echo "make demo       run the end-to-end demo on two local partitions"
	@echo "make test       run unit + integration tests (starts local S3/SQS itself)"
	@echo "make lint       ruff";	echo "make typecheck  mypy --strict"

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# LocalStack has pins that clash with aioboto3's botocore: it lives in its own virtualenv.
$(LSVENV)/.installed: tools/localstack-requirements.txt
	test -x $(LSVENV)/bin/python || $(PYTHON) -m venv $(LSVENV)
	$(LSVENV)/bin/pip install -q --upgrade pip
	$(LSVENV)/bin/pip install -q -r tools/localstack-requirements.txt
	touch $@

install: $(VENV)/.installed $(LSVENV)/.installed

demo: install
	$(BIN)/s3ferry demo

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

check: lint typecheck test

# Re-pin after changing dependencies in pyproject.toml.
lock: $(VENV)/.installed
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) $(LSVENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
