#!/usr/bin/env bash
# The paper's Table 1 grid for the GPT on 16×A100: λ_SA × λ_MLP, one run per pair (add seeds with SEEDS="1 2 3").
set -euo pipefail
for seed in ${SEEDS:-1234}; do
  for wd_attn in 0 0.1 1.0; do
    for wd_mlp in 0 0.1 1.0; do
      make pretrain HOSTFILE="${HOSTFILE:-hosts}" NNODES=2 GPUS_PER_NODE=8 \
        CONFIG=configs/experiments/pile_gpt_16xa100.yaml \
        OVERRIDES="seed=$seed optim.wd_attn=$wd_attn optim.wd_mlp=$wd_mlp train.run_dir=runs/pile_sa${wd_attn}_mlp${wd_mlp}_s$seed"
    done
  done
done
