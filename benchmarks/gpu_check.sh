#!/usr/bin/env bash
# The GPU figures of issue 7 in one prepared run (estimated 7-9 minutes on one H100/H200; not
# yet run on one), for a session lent a device: `run` it from the repository root, e.g.
#     bash benchmarks/gpu_check.sh            # writes its logs under $OUT (or ./gpu_check_out)
# It uses the machine's own python3 and PyTorch (the package from src/, no install), renders
# dSprites once (~5 s), then: the CUDA-relevant tests, training throughput at batch 64 and
# 1024 (limit / disvae / plain / plain*), the compiled path (with and without CUDA graphs),
# the metrics' encoding, and a
# 3,000-step run whose images/s give the 300,000-step protocol's time.
# DEVICE=cpu STEPS64=3 STEPS1024=2 ENC=2000 RUNSTEPS=20 bash benchmarks/gpu_check.sh
# is a dry run of the same commands on the CPU.
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
step() { echo; echo "== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
$PY -c "from disvae.data import load_dataset; print(len(load_dataset('dsprites')), 'dSprites images')"

step "tests of the fast path (CUDA paths run where a GPU is present)"
$PY -m pytest -q -x -p no:cacheprovider tests/test_fastpath.py tests/test_adam.py \
    tests/test_objectives.py 2>&1 | tail -3 | tee "$OUT/tests.txt"

step "training throughput, batch 64"
$PY benchmarks/train_throughput.py --device "$DEVICE" --batch-sizes 64 \
    --steps "${STEPS64:-200}" --reps 3 | tee "$OUT/train64.txt"
step "training throughput, batch 1024"
$PY benchmarks/train_throughput.py --device "$DEVICE" --batch-sizes 1024 \
    --steps "${STEPS1024:-20}" --reps 3 | tee "$OUT/train1024.txt"
step "compiled, betaB, batch 64"
$PY benchmarks/train_throughput.py --device "$DEVICE" --objectives betaB --batch-sizes 64 \
    --steps "${STEPS64:-200}" --reps 2 --compile | tee "$OUT/train64_compile.txt"
step "compiled with CUDA graphs (reduce-overhead), betaB, batch 64"
$PY benchmarks/train_throughput.py --device "$DEVICE" --objectives betaB --batch-sizes 64 \
    --steps "${STEPS64:-200}" --reps 2 --compile-mode reduce-overhead \
    | tee "$OUT/train64_graphs.txt"

step "encoding for the metrics"
$PY benchmarks/encode_throughput.py --device "$DEVICE" --batch-sizes 1000,4096 \
    --images "${ENC:-100000}" --reps 3 | tee "$OUT/encode.txt"

step "a real run: images/s from its log"
$PY -m disvae train --dataset dsprites --loss betaB --device "$DEVICE" --no-progress \
    --steps "${RUNSTEPS:-3000}" --log-every 500 --overwrite --out "$OUT/run" \
    2>&1 | tee "$OUT/run.txt"
$PY - "$OUT/run/train_log.jsonl" <<'PY' | tee -a "$OUT/run.txt"
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
rate = rows[-1]["img_per_s"]
print(f"last logged rate {rate:.0f} images/s: the 300,000-step x 64 protocol would take "
      f"{300_000 * 64 / rate / 60:.1f} min")
PY
