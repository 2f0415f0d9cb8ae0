#!/usr/bin/env bash
# One call on the GPU machine: GPU tests, then benchmarks; logs and tables go to $OUT.
#   (here)  python benchmarks/prepare_gpu_carry.py
#   (there) bash benchmarks/gpu_session.sh [pytest args...]   with carry [".gpu_carry"]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/zipgen-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD ZIPGEN_CACHE_DIR=${ZIPGEN_CACHE_DIR:-/tmp/zipgen-cache}
export ZIPGEN_MINILM_BF16=$PWD/.gpu_carry/minilm_bf16.safetensors
if [ -d .gpu_carry/wheels ]; then  # Optuna & co., missing from the GPU image
  pip install --quiet --no-index --no-deps --target /tmp/zipgen-pylib .gpu_carry/wheels/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/zipgen-pylib
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python -m pytest -m gpu -q -p no:cacheprovider --maxfail=10 ${@:-tests/test_gpu_*.py} 2>&1 | tee "$OUT/gpu_tests.txt" | tail -25
for b in ${ZIPGEN_BENCHMARKS-decode gemm}; do  # ZIPGEN_BENCHMARKS="" runs none
  python benchmarks/$b.py --json "$OUT/$b.json" 2>&1 | tee "$OUT/$b.md"
done
