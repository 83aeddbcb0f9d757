#!/usr/bin/env bash
# Start megarank-train on THIS node of a multi-node job: what DeepSpeed's runner executes on every host of a
# hostfile, for clusters where the runner cannot ssh/pdsh between nodes (SLURM, Kubernetes) or for a manual
# launch. Run it once per node with the same arguments and that node's NODE_RANK.
#
#   NNODES=2 NODE_RANK=0 GPUS_PER_NODE=8 MASTER_ADDR=node1 MASTER_PORT=29500 \
#       tools/launch_node.sh configs/experiments/pile_gpt_16xa100.yaml [key=value ...]
#
# Under SLURM (one task per node):  srun --ntasks-per-node=1 env NODE_RANK=\$SLURM_NODEID ... tools/launch_node.sh
# GPUS_PER_NODE defaults to the local GPU count, or NPROC (1) CPU processes where there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
GPUS_PER_NODE=${GPUS_PER_NODE:-$([ "${GPUS:-0}" -gt 0 ] && echo "$GPUS" || echo "${NPROC:-1}")}
PY=${PYTHON:-.venv/bin/python}

# DeepSpeed's world description: every node with its local slots, base64 JSON, as its runner passes it.
WORLD_INFO=$("$PY" - "$NNODES" "$GPUS_PER_NODE" <<'PYEOF'
import base64, json, sys
nodes, slots = int(sys.argv[1]), int(sys.argv[2])
print(base64.urlsafe_b64encode(json.dumps({f"node{i}": list(range(slots)) for i in range(nodes)}).encode()).decode())
PYEOF
)
exec "$PY" -u -m deepspeed.launcher.launch --world_info="$WORLD_INFO" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --no_local_rank --module megarank.train "$@"
