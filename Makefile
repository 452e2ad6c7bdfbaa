# Two entry points for a fresh machine (Python 3.11 or 3.12, Java 17): `make demo` and `make test`.
# Both run scripts/setup.sh first (a no-op when .venv is already up to date). `make wheel` builds
# dist/semhash_spark-*.whl (with conf/ and jobs/ inside) to install elsewhere, e.g. 'dist/...whl[service]'.
SHELL := /bin/bash
export SPARK_LOCAL_IP ?= 127.0.0.1
export SEMHASH_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo test test-fast wheel
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/semhash demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

wheel: setup
	.venv/bin/python -m pip wheel --no-deps --no-build-isolation -w dist .

# The edit-test loop: everything but tests marked slow (Spark, S3, multi-process, end to end; see tests/conftest.py).
test-fast: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)
