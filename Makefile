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
RUN := runs/demo

.PHONY: setup test test-install demo bench bench-inference compare compare-plan clean

setup: $(STAMP)

# torch first and pinned (a bare `torch` pulls several GB of CUDA packages), then the
# pinned dependencies (seqeval, sdist only, through PEP 517: its setup.py cannot build
# otherwise), then fairseq-fixed without its dependencies (it declares torchaudio,
# which has no build for torch 2.13) from a wheel built once and cached, then this package.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps --use-pep517 seqeval==1.2.2
	$(PIP) install --quiet --no-deps --no-index --find-links $(WHEELS) $(FAIRSEQ) 2>/dev/null || { \
	  mkdir -p $(WHEELS) && \
	  $(PIP) wheel --quiet --no-deps --no-build-isolation $(FAIRSEQ) -w $(WHEELS) && \
	  $(PIP) install --quiet --no-deps --no-index --find-links $(WHEELS) $(FAIRSEQ); }
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

# one test process per core, at most 4 (each holds torch and fairseq: about 0.5 GB before a model)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not install and not expert_parallel"

# fairseq-train with experts sharded over 2 and 4 gloo workers (3 minutes; CI runs it after make test)
test-expert-parallel: setup
	$(PY) -m pytest -q -m expert_parallel

# the serving-only install in a fresh virtualenv, from the package index (CI runs it after make test)
test-install: setup
	$(PY) -m pytest -q -m install

# The pretrained dense encoder (all-MiniLM-L6-v2, from its wheel), its 4-expert upcycles
# (copy; split, neurons ranked on the training split), and the movie reviews binarised
# with its vocabulary.
PRE := data-bin/minilm
PRE_DATA := data-bin/movie_reviews_minilm
$(PRE)/model.pt: | setup
	$(VENV)/bin/omoe-import-bert --minilm --out $(PRE) --max-positions 128
$(PRE)/moe4.pt: $(PRE)/model.pt
	$(VENV)/bin/omoe-upcycle $(PRE)/model.pt --out $@ --moe-experts 4 --moe-top-k 1
$(PRE)/moe4_drop.pt: $(PRE)/model.pt
	$(VENV)/bin/omoe-upcycle $(PRE)/model.pt --out $@ --moe-experts 4 --moe-top-k 1 --method drop
$(PRE)/moe4_drop01.pt: $(PRE)/model.pt
	$(VENV)/bin/omoe-upcycle $(PRE)/model.pt --out $@ --moe-experts 4 --moe-top-k 1 --method drop \
	  --drop-ratio 0.1
$(PRE)/moe8_top2.pt: $(PRE)/model.pt
	$(VENV)/bin/omoe-upcycle $(PRE)/model.pt --out $@ --moe-experts 8 --moe-top-k 2
$(PRE)/moe4_split.pt: $(PRE)/model.pt $(PRE_DATA)/input0/dict.txt
	$(VENV)/bin/omoe-upcycle $(PRE)/model.pt --out $@ --moe-experts 4 --moe-top-k 1 \
	  --method split --importance-data $(PRE_DATA)
$(PRE_DATA)/input0/dict.txt: $(PRE)/model.pt
	$(VENV)/bin/omoe-prepare-data $(PRE_DATA) --srcdict $(PRE)/dict.txt --workers 2

# Fine-tune the upcycled MiniLM MoE with OMoE for one epoch, score the test split.
TASK := --user-dir user_dir --task omoe_sentence_prediction --num-classes 2 \
  --init-token 0 --max-positions 128 --criterion omoe_sentence_prediction --cpu --num-workers 0
FINETUNE := --arch omoe_roberta_minilm --layer-norm-eps 1e-12 --weight-decay 0.01 --lr 1e-4 \
  --lr-scheduler polynomial_decay --warmup-updates 26 --total-num-update 265 \
  --batch-size 32 --max-epoch 1 --best-checkpoint-metric accuracy \
  --maximize-best-checkpoint-metric --log-format simple --log-interval 20 \
  --no-epoch-checkpoints --seed 1
demo: setup $(PRE)/moe4.pt $(PRE_DATA)/input0/dict.txt
	rm -rf $(RUN)
	$(VENV)/bin/fairseq-train $(PRE_DATA) $(TASK) $(FINETUNE) --finetune-from-model $(PRE)/moe4.pt \
	  --moe-experts 4 --moe-top-k 1 --moe-aux-weight 0.01 \
	  --optimizer omoe --omoe-betas '(0.9, 0.98)' \
	  --omoe-alpha 0.01 --omoe-accumulate-steps 10 --omoe-orthogonal-steps 10 \
	  --save-dir $(RUN)/checkpoints --tensorboard-logdir $(RUN)/tensorboard
	$(VENV)/bin/fairseq-validate $(PRE_DATA) $(TASK) \
	  --path $(RUN)/checkpoints/checkpoint_best.pt --valid-subset test --batch-size 64
	$(VENV)/bin/omoe-analyze $(RUN)/checkpoints/checkpoint_best.pt --data $(PRE_DATA) \
	  --split test --out $(RUN)/analysis --tensorboard-logdir $(RUN)/tensorboard/analysis
	$(VENV)/bin/omoe-export $(RUN)/checkpoints/checkpoint_best.pt --out $(RUN)/model.onnx
	printf '%s\n' "a gripping, funny and moving film" "dull, predictable and far too long" \
	  "not the best movie of the year, but not bad" | $(VENV)/bin/omoe-infer $(RUN)/model.onnx
	@echo "TensorBoard logs: $(RUN)/tensorboard   checkpoint: $(RUN)/checkpoints/checkpoint_best.pt   ONNX: $(RUN)/model.onnx"

# dense fine-tune, MoE + AdamW, MoE + OMoE, its variants, a control and the baselines from
# the pretrained encoder (4 experts, copy or drop upcycled), trained to convergence
# (omoe_plugin/analysis/comparison.py: patience and epoch cap per corpus) at each one's best
# learning rate on validation (seed 1, lr 3e-5 / 1e-4 / 3e-4; the others at their base's),
# then 3 seeds scored on test (the control and the baselines: one; the variants: the best one
# only; AdamW and OMoE on every corpus first, then the variants; last, the first two epochs
# again of the final runs recorded without their curve); two runs at a time, each
# at most about 1.5 h on 2 cores (at most 11 h a corpus). Appends to
# results/convergence.jsonl, writes docs/results/convergence.md; resumes where it was
# stopped. On a machine lent until a time,
# `make compare UNTIL=HH:MM` starts no run that is not likely to finish by then; with FILL=1
# as well, it trains those last instead (on a machine that is kept, a run cut off continues).
CORPORA := movie_reviews conll2003 privacy_qa
COMPARE := $(PY) scripts/compare_optimizers.py
ALL := --all $(if $(UNTIL),--until $(UNTIL)) $(if $(FILL),--fill)
COMPARED := setup $(PRE)/moe4.pt $(PRE)/moe4_drop01.pt $(PRE)/moe8_top2.pt $(foreach c,$(CORPORA),data-bin/$(c)_minilm/input0/dict.txt)
compare: $(COMPARED)
	$(COMPARE) $(ALL) & one=$$!; $(COMPARE) $(ALL); two=$$?; wait $$one && [ $$two = 0 ]
	$(COMPARE) --report
# what `make compare` has left, in its order, and the hours it is likely to take (trains nothing)
compare-plan: $(COMPARED)
	$(COMPARE) --plan
data-bin/%_minilm/input0/dict.txt: $(PRE)/model.pt
	$(VENV)/bin/omoe-prepare-data data-bin/$*_minilm --corpus $* --srcdict $(PRE)/dict.txt --workers 2

bench: setup
	$(PY) scripts/bench_moe_layer.py
	$(PY) scripts/bench_optimizer.py

# The dense encoder the demo's MoE was upcycled from, fine-tuned the same way (AdamW): what
# bench-inference serves beside the MoE.
DENSE_RUN := runs/demo_dense
$(DENSE_RUN)/checkpoints/checkpoint_best.pt: | setup $(PRE)/model.pt $(PRE_DATA)/input0/dict.txt
	$(VENV)/bin/fairseq-train $(PRE_DATA) $(TASK) $(FINETUNE) --finetune-from-model $(PRE)/model.pt \
	  --moe-freq 0 --optimizer adam --adam-betas '(0.9, 0.98)' --save-dir $(DENSE_RUN)/checkpoints

# PyTorch vs ONNX Runtime fp32 / int8 on the demo's fine-tuned MoE, and the MoE against the
# dense model served the same way (run `make demo` first)
bench-inference: setup $(DENSE_RUN)/checkpoints/checkpoint_best.pt
	$(PY) scripts/bench_inference.py

clean:
	rm -rf $(VENV) runs data-bin .pytest_cache
