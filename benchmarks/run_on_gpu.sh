#!/usr/bin/env bash
# Every GPU figure that needs a real device, in one go (about 9 minutes on one H100 or H200): the kernels
# against XLA and cuDNN, the train step's MFU, and decode speed. On a GPU machine, from the repository root:
#
#     pip install -e ".[gpu-aot]" && bash benchmarks/run_on_gpu.sh [OUT_DIR]
#
# Each script rewrites its results file as it goes, so one cut short by its time limit keeps what it
# measured; the logs and copies of the results land in OUT_DIR (default benchmarks/results/gpu_run).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu_run}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; python -c "import jax; print(jax.devices())"; } 2>&1 | tee "$out/device.txt"
timeout 300 python benchmarks/bench_kernels.py --out "$out/kernels.md" 2>&1 | tee "$out/kernels.log"
timeout 150 python benchmarks/bench_mfu.py --config openelm_1_1b --seq-len 2048 --batch 8 --steps 10 2>&1 \
    | tee "$out/mfu.log"
timeout 90 python benchmarks/bench_decode.py --gpu --out "$out/decode_gpu.md" 2>&1 | tee "$out/decode.log"
echo "results in $out"
