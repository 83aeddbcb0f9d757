# megarank: `make pretrain` trains the default config (installing into .venv first if needed); `make test`
# runs the suite. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# TORCH=pinned: constraints.txt's torch, installed into .venv. TORCH=system: keep the torch $(PYTHON) already
# has (an NGC container, a cluster module; tools/venv_over_system.py). Unset: the way .venv was made, or, before
# there is one, system when $(PYTHON) imports a CUDA build of torch.
TORCH ?=
TORCH_MODE_FILE := $(VENV)/.torch-mode
VENV_MODE := $(or $(shell cat $(TORCH_MODE_FILE) 2>/dev/null),$(if $(wildcard $(PY)),pinned))
TORCH_MODE := $(or $(TORCH),$(VENV_MODE),$(shell $(PYTHON) tools/venv_over_system.py detect 2>/dev/null),pinned)
STAMP := $(VENV)/.installed$(if $(filter system,$(TORCH_MODE)),-system-torch)
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

.PHONY: install pretrain pretrain-vit analyze bench bench-rank gpu-check test clean-venv reproduce lock bench-data

install: $(STAMP)

# constraints.txt pins every package (the lock): every machine gets the versions the figures were measured with.
LOCK := constraints.txt
# TORCH=system pins the interpreter's torch family instead (a copy generated into .venv); nothing upgrades pip
# there, so PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR (pip reads both itself) installs offline from a wheel directory.
INSTALL_LOCK := $(if $(filter system,$(TORCH_MODE)),$(VENV)/constraints-system-torch.txt,$(LOCK))
PACKAGES := deepspeed sentencepiece datasets zstandard omegaconf tensorboard safetensors tqdm matplotlib setuptools
$(STAMP): setup.py $(LOCK)
	@case "$(TORCH_MODE)" in pinned|system) ;; *) echo "error: TORCH=$(TORCH_MODE) is not a mode:" \
		"use TORCH=pinned (constraints.txt's torch) or TORCH=system (the torch $(PYTHON) has)" >&2; exit 2;; esac
	# A .venv made the other way is made again: switching TORCH must not keep the other torch.
	$(if $(filter-out $(TORCH_MODE),$(VENV_MODE)),rm -rf $(VENV))
ifeq ($(TORCH_MODE),system)
	$(PYTHON) tools/venv_over_system.py create $(VENV)
	$(PY) tools/venv_over_system.py constraints $(LOCK) > $(INSTALL_LOCK)
else
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	echo pinned > $(TORCH_MODE_FILE)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip setuptools
	# The pinned build installs from local disk here and runs CUDA on a GPU cluster.
	$(PY) -m pip install -q -c $(LOCK) torch torchvision
endif
	$(PY) -m pip install -q -c $(INSTALL_LOCK) $(PACKAGES)
	$(PY) -m pip install -q -c $(INSTALL_LOCK) --no-build-isolation -e '.[dev,paper,eval]'
	$(if $(filter system,$(TORCH_MODE)),$(PY) tools/venv_over_system.py check)
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

# Every GPU-only path checked and measured in one call (CUDA tests, a bf16 run with checkpoint and resume,
# make bench, megarank-rank/-eval on CUDA) -> runs/gpu_check/report.md and report.json; exits 2 without a GPU.
# PY=python3 runs it with an interpreter that already holds megarank's packages (no .venv is made).
gpu-check: $(if $(filter command line,$(origin PY)),,$(STAMP))
	$(PY) tools/gpu_check.py --out runs/gpu_check $(if $(STAGES),--stages $(STAGES))

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
	$(PY) -m pytest tests -q --durations=15 -n 2 --dist loadfile --no-loadscope-reorder

# Rewrite the lock from what .venv holds now (after a deliberate upgrade; then rerun the golden tests).
lock: $(STAMP)
	@test $(TORCH_MODE) = pinned || { echo "error: make lock records the pinned torch, and this .venv keeps an existing one" \
		"(TORCH=system): make install TORCH=pinned first" >&2; exit 2; }
	{ sed -n '/^#/p' $(LOCK); $(PY) -m pip freeze --all | grep -v '^-e \|^megarank'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

clean-venv:
	rm -rf $(VENV)
