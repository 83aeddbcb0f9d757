# megarank: `make pretrain` trains the default config (installing into .venv first if needed); `make test`
# runs the suite. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DeepSpeed JIT-builds its CPU comm op on first use: keep it inside .venv, built once by `make install`.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions

CONFIG ?= configs/default.yaml
OVERRIDES ?=
# Processes on this machine: every local GPU, or NPROC CPU processes where there is none.
NPROC ?= 1
GPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
NUM_PROCS := $(if $(filter-out 0,$(GPUS)),$(GPUS),$(NPROC))
MASTER_PORT ?= 29500
# Multi-node: a DeepSpeed hostfile ("host slots=8" per line); the runner starts every node over pdsh/ssh.
HOSTFILE ?=
NNODES ?= 1
GPUS_PER_NODE ?= $(NUM_PROCS)
ifdef HOSTFILE
LAUNCH := $(VENV)/bin/deepspeed --hostfile $(HOSTFILE) --num_nodes $(NNODES) --num_gpus $(GPUS_PER_NODE) \
	--master_port $(MASTER_PORT) $(if $(MASTER_ADDR),--master_addr $(MASTER_ADDR))
else
LAUNCH := $(VENV)/bin/deepspeed --num_gpus $(NUM_PROCS) --master_port $(MASTER_PORT)
endif

.PHONY: install pretrain pretrain-vit analyze bench bench-rank test clean-venv reproduce lock bench-data

install: $(STAMP)

# constraints.txt pins every package (the lock): every machine gets the versions the figures were measured with.
LOCK := constraints.txt
$(STAMP): setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip setuptools
	# The pinned build installs from local disk here and runs CUDA on a GPU cluster.
	$(PY) -m pip install -q -c $(LOCK) torch torchvision
	$(PY) -m pip install -q -c $(LOCK) deepspeed sentencepiece datasets zstandard omegaconf tensorboard safetensors tqdm matplotlib
	$(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e '.[dev,paper]'
	$(PY) -c "from deepspeed.accelerator import get_accelerator as g; b = g().create_op_builder('ShareMemCommBuilder'); b and b.load()"
	touch $(STAMP)

pretrain: $(STAMP)
	$(LAUNCH) --module megarank.train $(CONFIG) $(OVERRIDES)

# The ViT: same launcher, same knobs (CONFIG, OVERRIDES, NPROC, HOSTFILE, ...).
VIT_CONFIG ?= configs/vit_default.yaml
pretrain-vit: $(STAMP)
	$(LAUNCH) --module megarank.train $(if $(filter configs/default.yaml,$(CONFIG)),$(VIT_CONFIG),$(CONFIG)) $(OVERRIDES)

# Per-head rank of W_Q^T W_K and W_O W_V: a run dir, checkpoint dir or tag, or a Hugging Face safetensors dir.
CKPT ?= runs/default
OUT ?= $(CKPT)/rank
RANK_ARGS ?=
analyze: $(STAMP)
	$(VENV)/bin/megarank-rank $(CKPT) --out $(OUT) $(RANK_ARGS)

# Attention kernels and training throughput on this machine's GPUs (or CPU), in one call.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) tools/bench.py --json runs/bench.json $(BENCH_ARGS)

# A random LLaMA-2-7B-shaped safetensors checkpoint (13.5 GB under $$TMPDIR), analysed end to end.
bench-rank: $(STAMP)
	$(PY) tools/bench_rank.py --json runs/bench_rank.json

# Preprocessing on a generated Pile-shaped input (100 and 200 MB): tokens/s against the encode limit, extra disk,
# peak RSS.
bench-data: $(STAMP)
	$(PY) tools/bench_data.py --json runs/bench_data.json $(BENCH_ARGS)

# The paper's experiments (configs/experiments/paper/): make exp-factorized, exp-scalar, exp-icl, exp-lm-sweep,
# exp-vit-sweep, exp-pretrained; EXP_CONFIG picks a preset, OVERRIDES changes any knob, MODEL= the pretrained dir.
EXP_CONFIG ?=
MODEL ?=
exp-%: $(STAMP)
	$(PY) -m megarank.experiments $* $(if $(EXP_CONFIG),--config $(EXP_CONFIG)) $(if $(MODEL),model=$(MODEL)) $(OVERRIDES)

# Every experiment's CPU default in sequence (finished ones are kept), then runs/paper/REPORT.md.
reproduce: $(STAMP)
	$(PY) -m megarank.experiments reproduce

test: $(STAMP)
	$(PY) -m pytest tests -q --durations=15 -n 2 --dist loadfile

# Rewrite the lock from what .venv holds now (after a deliberate upgrade; then rerun the golden tests).
lock: $(STAMP)
	{ sed -n '/^#/p' $(LOCK); $(PY) -m pip freeze --all | grep -v '^-e \|^megarank'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

clean-venv:
	rm -rf $(VENV)
