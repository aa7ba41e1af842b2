#!/usr/bin/env bash
# Every GPU figure the open issues ask for, in one call of a lent device machine:
#
#   here:   bash benchmarks/device_wheels.sh      # once: .whl/ = what the device image lacks
#   device: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560)
#
# Writes OUT/gpu.txt (the card), OUT/decode_gpu.json (decode at 1 and 64 slots, bandwidth
# utilisation), OUT/decode_gpu_hf.json (the same through transformers: the peer),
# OUT/train_gpu.json (training MFU at 8 x 2,048 tokens) and a log of each. A benchmark that
# fails does not stop the others; the exit status says whether all ran.
# `bash benchmarks/gpu_session.sh --check` runs all three tiny on this machine's CPU (seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
decode=() peer=() train=()
if [ "${1:-}" = --check ]; then
  decode=(--preset tiny --slots 1 2 --prompt-len 8 --max-len 64 --calls 1 --peak-bandwidth 1e10)
  peer=(--preset tiny --slots 1 2 --prompt-len 8 --new 4)
  train=(--preset tiny --batch 2 --seq 128 --steps 2 --peak-flops 1e11)
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} | tee "$OUT/gpu.txt"
status=0
timeout 120 python3 benchmarks/decode_gpu.py --out "$OUT" "${decode[@]}" 2>&1 \
  | tee "$OUT/decode_gpu.log" || status=1
timeout 240 python3 benchmarks/decode_gpu_hf.py --out "$OUT" "${peer[@]}" 2>&1 \
  | tee "$OUT/decode_gpu_hf.log" || status=1
timeout 150 python3 benchmarks/train_gpu.py --out "$OUT" "${train[@]}" 2>&1 \
  | tee "$OUT/train_gpu.log" || status=1
exit $status
