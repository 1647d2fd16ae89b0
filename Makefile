# ctrlab developer entry points. Each target creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real datasets: CTRLAB_DATA_DIR if set, else ../shared/datasets when it exists (dev machines and CI).
CTRLAB_DATA_DIR ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets),)
export CTRLAB_DATA_DIR

.PHONY: demo test browser docs bench report results peers bench-peers bench-peers-10m own-data efficiency efficiency-compress efficiency-optembed efficiency-optinter sequences multitask qin baselines venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

## Train + evaluate FinalMLP (BARS Frappe_x1 hyperparameters) on the real frappe_x1_subset.
demo: $(BIN)/.installed
	$(BIN)/ctrlab train --dataset frappe_x1_subset --model FinalMLP --output runs/demo/FinalMLP-frappe_x1_subset --overwrite

## Debian's chromium + chromedriver for the report's browser test: installed once when run as root
## (CI, dev machines); elsewhere the browser test is skipped with a note (and fails under CI=true).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver for the report's browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: chromium/chromedriver missing and not root: the browser test will be skipped"; fi; }

## The test suite (what CI runs). Passive OpenMP waits: many tiny models, so spinning threads only burn CPU.
test: $(BIN)/.installed browser
	OMP_WAIT_POLICY=passive $(BIN)/python -m pytest -q -p no:cacheprovider

## The options reference in docs/training.md, docs/serving.md and docs/benchmark.md (between the
## <!-- options:begin/end --> markers), from the config dataclasses' docstrings; a test fails when it is stale.
docs: $(BIN)/.installed
	$(BIN)/python -m ctrlab.docs_options

## Run the zoo plan (benchmarks/plans/zoo.yaml: every zoo model x seeds on the real datasets) into the
## results store runs/results/results.sqlite. Resumable: finished runs are skipped, a killed bench continues.
bench: $(BIN)/.installed
	$(BIN)/ctrlab bench benchmarks/plans/zoo.yaml

## From the results store: docs/results.md (ctrlab beside FuxiCTR and BARS) and the HTML report docs/report/.
report: $(BIN)/.installed
	$(BIN)/python benchmarks/zoo_results.py --finished-only --output docs/results.md
	$(BIN)/ctrlab report --db runs/results/results.sqlite --plan benchmarks/plans/zoo.yaml --output docs/report \
	  --title "ctrlab model zoo on the real datasets"

## Both: run what is missing, then regenerate docs/results.md and docs/report/.
results: bench report

## FuxiCTR (its own venv; FUXICTR = a checkout of reczoo/FuxiCTR at tag v2.3.9) on the same splits with
## the same hyperparameters, then docs/results.md with ctrlab and FuxiCTR side by side (also printed).
FUXICTR ?= .peers/FuxiCTR
FUXICTR_VENV ?= .peers/fuxictr-venv
peers: $(BIN)/.installed
	test -x $(FUXICTR_VENV)/bin/python || benchmarks/peers/setup_fuxictr.sh $(FUXICTR) $(FUXICTR_VENV)
	for d in frappe_x1_subset movielens_100k; do \
	  $(FUXICTR_VENV)/bin/python benchmarks/peers/run_fuxictr.py --fuxictr $(FUXICTR) --dataset $$d --skip-done || exit 1; \
	  $(BIN)/python benchmarks/zoo_results.py --peer-args $$d | while read -r more; do \
	    $(FUXICTR_VENV)/bin/python benchmarks/peers/run_fuxictr.py --fuxictr $(FUXICTR) \
	      --dataset $$d --skip-done $$more || exit 1; done || exit 1; \
	done
	$(BIN)/python benchmarks/zoo_results.py --output docs/results.md --print

## Speed and memory side by side with FuxiCTR and DeepCTR-Torch (same data, same hyperparameters, interleaved
## runs in fresh processes), written to docs/performance.md. Needs the peers venv (see `make peers`).
bench-peers: $(BIN)/.installed
	test -x $(FUXICTR_VENV)/bin/python || benchmarks/peers/setup_fuxictr.sh $(FUXICTR) $(FUXICTR_VENV)
	$(BIN)/python benchmarks/peers/bench_peers.py --peers-python $(FUXICTR_VENV)/bin/python --fuxictr $(FUXICTR) \
	  --rows 1000000 --repeats 3 --output docs/performance.md --json docs/performance.json

## The same at 10M rows (tables of several million ids): preprocessing and DeepFM training only, 2 repeats
## (FuxiCTR alone needs ~5 min and ~12 GB per 10M-row preprocessing), to docs/performance-10m.md.
bench-peers-10m: $(BIN)/.installed
	test -x $(FUXICTR_VENV)/bin/python || benchmarks/peers/setup_fuxictr.sh $(FUXICTR) $(FUXICTR_VENV)
	$(BIN)/python benchmarks/peers/bench_peers.py --peers-python $(FUXICTR_VENV)/bin/python --fuxictr $(FUXICTR) \
	  --rows 10000000 --repeats 2 --tasks preprocess train --models DeepFM --timeout 2400 --no-notes \
	  --output docs/performance-10m.md --json docs/performance-10m.json

## Defaults on data without a preset (issue 15): DeepFM with `preset: auto` (3 seeds) against scikit-learn's
## LogisticRegression and the base rate on the small real datasets, into docs/results.md (own-data section).
own-data: $(BIN)/.installed
	OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/own_data.py --output docs/results.md --json docs/own_data.json

## docs/efficiency.md, issue 16's measurements, each script its own marked section and raw JSON
## (resumable: a rerun skips the dataset/model/seed entries its JSON already holds).
efficiency: efficiency-compress efficiency-optembed efficiency-optinter

efficiency-compress: $(BIN)/.installed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/efficiency.py --output docs/efficiency.md --json docs/efficiency.json

efficiency-optinter: $(BIN)/.installed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/efficiency_optinter.py --output docs/efficiency.md --json docs/efficiency_optinter.json

## docs/sequences.md, issue 17's measurements: speed at L = 100/1,000/10,000 and planted-task accuracy,
## the real long-history datasets (3 seeds; resumable), serving latency at L = 1,000
sequences: $(BIN)/.installed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/sequences.py speed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/sequences.py real
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/sequences.py serving

## docs/results.md, issue 18's measurements: ESMM / BASE / SharedBottom / MMoE on the selection-bias simulation
## and the real click + conversion samples (multitask section); QIN and the movies' text vectors (qin-content).
multitask: $(BIN)/.installed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/multitask.py
qin: $(BIN)/.installed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/qin.py

## docs/results.md, issue 19's measurements: LR, LightGBM, XGBoost, TabR and four deep models on every small real
## dataset (benchmarks/plans/baselines.yaml through ctrlab bench; resumable), with NE, calibration, ECE and cost.
baselines: $(BIN)/.installed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/baselines.py --output docs/results.md --json docs/baselines.json
	$(BIN)/ctrlab report --db runs/baselines/results.sqlite --plan benchmarks/plans/baselines.yaml --output docs/report/baselines \
	  --title "Trees, TabR and the deep models on the real datasets"

efficiency-optembed: $(BIN)/.installed
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/efficiency_optembed.py --output docs/efficiency.md --json docs/efficiency_optembed.json

clean:
	rm -rf $(VENV) runs .pytest_cache
