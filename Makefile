# vinbig: thin targets over the `vinbig` command line. `make help` lists them.
# Inputs: DATA (a dataset in the Kaggle layout), WORK (the work folder), CONFIG (the YAML config).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data/synth
WORK   ?= work/synth
CONFIG ?= configs/default.yaml
FOLDS  ?= 0 1 2 3 4
TTA    ?= hflip
# torch and torchvision are installed first, as a matching pair (pip takes these from the local disk
# here; on a GPU machine choose the pair that matches its CUDA, see README)
TORCH  ?= torch==2.14.1 torchvision==0.29.1
VINBIG := $(BIN)/vinbig
ARGS   := --config $(CONFIG)

.DEFAULT_GOAL := help
.PHONY: help venv test demo synth images folds train-detector predict-detector train-classifier \
        predict-classifier tune submission report bench clean

help: ## list the targets
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) WORK=$(WORK) CONFIG=$(CONFIG) FOLDS=\"$(FOLDS)\" TTA=$(TTA)"

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## create .venv and install vinbig with its dev extra

test: venv ## run the whole test suite
	$(BIN)/python -m pytest -q

demo: venv ## the main job on a fresh synthetic dataset (DATA=data/demo, WORK=work/demo)
	$(MAKE) --no-print-directory synth images folds DATA=data/demo WORK=work/demo CONFIG=$(CONFIG)

$(DATA)/train.csv:
	$(VINBIG) synth --out $(DATA) $(ARGS)

synth: venv $(DATA)/train.csv ## write the synthetic dataset to DATA if it is not there

images: venv ## convert DATA's train and test DICOMs to PNGs in WORK/images (reruns skip done images)
	$(VINBIG) images --src $(DATA)/train --out $(WORK)/images/train $(ARGS)
	$(VINBIG) images --src $(DATA)/test --out $(WORK)/images/test $(ARGS)

folds: venv ## validate DATA/train.csv, fuse the readers' boxes and split into folds in WORK
	$(VINBIG) folds --train-csv $(DATA)/train.csv --out $(WORK) $(ARGS)

train-detector: venv ## train the YOLOv8 detector of each fold in FOLDS (one fold per job: FOLDS="3")
	@for k in $(FOLDS); do $(VINBIG) train-detector --work $(WORK) --fold $$k $(ARGS) || exit 1; done

predict-detector: venv ## detector boxes for the OOF and test images (TTA=hflip, or TTA= for none)
	$(VINBIG) predict-detector --work $(WORK) --split oof $(if $(TTA),--tta $(TTA)) $(ARGS)
	$(VINBIG) predict-detector --work $(WORK) --split test $(if $(TTA),--tta $(TTA)) $(ARGS)

train-classifier: venv ## train the 'No finding' classifier of each fold in FOLDS
	@for k in $(FOLDS); do $(VINBIG) train-classifier --work $(WORK) --fold $$k $(ARGS) || exit 1; done

predict-classifier: venv ## P(abnormal) for the OOF and test images
	$(VINBIG) predict-classifier --work $(WORK) --split oof $(ARGS)
	$(VINBIG) predict-classifier --work $(WORK) --split test $(ARGS)

tune: venv ## choose the WBF parameters and gate thresholds on the OOF predictions (WORK/fusion.yaml)
	$(VINBIG) tune --work $(WORK) $(ARGS)

# The test predictions of the stages that were trained, then fusion; the classifier is optional (gate off).
submission: venv ## predict the test images with the trained stages, fuse and validate: WORK/submission.csv
	$(VINBIG) predict-detector --work $(WORK) --split test $(if $(TTA),--tta $(TTA)) $(ARGS)
	@if ls $(WORK)/classifier/fold*/best.pt >/dev/null 2>&1; then \
		$(VINBIG) predict-classifier --work $(WORK) --split test $(ARGS); \
	else echo "no classifier in $(WORK)/classifier: the 'No finding' gate stays off"; fi
	$(VINBIG) fuse --work $(WORK) --split test $(ARGS)

report: venv ## per-class AP chart, PR curves and box overlays of the OOF predictions in WORK/report
	$(VINBIG) report --work $(WORK) $(ARGS)

bench: venv ## run the benchmarks in bench/ (results go in BENCHMARKS.md by hand)
	$(BIN)/python bench/bench_images.py
	$(BIN)/python bench/bench_metric.py
	$(BIN)/python bench/bench_fuse.py --tune 3000
	$(BIN)/python bench/bench_detector.py
	$(BIN)/python bench/bench_classifier.py

clean: ## remove the synthetic data and work folders of the demo and the default targets
	rm -rf data/demo work/demo data/synth work/synth
