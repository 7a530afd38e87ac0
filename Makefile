# Two commands on a fresh machine: `make repro` (the pipeline) and `make test` (the suite).
# Both create .venv on first use. `make repro DATA=<dir>` runs against a local copy of EMNIST.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?=
RUN ?=
# stages call `python`: make it the venv's
export PATH := $(BIN):$(PATH)

.PHONY: install repro test bench bench-epochs lineage clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
ifeq ($(strip $(DATA)),)
	$(BIN)/dvc repro
else
	$(BIN)/dvc exp run --set-param data.source=$(abspath $(DATA))
endif

# two workers, each test file on one worker so module-scoped pipeline fixtures run once: 13 -> 8 min here
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

# make lineage RUN=model01-seed0 (or a variant, a model file, an MLflow run id): print and check its chain
lineage: $(STAMP)
	$(BIN)/python -m pipeline.lineage $(RUN)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_metrics
	$(BIN)/python -m benchmarks.bench_speed

# about an hour on 2 CPU cores: full-epoch training runs, the study's recipe against the fast one
bench-epochs: $(STAMP)
	$(BIN)/python -m benchmarks.bench_epochs

clean-venv:
	rm -rf $(VENV)
