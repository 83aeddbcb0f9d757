#!/usr/bin/env bash
set -euo pipefail
# λ_attn sweep for the ViT (PAPER.md Fig 3 right): attention decay varied, MLP and embedding decay fixed.
# One run per value, each its own run dir; compare the runs' attention ranks with the rank tool afterwards.
for wd in 0 0.01 0.05 0.1 0.3 1.0; do
  make pretrain-vit HOSTFILE=hosts NNODES=2 GPUS_PER_NODE=8 \
    CONFIG=configs/experiments/imagenet_vit_s16_16xa100.yaml \
    OVERRIDES="optim.wd_attn=$wd train.run_dir=runs/imagenet_vit_s16_wd_attn$wd"
done
