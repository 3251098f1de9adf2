#!/usr/bin/env bash
# The benchmark on one CUDA GPU, in three runs: bf16 autocast (fp32 weights), pure bf16, and pure bf16 with
# torch.compile (training only: compiling every decoding configuration of every model takes longer than the rest).
# Each run writes NAME.json and NAME.log to the output folder and keeps what it measured if a later part fails.
#
#   bash benchmarks/run_gpu.sh [OUTPUT_FOLDER]      # default benchmarks/results_gpu
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results_gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0

run() {  # NAME, then bench_models.py's arguments
    local name=$1
    shift
    echo "=== $name: $*"
    python benchmarks/bench_models.py --device cuda --output "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
run bf16_autocast --dtype bf16-autocast --rounds 5 --skip flops
run bf16 --dtype bf16 --rounds 5 --skip flops
run bf16_compile --dtype bf16 --compile --rounds 5 --models vanilla,marian \
    --train_shapes 64x32x32,128x128x128 --skip generate,memory,flops
exit $status
