# One entry point per common action, used the same way on a laptop and in CI.
# `make demo` and `make test` each do all set-up first on a fresh Debian machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := dcmtk orthanc dicom3tools chromium redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages venv demo test lint typecheck pytest bench bench-ingest conformance \
	deploy-check clean gallery evaluate-grounding soak fuzz

setup: system-packages venv

system-packages:
	@missing=""; \
	for tool in /usr/bin/storescu /usr/sbin/Orthanc /usr/bin/dciodvfy /usr/bin/redis-server /usr/bin/chromium; do \
	  [ -x $$tool ] || missing="yes"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

venv: $(VENV)/.installed

# torch is pinned to the CPU build and installed first, so nothing pulls a CUDA build.
# requirements.lock pins every other package (scripts/lock_requirements.py makes it).
$(VENV)/.installed: pyproject.toml requirements.lock
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,export]'
	touch $@

demo: setup
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# Two pytest processes, one module each at a time (module fixtures stay shared); every test has its
# own ports, data folder, database and private redis-server, so tests never see each other.
PYTEST_WORKERS ?= 2

pytest: venv
	$(PY) scripts/check_services.py
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=30

test: setup lint typecheck pytest

bench: setup
	$(PY) bench/run_all.py

# Ingest alone: RadLight's node against dcmtk's storescp (docs/PERFORMANCE.md, "Ingest").
bench-ingest: setup
	$(PY) bench/bench_ingest.py --instances 200 --senders 1,4 --size 2048,512

# Pictures of every result object as viewers and dcmtk render them (docs/RESULTS.md).
gallery: setup
	$(PY) scripts/render_gallery.py

# docs/CONFORMANCE.md from the code's own lists of SOP classes, transfer syntaxes and statuses.
conformance: venv
	$(PY) scripts/conformance.py

# Offline checks of the deployment files: compose schema, Dockerfiles, Helm render + Kubernetes
# schemas, conformance statement (the process-set end-to-end test runs with `make pytest`).
deploy-check: venv
	$(PY) -m pytest tests/deploy --deselect tests/deploy/test_process_set.py

# docs/GROUNDING.md's figures: phrase grounding on the NIH expert boxes, lung fields on Montgomery.
GROUNDING_DATA ?= radlight-data/grounding-eval
evaluate-grounding: venv
	export RADLIGHT_DATA_DIR=$(GROUNDING_DATA); \
	$(PY) -m radlight models list | grep -q '^chexnet-densenet121-untrained ' || \
		$(PY) -m radlight models build densenet121-untrained; \
	$(PY) -m radlight models evaluate-grounding --model chexnet-densenet121-untrained \
		--json $(GROUNDING_DATA)/grounding.json && \
	$(PY) -m radlight models evaluate-lungs

# Load and soak: the load test with more senders and studies (SOAK_SENDERS x SOAK_STUDIES), counts printed.
SOAK_SENDERS ?= 8
SOAK_STUDIES ?= 50
soak: venv
	RADLIGHT_LOAD_SENDERS=$(SOAK_SENDERS) RADLIGHT_LOAD_STUDIES=$(SOAK_STUDIES) \
		$(PY) -m pytest tests/reliability/test_load.py -s

# The hostile-DICOM fuzz test with many more cases than CI runs (nightly-style).
FUZZ_EXAMPLES ?= 500
fuzz: venv
	RADLIGHT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/dicom_node/test_fuzz.py tests/dicom_node/test_headers_hostile.py

clean:
	rm -rf radlight-data .pytest_cache .mypy_cache .ruff_cache
