#!/usr/bin/env bash
# One call on the GPU machine: the stages named in ZIPGEN_STAGES (default "tests bench"), logs
# and tables into $OUT. A device call is limited to 10 minutes, so a kernel change usually takes
# two calls: ZIPGEN_STAGES="tests sanitize" then ZIPGEN_STAGES="tune bench e2e".
#   (here)  python benchmarks/prepare_gpu_carry.py
#   (there) ZIPGEN_STAGES="..." bash benchmarks/gpu_session.sh [pytest args...]
#           with carry [".gpu_carry"]
# Stages:
#   tests     pytest -m gpu (default: every tests/test_gpu_*.py, or the pytest args given)
#   sanitize  compute-sanitizer memcheck + racecheck of benchmarks/sanitize.py
#   tune      zipgen tune for the models in ZIPGEN_TUNE_MODELS (default: Llama-3.1-8B and 70B)
#             at the M buckets in ZIPGEN_TUNE_MS (default 1,8,16,32,64,128: the switch point
#             cannot move past the largest tuned bucket)
#             into $OUT/tuning_db (copy it to tuning_db/ to ship it); later stages use it
#   bench     benchmarks/decode.py and gemm.py (ZIPGEN_BENCHMARKS overrides: "" runs none)
#   e2e       benchmarks/e2e.py (Llama-3.1-8B architecture, batches 1, 8, 32)
#   bytes     Nsight Compute on 70B gate_up at M = 32: duration, DRAM bytes and L2 -> SM read
#             bytes of the runtime's kernel, the default and wgmma with 64 rows per CTA, to check the
#             bytes model of docs/ZIPGEMM.md (activations re-read once per CTA along N)
#   wgmma     tests/test_gpu_wgmma.py, then benchmarks/wgmma_ab.py (the sm_90a warpgroup-MMA
#             variant against the mma.sync kernel and cuBLAS)
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
STAGES=" ${ZIPGEN_STAGES:-tests bench} "
stage() { [[ "$STAGES" == *" $1 "* ]]; }

if stage tests; then
  python -m pytest -m gpu -q -p no:cacheprovider --maxfail=10 ${@:-tests/test_gpu_*.py} 2>&1 \
    | tee "$OUT/gpu_tests.txt" | tail -25
fi
if stage sanitize; then
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    "$sanitizer" --tool "$tool" --report-api-errors no python benchmarks/sanitize.py \
      > "$OUT/sanitize-$tool.txt" 2>&1
    tail -2 "$OUT/sanitize-$tool.txt"
  done
fi
if stage tune; then
  export ZIPGEN_TUNING_DB=$OUT/tuning_db
  mkdir -p "$ZIPGEN_TUNING_DB" && cp tuning_db/*.jsonl "$ZIPGEN_TUNING_DB"/ 2>/dev/null
  arch=$(python -c "import torch; from zipgen.codegen import arch_for_capability as a; print(a(torch.cuda.get_device_capability()))")
  for model in ${ZIPGEN_TUNE_MODELS:-llama-3.1-8b llama-3.1-70b}; do
    python -m zipgen tune --arch "$arch" --model "$model" --m "${ZIPGEN_TUNE_MS:-1,8,16,32,64,128}" --op all --trials 40 \
      --quiet 2>&1 | tee "$OUT/tune-$model.txt" | tail -3
  done
elif [ -d "$OUT/tuning_db" ]; then
  export ZIPGEN_TUNING_DB=$OUT/tuning_db
fi
if stage bench; then
  for b in ${ZIPGEN_BENCHMARKS-decode gemm}; do
    python benchmarks/$b.py --json "$OUT/$b.json" 2>&1 | tee "$OUT/$b.md" | grep -v Warning | tail -4
  done
fi
if stage wgmma; then
  python -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_wgmma.py 2>&1 \
    | tee "$OUT/wgmma_tests.txt" | tail -3
  python benchmarks/wgmma_ab.py --json "$OUT/wgmma_ab.json" 2>&1 | tee "$OUT/wgmma_ab.md" | tail -12
fi
if stage e2e; then
  python benchmarks/e2e.py --json "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.md" | tail -6
fi
if stage bytes; then
  # the runtime's kernel (tuned winner), the default (mma.sync), wgmma with 64 rows per CTA
  cfgs=$(python -c "import torch; from zipgen.tune import dispatch; from zipgen.runtime import fused_config
numbers = lambda c: ' '.join(str(int(v)) for v in c.as_dict().values())
print(numbers(dispatch.choose('zipgemm', torch.device('cuda'), 57344, 8192, 32, fused_config)),
      numbers(fused_config(32, 57344, 8192)))")
  ncu --clock-control none -k regex:zipgemm --metrics gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sectors_srcunit_tex_op_read.sum \
    python benchmarks/profile_gemm.py 57344 8192 32 $cfgs 16 4 1 4 1 1 1 > "$OUT/ncu-bytes.txt" 2>&1
  grep -E "zipgemm_|duration|bytes_read|sectors" "$OUT/ncu-bytes.txt" | tail -12
fi
