#!/usr/bin/env bash
# One lease on a lent GPU, in one call: build the _cuda extension for that card, run every test
# that uses the cuda backend, run the GPU benchmark suite, and a memcheck pass over the kernel
# tests. Each stage has its own time limit so that a hang in one still leaves the others' results.
# Logs and results go to $OUT (the device tool brings that folder back; default /tmp/gpu-session).
#
#   bash benchmarks/gpu_session.sh [results-name]       (run from the repository root)
#   ONLY=dense,conv (benchmark families; default all), SKIP_MEMCHECK=1, VARIANTS="current no-split-k"
#
# Same-card A/B: with BASE=DIR (a source tree of the predecessor, e.g. `git archive REV | tar -x -C
# DIR` inside an ignored folder that the device tool carries), that tree is built in place first and
# the families in BASE_ONLY (default dense,conv,losses,train_step) and the step breakdown run on it,
# into $OUT/base-*; then this tree runs as usual. (The breakdown script is this tree's: a row that
# uses an API the base lacks prints "failed" there.)
#
# The machine reaches no registry: it builds with --no-build-isolation against what is installed
# (pybind11, cmake, ninja, numba, cupy, pytest are). CUDAARCHS=90 builds Hopper code only, which
# is what the lent H100/H200 run; a release build keeps the default list of architectures.
set -u
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
NAME=${1:-cuda-$(date +%F)}  # name the card in it: the tool may lend an H200 for an H100
PY=python3
stage() { echo; echo "== $1 ($(date +%T))"; }

stage "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit \
  --format=csv
$PY -c "import sys, numpy, numba, cupy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__)"
nvcc --version | tail -1

if [ -n "${BASE:-}" ]; then
  stage "base: build $BASE in place, then its benchmarks"
  BASE=$(realpath "$BASE")
  # (an older setup.py left _cuda in build/ on an in-place build: copy it beside _emu)
  if (cd "$BASE" && CUDAARCHS=90 FASTCONV_CUDA=ON timeout 180 $PY setup.py -q build_ext --inplace \
        && cp -f build/lib*/fastconv/_cuda*.so fastconv/) >"$OUT/base-build.log" 2>&1; then
    (cd /tmp && PYTHONPATH="$BASE" $PY -c "import fastconv, fastconv._cuda; print('base fastconv from', fastconv.__file__)")
    PYTHONPATH="$BASE" timeout 200 $PY benchmarks/run.py --device cuda --only "${BASE_ONLY:-dense,conv,losses,train_step}" \
      --out "$OUT" --name "base-$NAME" 2>&1 | tee "$OUT/base-bench.log"
    PYTHONPATH="$BASE" timeout 60 $PY benchmarks/gpu_step_breakdown.py 2>&1 | tee "$OUT/base-breakdown.log"
  else
    tail -20 "$OUT/base-build.log"; echo "BASE BUILD FAILED (going on with this tree)"
  fi
fi

stage "build (CUDAARCHS=90)"
if ! (time CUDAARCHS=90 FASTCONV_CUDA=ON timeout 180 $PY -m pip install --no-build-isolation --no-deps -e . ) \
      >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
tail -4 "$OUT/build.log"
$PY -c "
import fastconv.backend as b
ok, why = b.availability('cuda'); print('cuda backend:', ok, why)
if ok: print(b.load('cuda').ext.device_name(0))
" || exit 1

stage "tests on the cuda backend"
timeout 150 $PY -m pytest -q -m cuda -p no:cacheprovider --timeout 60 -rfE tests >"$OUT/pytest-cuda.log" 2>&1
echo "pytest exit $?"; grep -E "^(FAILED|ERROR)" "$OUT/pytest-cuda.log" | head -40; tail -3 "$OUT/pytest-cuda.log"

stage "benchmarks"
timeout 240 $PY benchmarks/run.py --device cuda --only "${ONLY:-dense,activations,conv,pool,losses,optim,train_step}" \
  --out "$OUT" --name "$NAME" 2>&1 | tee "$OUT/bench.log"

stage "the training step, op by op"
for variant in ${VARIANTS:-current}; do  # VARIANTS="current no-split-k slices64": the A/B of 2026-11-26
  extra=$([ "$variant" = current ] && echo --profile)
  timeout 90 $PY benchmarks/gpu_step_breakdown.py --variant "$variant" $extra 2>&1 | tee -a "$OUT/breakdown.log"
done

[ -n "${SKIP_MEMCHECK:-}" ] || {
stage "memcheck over the kernel tests (small shapes)"
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -m cuda -p no:cacheprovider -x \
  tests/test_dense.py tests/test_conv.py tests/test_pool.py tests/test_loss.py tests/test_optim.py \
  -k "not bad and not Bad" >"$OUT/memcheck.log" 2>&1
echo "memcheck exit $? (9: an error was reported; 124: ran out of time)"; grep -m5 -E "Invalid|ERROR SUMMARY|passed|failed" "$OUT/memcheck.log"
}
# The device tool brings back at most 8 files: everything goes back as one archive.
(cd "$OUT" && tar czf session.tgz --remove-files $(ls | grep -v '^session.tgz$')) && ls -la "$OUT"
echo "done $(date +%T)"
