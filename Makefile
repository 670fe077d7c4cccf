# vinbig: thin targets over the `vinbig` command line. `make help` lists them.
# Inputs: DATA (a dataset in the Kaggle layout), WORK (the work folder), CONFIG (the YAML config).
# Real data: make folds train predict submission report DATA=/path/to/vinbigdata WORK=/path/to/work
# Every target is a file (or a stamp) made from the files before it: a rerun skips what is up to date.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data/synth
WORK   ?= work/synth
CONFIG ?= configs/default.yaml
FOLDS  ?= 0 1 2 3 4
# named runs (the config's runs section; 'default' without one): RUNS="s1024 m640" narrows training and prediction
# to those runs; a stage none of whose runs is named keeps all of its runs
RUNS   ?=
TTA    ?= hflip
# make train ENGINE=local|ray JOBS=N: the whole run x fold grid by one `vinbig train`, JOBS trainings at once
# (ENGINE=ray: Ray tasks, on the cluster of RAY_ADDRESS or a local Ray); without either, one fold after another
ENGINE ?=
JOBS   ?=
DEMO   ?= work/demo
# torch and torchvision are installed first, as a matching pair (pip takes these from the local disk
# here; on a GPU machine choose the pair that matches its CUDA, see README)
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# the Kaggle datasets for the offline inference notebook (README, "Kaggle")
KAGGLE_WHEELS ?= dist/kaggle-wheels
KAGGLE_MODELS ?= dist/kaggle-models

$(foreach v,DATA WORK CONFIG DEMO VENV,$(if $(word 2,$($(v))),$(error $(v)="$($(v))" has a space: make cannot \
  handle such paths; use a path without spaces (a symbolic link to the folder will do))))

VINBIG := $(BIN)/vinbig
ARGS   := --config $(CONFIG)
VENV_OK := $(VENV)/.installed

TRAIN_IMAGES := $(WORK)/images/train/meta.csv
TEST_IMAGES  := $(WORK)/images/test/meta.csv
FOLDS_CSV    := $(WORK)/folds.csv
# the runs of each stage, as `vinbig runs` reads them from the config (before the venv exists: 'default')
runs_of = $(or $(shell test -x $(VINBIG) && $(VINBIG) runs --stage $(1) $(ARGS) 2>/dev/null),default)
DET_ALL      := $(call runs_of,detector)
CLS_ALL      := $(call runs_of,classifier)
DET_RUNS     := $(or $(filter $(RUNS),$(DET_ALL)),$(DET_ALL))
CLS_RUNS     := $(or $(filter $(RUNS),$(CLS_ALL)),$(CLS_ALL))
# --run options of the predict commands when RUNS narrows them (the other runs' rows are kept)
empty :=
space := $(empty) $(empty)
only_runs = $(if $(filter-out $(2),$(1)),$(space)$(foreach r,$(2),--run $(r)))
DETECTORS    := $(foreach r,$(DET_RUNS),$(foreach k,$(FOLDS),$(WORK)/detector/$(r)/fold$(k)/.trained))
CLASSIFIERS  := $(foreach r,$(CLS_RUNS),$(foreach k,$(FOLDS),$(WORK)/classifier/$(r)/fold$(k)/.trained))
DET_PREDS    := $(WORK)/preds/detector_oof.parquet $(WORK)/preds/detector_test.parquet
CLS_PREDS    := $(WORK)/preds/classifier_oof.csv $(WORK)/preds/classifier_test.csv
TUNED        := $(WORK)/fusion.yaml
SUBMISSION   := $(WORK)/submission.csv
REPORT       := $(WORK)/report/metrics.csv

# A fold with a run is resumed: an interrupted one continues, a finished one is left as it is. A finished
# fold whose inputs are newer is never trained again by make (that would throw away hours of GPU time):
# it says so; remove the fold's folder, or run the train command with --overwrite, to train it again.
resume = $(if $(wildcard $(1)),--resume)
kept = $(if $(wildcard $(1)/.trained),@echo "make: $(1) was trained before $(2) changed; it is kept as it is." \
	"To train it again: rm -r $(1)" >&2)

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
# meta.csv is written even when some DICOMs failed (vinbig images exits 1): it records what was converted
.PRECIOUS: $(TRAIN_IMAGES) $(TEST_IMAGES)
.PHONY: help venv test demo synth images folds train train-detector train-classifier predict predict-detector \
        predict-classifier tune submission report kaggle-wheels kaggle-models reference bench gpu-check clean

help: ## list the targets
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) WORK=$(WORK) CONFIG=$(CONFIG) FOLDS=\"$(FOLDS)\" RUNS=\"$(RUNS)\" TTA=$(TTA) DEMO=$(DEMO)"
	@echo "             ENGINE=$(ENGINE) JOBS=$(JOBS) (make train JOBS=N: the run x fold grid, N trainings at once)"
	@echo "             KAGGLE_WHEELS=$(KAGGLE_WHEELS) KAGGLE_MODELS=$(KAGGLE_MODELS)"

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV_OK): pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV_OK) ## create .venv and install vinbig with its dev extra

test: venv ## run the whole test suite
	$(BIN)/python -m pytest -q

demo: venv ## the whole job on a fresh synthetic dataset in DEMO (configs/demo.yaml; CPU: about 6 min)
	$(VINBIG) demo --out $(DEMO) $(if $(filter command line environment,$(origin CONFIG)),--config $(CONFIG))

synth: venv ## write a synthetic dataset to DATA if it has no train.csv
	@if [ -f $(DATA)/train.csv ]; then echo "$(DATA)/train.csv exists: no synthetic data written"; \
	else $(VINBIG) synth --out $(DATA) $(ARGS); fi

$(DATA)/train.csv $(DATA)/sample_submission.csv:
	@echo "$@ not found: DATA=$(DATA) must be the competition dataset (train.csv, train/, test/," \
	      "sample_submission.csv), or run 'make synth DATA=$(DATA)' for a synthetic one" >&2; exit 1

# ----------------------------------------------------------------------------- data

$(TRAIN_IMAGES): $(DATA)/train.csv | $(VENV_OK)
	$(VINBIG) images --src $(DATA)/train --out $(@D) $(ARGS)

# a test DICOM that cannot be read gets '14 1 0 0 1 1' in the submission (with a warning) instead of stopping
$(TEST_IMAGES): $(DATA)/sample_submission.csv | $(VENV_OK)
	$(VINBIG) images --src $(DATA)/test --out $(@D) --allow-errors $(ARGS)

images: $(TRAIN_IMAGES) $(TEST_IMAGES) ## convert DATA's train and test DICOMs to PNGs in WORK/images

# the train images first (order only): folds checks every box against its image's size in meta.csv
$(FOLDS_CSV): $(DATA)/train.csv | $(VENV_OK) $(TRAIN_IMAGES)
	$(VINBIG) folds --train-csv $< --out $(WORK) $(ARGS)

folds: $(FOLDS_CSV) ## convert the train images if needed, validate DATA/train.csv against them, fuse the readers' boxes, split: WORK/folds.csv

# ----------------------------------------------------------------------------- training

# $* is RUN/foldK
run_of = $(patsubst %/,%,$(dir $(1)))
fold_of = $(patsubst fold%,%,$(notdir $(1)))

$(WORK)/detector/%/.trained: $(FOLDS_CSV) $(TRAIN_IMAGES) | $(VENV_OK)
	$(call kept,$(@D),$?)
	$(VINBIG) train-detector --work $(WORK) --run $(call run_of,$*) --fold $(call fold_of,$*) $(ARGS) $(call resume,$(@D)/weights/last.pt)
	@touch $@

$(WORK)/classifier/%/.trained: $(FOLDS_CSV) $(TRAIN_IMAGES) | $(VENV_OK)
	$(call kept,$(@D),$?)
	$(VINBIG) train-classifier --work $(WORK) --run $(call run_of,$*) --fold $(call fold_of,$*) $(ARGS) $(call resume,$(@D)/last.pt)
	@touch $@

ifeq ($(ENGINE)$(JOBS),)
train-detector: $(DETECTORS) ## train the YOLOv8 detector of each run and fold in FOLDS (one fold per machine: FOLDS=3)

train-classifier: $(CLASSIFIERS) ## train the 'No finding' classifier of each run and fold in FOLDS

train: train-detector train-classifier ## convert the train images if needed, train the detectors and classifiers (JOBS=N ENGINE=local|ray: N at once)
else
# the grid: one `vinbig train` trains every fold not trained yet (it skips those with a .trained stamp and writes
# the stamps), RUNS narrowing the runs as above, FOLDS the folds when given (else every fold of folds.csv)
grid_folds = $(if $(filter command line environment,$(origin FOLDS)),$(foreach k,$(FOLDS),--fold $(k)))
GRID = $(strip $(VINBIG) train --work $(WORK) --engine $(or $(ENGINE),local) $(if $(JOBS),--jobs $(JOBS)) \
	$(foreach r,$(RUNS),--run $(r)) $(grid_folds)) $(ARGS)

train-detector: $(FOLDS_CSV) $(TRAIN_IMAGES) | $(VENV_OK)
	$(GRID) --stage detector

train-classifier: $(FOLDS_CSV) $(TRAIN_IMAGES) | $(VENV_OK)
	$(GRID) --stage classifier

train: $(FOLDS_CSV) $(TRAIN_IMAGES) | $(VENV_OK)
	$(GRID)
endif

# ----------------------------------------------------------------------------- prediction and fusion

$(WORK)/preds/detector_%.parquet: $(DETECTORS) | $(VENV_OK)
	$(VINBIG) predict-detector --work $(WORK) --split $* $(if $(TTA),--tta $(TTA))$(call only_runs,$(DET_ALL),$(DET_RUNS)) $(ARGS)

$(WORK)/preds/classifier_%.csv: $(CLASSIFIERS) | $(VENV_OK)
	$(VINBIG) predict-classifier --work $(WORK) --split $*$(call only_runs,$(CLS_ALL),$(CLS_RUNS)) $(ARGS)

$(WORK)/preds/detector_test.parquet $(WORK)/preds/classifier_test.csv: $(TEST_IMAGES)

predict-detector: $(DET_PREDS) ## detector boxes for the OOF and test images (TTA=hflip, or TTA= for none)

predict-classifier: $(CLS_PREDS) ## P(abnormal) for the OOF and test images

predict: predict-detector predict-classifier ## convert the test images if needed, predict OOF and test

$(TUNED): $(WORK)/preds/detector_oof.parquet $(WORK)/preds/classifier_oof.csv
	$(VINBIG) tune --work $(WORK) $(ARGS)

tune: $(TUNED) ## choose the WBF parameters and gate thresholds on the OOF predictions: WORK/fusion.yaml

$(SUBMISSION): $(TUNED) $(WORK)/preds/detector_test.parquet $(WORK)/preds/classifier_test.csv
	$(VINBIG) fuse --work $(WORK) --split test --data $(DATA) $(ARGS)

submission: $(SUBMISSION) ## fuse the test predictions and validate: WORK/submission.csv

$(REPORT): $(TUNED)
	$(VINBIG) report --work $(WORK) $(ARGS)

report: $(REPORT) ## OOF mAP table, per-class AP chart, PR curves and box overlays in WORK/report

# ----------------------------------------------------------------------------- Kaggle, benchmarks

kaggle-wheels: venv ## the wheels dataset: vinbig and its dependencies but torch, in KAGGLE_WHEELS (internet)
	rm -rf $(KAGGLE_WHEELS).partial
	$(BIN)/python -m pip wheel --quiet -w $(KAGGLE_WHEELS).partial .
	cd $(KAGGLE_WHEELS).partial && rm -f torch-*.whl torchvision-*.whl nvidia_*.whl triton-*.whl
	rm -rf $(KAGGLE_WHEELS) && mv $(KAGGLE_WHEELS).partial $(KAGGLE_WHEELS)
	@ls $(KAGGLE_WHEELS) | wc -l | xargs echo "wheels in $(KAGGLE_WHEELS):"

kaggle-models: venv ## the weights dataset: WORK's trained folds, folds.csv, fusion.yaml, config in KAGGLE_MODELS
	$(VINBIG) export --work $(WORK) --out $(KAGGLE_MODELS) $(ARGS)

reference: venv ## rewrite docs/reference.md (every command and config key) from the code
	$(BIN)/python -m vinbig.app.reference

bench: venv ## run the CPU benchmarks in bench/ (about two hours on 2 cores; results go in BENCHMARKS.md by hand)
	$(BIN)/python bench/bench_images.py
	$(BIN)/python bench/bench_metric.py
	$(BIN)/python bench/bench_fuse.py --tune 3000
	$(BIN)/python bench/bench_detector.py
	$(BIN)/python bench/bench_classifier.py
	$(BIN)/python bench/bench_predict.py
	$(BIN)/python bench/bench_second_opinion.py
	$(BIN)/python bench/leaderboard.py --config configs/demo.yaml --seeds 0 1 2 --n-train 240 --n-test 150 --folds 2 --out work/leaderboard

gpu-check: venv ## speed and memory on one CUDA GPU against ultralytics alone (<= 8 min): work/gpu_check/gpu_check.{json,md}
	$(BIN)/python bench/gpu_check.py --out work/gpu_check

clean: ## remove the synthetic data and the work folders of the demo and the default targets
	rm -rf $(DEMO) data/synth work/synth
