# One entry point per common action, used the same way on a laptop and in CI.
# `make demo` and `make test` each do all set-up first on a fresh Debian machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := dcmtk orthanc dicom3tools chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages venv demo test lint typecheck pytest bench conformance deploy-check clean gallery fuzz

setup: system-packages venv

system-packages:
	@missing=""; \
	for tool in /usr/bin/storescu /usr/sbin/Orthanc /usr/bin/dciodvfy; do \
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

pytest: venv
	$(PY) scripts/check_services.py
	$(PY) -m pytest

test: setup lint typecheck pytest

bench: setup
	$(PY) bench/run_all.py

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

# The hostile-DICOM fuzz test with many more cases than CI runs (nightly-style).
FUZZ_EXAMPLES ?= 500
fuzz: venv
	RADLIGHT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/dicom_node/test_fuzz.py tests/dicom_node/test_headers_hostile.py

clean:
	rm -rf radlight-data .pytest_cache .mypy_cache .ruff_cache
