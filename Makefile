# Two entry points for a fresh machine (Python 3.11, Java 17): `make demo` and `make test`.
# Both run scripts/setup.sh first (a no-op when .venv is already up to date).
SHELL := /bin/bash
export SPARK_LOCAL_IP ?= 127.0.0.1
export SEMHASH_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo test
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/semhash demo

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
