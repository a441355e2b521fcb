#!/usr/bin/env bash
# Run `jaxlm train` across several GPU nodes, one process per node (it drives all local GPUs).
#
# Under SLURM (one task per node):
#   srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 scripts/launch_gpu_multinode.sh CONFIG [--set ...]
# By hand, on every node (node 0 hosts the coordinator):
#   COORDINATOR=node0:8476 NUM_NODES=4 NODE_RANK=<0..3> scripts/launch_gpu_multinode.sh CONFIG [--set ...]
#
# jaxlm reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and calls
# jax.distributed.initialize with them. train.out_dir must be on a file system all nodes share.
set -euo pipefail
if [ -n "${SLURM_PROCID:-}" ]; then
  HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  export JAX_COORDINATOR_ADDRESS="${COORDINATOR:-$HEAD:8476}"
  export JAX_NUM_PROCESSES="$SLURM_NTASKS"
  export JAX_PROCESS_ID="$SLURM_PROCID"
else
  : "${COORDINATOR:?set COORDINATOR=host:port (node 0)}" "${NUM_NODES:?set NUM_NODES}" "${NODE_RANK:?set NODE_RANK}"
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_NODES" JAX_PROCESS_ID="$NODE_RANK"
fi
exec jaxlm train "$@"
