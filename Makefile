# Developer shortcuts; each target is one documented command.
PY ?= python3

.PHONY: build debug test lint bench conformance soak
build:            ## build the Cython extension in place
	$(PY) -m pip install -e '.[test]'
debug:            ## debug build: assertions, bounds checks, line tracing
	SHARDWS_DEBUG=1 $(PY) -m pip install -e '.[test]' --no-build-isolation
test:
	$(PY) -m pytest
lint:            ## the gates .ci/run applies before the tests
	ruff check shardws tests benchmarks && ruff format --check shardws tests benchmarks && mypy shardws && $(PY) -m mypy.stubtest shardws._core --allowlist .ci/stubtest-allowlist.txt
bench:
	$(PY) -m pytest benchmarks --benchmark-enable
soak:
	$(PY) -m benchmarks.soak --duration 600 --seed 21
conformance:      ## every Autobahn section against a real server, reports in reports/autobahn
	$(PY) tests/autobahn_cases.py --report reports/autobahn
