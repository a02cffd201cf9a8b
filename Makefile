# One entry point for people and CI. `make setup` is idempotent and is what `make demo` and `make test` run first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The project home (svdpipe.yaml settings, .dagster, .mlflow, data): this checkout, whatever folder make runs in.
export SVDPIPE_HOME ?= $(CURDIR)
export DAGSTER_HOME ?= $(SVDPIPE_HOME)/.dagster
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test ui clean help lock

help:
	@echo "make setup  - create .venv and install svdpipe with everything it needs (ffmpeg from Debian if missing)"
	@echo "make demo   - run the pipeline on a generated sample corpus (tiny profile, CPU)"
	@echo "make test   - run the test suite (starts its own SeaweedFS S3 server)"
	@echo "make ui     - open the Dagster UI on http://127.0.0.1:3000 (on the data root of svdpipe.yaml: the demo's after make demo)"
	@echo "make lock   - refresh requirements.lock (exact versions + hashes) after changing pyproject.toml"

$(STAMP): pyproject.toml requirements.lock scripts/setup.sh
	bash scripts/setup.sh $(PY) $(VENV)
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	bash scripts/demo.sh

# One pytest-xdist worker per core; tests that share a module or the trained data root stay on one worker. The
# groups run in the order tests/conftest.py collects them (the long ones first), not xdist's order by test count.
XDIST ?= -n auto --dist loadgroup --no-loadscope-reorder
test: setup
	$(BIN)/python -m pytest $(XDIST) --durations=25 $(PYTEST_ARGS)

ui: setup
	$(BIN)/svdpipe ui

# Keeps the versions already locked unless pyproject.toml asks otherwise; `UPGRADE=1 make lock` takes the newest.
lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade,) -o requirements.lock

clean:
	rm -rf $(VENV) .dagster .mlflow data demo-data .pytest_cache svdpipe.yaml
