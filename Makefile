# Set-up: `make install`, then `source .venv/bin/activate` (README). Every target but help and clean-venv creates
# .venv on first use.
# `make repro DATA=<dir>` runs the pipeline against a local copy of EMNIST; STUDY=<dir> against a local copy of
# the study's published .keras files (study.source).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?=
STUDY ?=
JOBS ?=
RUN ?=
SET_PARAMS := $(if $(strip $(DATA)),--set-param data.source=$(abspath $(DATA))) \
	$(if $(strip $(STUDY)),--set-param study.source=$(abspath $(STUDY)))
# stages call `python`: make it the venv's, also without an activated venv
export PATH := $(BIN):$(PATH)
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

.PHONY: help install install-keras keras-check plan repro repro-quick repro-study-recipe tracking-server tracking-server-stop test test-all fuzz lint format bench bench-baselines bench-matrix bench-refine bench-epochs lineage clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned dependencies into $(VENV)/ (about 2 minutes, quiet unless something fails)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# .venv with the pinned dependencies, this project (editable) and its dev tools
install: $(STAMP)

# the optional extra: Keras + TensorFlow (CPU), for the side-by-side check against the study's own model
install-keras: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,keras]'

# the study's Keras model and the port from the same initial weights on the same batches (docs/faithful-port.md)
keras-check: install-keras
	$(BIN)/python -m benchmarks.keras_side_by_side steps --steps 300

# the pipeline: its plan, then every out-of-date stage; DATA=/STUDY= as a DVC experiment with those sources;
# JOBS=N: N stages at a time on a local Ray (pipeline.tools.parallel; docs/scale-out.md)
repro: $(STAMP)
ifneq ($(strip $(JOBS)),)
	@test -z "$(strip $(SET_PARAMS))" || { echo "make repro: JOBS= runs params.yaml as it is: set data.source/study.source there instead of DATA=/STUDY=" >&2; exit 2; }
endif
ifneq ($(strip $(JOBS)),)
	$(BIN)/python -m pipeline.tools.plan
	$(BIN)/python -m pipeline.tools.parallel --jobs $(JOBS)
else ifeq ($(strip $(SET_PARAMS)),)
	$(BIN)/python -m pipeline.tools.plan
	$(BIN)/dvc repro
else
	$(BIN)/python -m pipeline.tools.plan --run $(SET_PARAMS)
endif

# what `make repro` would run and its wall time here, without running anything; DATA=/STUDY= as for repro
plan: $(STAMP)
	$(BIN)/python -m pipeline.tools.plan $(SET_PARAMS)

# the quick profile (pipeline/quick.yaml) as one DVC experiment: the whole pipeline in minutes; DATA= as for repro
repro-quick: $(STAMP)
	$(BIN)/python -m pipeline.tools.plan --profile pipeline/quick.yaml --run $(SET_PARAMS)

# the study's own recipe (pipeline/study_recipe.yaml: Adam 1e-3 constant, fp32) on its four models; DATA= as for repro
repro-study-recipe: $(STAMP)
	$(BIN)/python -m pipeline.tools.plan --profile pipeline/study_recipe.yaml --run $(SET_PARAMS)

# an MLflow tracking server for many writers (PostgreSQL backend, served artifacts, in mlflow-server/; docs/scale-out.md)
tracking-server: $(STAMP)
	$(BIN)/python -m pipeline.tools.tracking_server start

# stops that server
tracking-server-stop: $(STAMP)
	$(BIN)/python -m pipeline.tools.tracking_server stop

# the fast suite: unit and integration tests on tiny generated data (each test file on one worker)
test: $(STAMP)
	$(PYTEST) -m "not slow"

# everything: the fast suite, then the end-to-end tests that run real dvc, mlflow servers and killed processes,
# and the compiled training loop (inductor compiles C++)
test-all: test
	$(PYTEST) -m slow

# the codec's decoder against 20,000 mutated streams per mode (the suite runs 300)
fuzz: $(STAMP)
	CNZ_FUZZ_MUTATIONS=20000 $(BIN)/python -m pytest -q tests/test_codec_format.py

# ruff check and ruff format --check
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# ruff's fixes and its formatting, applied
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# make lineage RUN=model01-seed0 (or a variant, a model file, an MLflow run id): print and check its chain
lineage: $(STAMP)
	$(BIN)/python -m pipeline.tools.lineage $(RUN)

# metrics against scikit-image (printed only); training and evaluation speed (reports/benchmarks.json and .md,
# and a `benchmark` MLflow run); each stage's overhead (reports/benchmarks_overhead.json)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_metrics
	$(BIN)/python -m benchmarks.bench_speed
	$(BIN)/python -m benchmarks.bench_overhead

# the tiny matrix: dvc repro against the Ray executor (stages forked, and fresh), side by side; on a GPU, images/s
# of 1-8 runs sharing it and of 1-8 seeds batched in one process (reports/benchmarks_matrix.json)
bench-matrix: $(STAMP)
	$(BIN)/python -m benchmarks.bench_matrix
	$(BIN)/python -m benchmarks.bench_share

# the baselines stage's work with its codecs in worker processes against one process (reports/benchmarks_baselines.json);
# needs data/prepared (dvc repro prepare)
bench-baselines: $(STAMP)
	$(BIN)/python -m benchmarks.bench_baselines

# encode-time refinement, Adam against L-BFGS on 564 test images (reports/benchmarks_refine.json); needs
# data/prepared and models/model01_bn-seed0.pt (outside the default matrix: dvc exp run -S 'matrix=[model01_bn]')
bench-refine: $(STAMP)
	$(BIN)/python -m benchmarks.bench_refine

# full-epoch training runs, the study's recipe against the fast one (about an hour on 2 CPU cores;
# reports/epochs_to_quality.json and .md, and an `epochs-benchmark` MLflow run)
bench-epochs: $(STAMP)
	$(BIN)/python -m benchmarks.bench_epochs

# removes .venv
clean-venv:
	rm -rf $(VENV)

# this list: each target and what it does
help:
	@awk '/^# /{doc = doc (doc ? " " : "") substr($$0, 3); next} /^[a-z][a-z-]*:/{sub(/:.*/, ""); printf "%-21s %s\n", $$0, doc} {doc = ""}' $(firstword $(MAKEFILE_LIST))
