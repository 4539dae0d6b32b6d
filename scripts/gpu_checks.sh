#!/usr/bin/env bash
# The checks that need a CUDA GPU: the CUDA paths' tests and the speed benchmark's GPU rows.
#
#   bash scripts/gpu_checks.sh [tests] [bench] [bench-rest] [suite]     (default: tests bench bench-rest)
#
#   tests       build the CUDA kernels and run every test that needs a GPU: `pytest -m gpu` (the tests
#               marked gpu and every device="cuda" case; see tests/conftest.py)
#   bench       python -m benchmarks.speed --device cuda: whole 1024x1024 StyleGAN-2 solves and the
#               overhead rows (ILO step / floor step per split)
#   bench-rest  the throughput, projection and memory sections on the GPU
#   suite       the whole test suite with the GPU visible (solves then run on it: accelerator "auto")
#
# Run it from the repository root in an environment with ilo-pl's dependencies (scripts/bootstrap.sh)
# and a CUDA toolkit for the kernels. Results go to $OUT (default: a new folder
# benchmarks/out/gpu_<date>_<time>, so earlier results are never overwritten): one CSV per benchmark
# part and the logs. Exit status: the number of parts that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # the project's environment if there is one (scripts/bootstrap.sh)
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PY=$PYTHON
OUT=${OUT:-benchmarks/out/gpu_$(date +%Y%m%d_%H%M%S)}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests bench bench-rest)
export PYTHONUNBUFFERED=1
"$PY" - <<'EOF' || exit 1
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_checks: no CUDA device is visible to PyTorch")
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"{p.multi_processor_count} SMs")
EOF
mkdir -p "$OUT"
failed=0
for part in "${parts[@]}"; do
  echo "=== $part ($(date +%T))"
  case "$part" in
    tests)
      # Selected by the `gpu` marker (tests/conftest.py): tests marked @pytest.mark.gpu and every
      # device="cuda" case, from the `device` fixture or a parametrize; no hand-kept list of test ids.
      "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/tests.log" ;;
    bench)  # one CSV per section, so that a run cut short keeps what it finished
      "$PY" -m benchmarks.speed --device cuda --sections solve \
        --out "$OUT/speed_gpu_solve.csv" 2>&1 | tee "$OUT/bench_solve.log" &&
      "$PY" -m benchmarks.speed --device cuda --sections overhead --repeats "${REPEATS:-1}" \
        --out "$OUT/speed_gpu_overhead.csv" 2>&1 | tee "$OUT/bench_overhead.log" ;;
    bench-rest)
      "$PY" -m benchmarks.speed --device cuda --sections throughput projection --repeats "${REPEATS:-1}" \
        --out "$OUT/speed_gpu_rest.csv" 2>&1 | tee "$OUT/bench_rest.log" &&
      "$PY" -m benchmarks.speed --device cuda --sections memory \
        --out "$OUT/speed_gpu_memory.csv" 2>&1 | tee "$OUT/bench_memory.log" ;;
    suite)
      "$PY" -m pytest -q -p no:cacheprovider -x 2>&1 | tee "$OUT/suite.log" ;;
    *)
      echo "unknown part $part (tests, bench, bench-rest, suite)"; false ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && { echo "=== $part FAILED (exit $rc)"; failed=$((failed + 1)); }
done
echo "=== done ($(date +%T)), $failed part(s) failed; results in $OUT"
exit $failed
