# Set-up, tests, demo and benchmarks. `make demo` and `make test` set everything up first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Fetched archives and the fairseq wheel we build; CI points this outside the clone.
export OMOE_CACHE ?= $(CURDIR)/.cache
WHEELS := $(OMOE_CACHE)/wheels
FAIRSEQ := fairseq-fixed==0.12.3.1
STAMP := $(VENV)/.setup-done
DATA := data-bin/movie_reviews
RUN := runs/demo

.PHONY: setup test demo bench compare clean

setup: $(STAMP)

# torch first and pinned (a bare `torch` pulls several GB of CUDA packages), then the
# pinned dependencies, then fairseq-fixed without its dependencies (it declares torchaudio,
# which has no build for torch 2.13) from a wheel built once and cached, then this package.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps --no-index --find-links $(WHEELS) $(FAIRSEQ) 2>/dev/null || { \
	  mkdir -p $(WHEELS) && \
	  $(PIP) wheel --quiet --no-deps --no-build-isolation $(FAIRSEQ) -w $(WHEELS) && \
	  $(PIP) install --quiet --no-deps --no-index --find-links $(WHEELS) $(FAIRSEQ); }
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(PY) -m pytest -q

$(DATA)/input0/dict.txt: | setup
	$(VENV)/bin/omoe-prepare-data $(DATA) --workers 2

# Until the pretrained import lands: a short OMoE fine-tune of a small MoE encoder from scratch.
demo: setup $(DATA)/input0/dict.txt
	rm -rf $(RUN)
	$(VENV)/bin/fairseq-train $(DATA) --user-dir user_dir \
	  --task omoe_sentence_prediction --num-classes 2 --init-token 0 --max-positions 128 \
	  --arch omoe_roberta_tiny --encoder-layers 4 --encoder-embed-dim 128 \
	  --encoder-ffn-embed-dim 256 --moe-experts 4 --moe-top-k 1 \
	  --criterion omoe_sentence_prediction --moe-aux-weight 0.01 \
	  --optimizer omoe --omoe-betas '(0.9, 0.98)' --weight-decay 0.01 --lr 5e-4 \
	  --omoe-alpha 0.01 --omoe-accumulate-steps 10 --omoe-orthogonal-steps 10 \
	  --lr-scheduler polynomial_decay --warmup-updates 60 --total-num-update 800 \
	  --batch-size 32 --max-epoch 3 --max-update 800 --cpu --num-workers 0 \
	  --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric \
	  --save-dir $(RUN)/checkpoints --tensorboard-logdir $(RUN)/tensorboard \
	  --log-format simple --log-interval 50 --no-epoch-checkpoints --seed 1
	$(VENV)/bin/fairseq-validate $(DATA) --user-dir user_dir --task omoe_sentence_prediction \
	  --num-classes 2 --init-token 0 --max-positions 128 --criterion omoe_sentence_prediction \
	  --path $(RUN)/checkpoints/checkpoint_best.pt --valid-subset test --batch-size 64 --cpu
	@echo "TensorBoard logs: $(RUN)/tensorboard   checkpoint: $(RUN)/checkpoints/checkpoint_best.pt"

# MoE + AdamW against MoE + OMoE (joint, average), 3 seeds: runs/compare/results.md
compare: setup $(DATA)/input0/dict.txt
	$(PY) scripts/compare_optimizers.py --out runs/compare

bench: setup
	$(PY) scripts/bench_moe_layer.py
	$(PY) scripts/bench_optimizer.py

clean:
	rm -rf $(VENV) runs data-bin .pytest_cache
