#!/usr/bin/env bash
# Run `jaxlm train` on every worker of a Cloud TPU pod slice (e.g. v5p-32, v4-64).
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE CONFIG [--set key=value ...]
#
# Every worker runs the same command; JAXLM_DISTRIBUTED=auto makes jaxlm call
# jax.distributed.initialize(), which finds the coordinator and the process ids from the TPU
# metadata. Each process reads its own slice of every batch; only process 0 writes logs.
# train.out_dir must be a location all workers share (a gs:// bucket path or an NFS mount),
# because every worker writes its own shards of each checkpoint.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [--set key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd ~/jaxlm && JAXLM_DISTRIBUTED=auto jaxlm train${ARGS}"
