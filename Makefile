# ctrlab developer entry points. Each target creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real datasets: CTRLAB_DATA_DIR if set, else ../shared/datasets when it exists (dev machines and CI).
CTRLAB_DATA_DIR ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets),)
export CTRLAB_DATA_DIR

.PHONY: demo test results venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

## Train + evaluate FinalMLP (BARS Frappe_x1 hyperparameters) on the real frappe_x1_subset.
demo: $(BIN)/.installed
	$(BIN)/ctrlab train --dataset frappe_x1_subset --model FinalMLP --output runs/demo/FinalMLP-frappe_x1_subset

## The test suite (what CI runs). Passive OpenMP waits: many tiny models, so spinning threads only burn CPU.
test: $(BIN)/.installed
	OMP_WAIT_POLICY=passive $(BIN)/python -m pytest -q -p no:cacheprovider

## Regenerate docs/results.md (4 models x 3 seeds on frappe_x1_subset).
results: $(BIN)/.installed
	$(BIN)/python benchmarks/frappe_subset_results.py --output docs/results.md

clean:
	rm -rf $(VENV) runs .pytest_cache
