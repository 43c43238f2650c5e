# s3ferry: everything a fresh machine needs is installed from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LSVENV := .venv-localstack
CKVENV := .venv-checkov
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install demo test test-unit soak lint typecheck check lock clean

help:
	@echo "make demo       run the end-to-end demo on two local partitions"
	@echo "make test       run unit + integration tests (starts local S3/SQS itself)"
	@echo "make soak       ~2,000 objects under faults, kills and a redelivery storm; nothing lost"
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

# checkov pins an old boto3: its own virtualenv too (used by tests/deploy).
$(CKVENV)/.installed: tests/deploy/checkov-requirements.txt
	test -x $(CKVENV)/bin/python || $(PYTHON) -m venv $(CKVENV)
	$(CKVENV)/bin/pip install -q --upgrade pip
	$(CKVENV)/bin/pip install -q -r tests/deploy/checkov-requirements.txt
	touch $@

# Debian packages: Go + sprig render the Helm chart in tests (helm itself is not packaged).
.debian-installed:
	@if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/Masterminds/sprig ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev >/dev/null) \
	      || echo "warning: Debian packages not installed (chart render tests will skip)"; \
	  else echo "not root: skipping Debian packages (chart render tests will skip)"; fi; \
	fi
	touch $@

install: $(VENV)/.installed $(LSVENV)/.installed $(CKVENV)/.installed .debian-installed

demo: install
	$(BIN)/s3ferry demo

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/soak.py: exits non-zero unless nothing was lost, corrupted or left open.
SOAK_ARGS ?=
soak: $(VENV)/.installed $(LSVENV)/.installed
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

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
	rm -rf $(VENV) $(LSVENV) $(CKVENV) .debian-installed .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# Benchmarks (bench/README.md): s3ferry against rclone and s5cmd on the local partitions.
# `make bench` writes bench/results/<date>.{json,md,png}; BENCH_ARGS="--reps 1 --only W1,W3".
BENCH_ARGS ?=
BENCH_SMOKE_OUT ?= $(or $(TMPDIR),/tmp)/s3ferry-bench-smoke
.PHONY: bench bench-smoke

bench: $(VENV)/.installed $(LSVENV)/.installed
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-smoke: $(VENV)/.installed $(LSVENV)/.installed
	$(BIN)/python -m bench --smoke --out $(BENCH_SMOKE_OUT) $(BENCH_ARGS)
