#!/usr/bin/env bash
# One lease on a lent GPU, in one call: build the _cuda extension for that card, run every test
# that uses the cuda backend, train the examples on it, run the GPU benchmark suite, and a memcheck
# pass over the kernel tests. Each stage has its own time limit so that a hang in one still leaves
# the others' results.
# Logs and results go to $OUT (the device tool brings that folder back; default /tmp/gpu-session).
#
#   bash benchmarks/gpu_session.sh [results-name]       (run from the repository root)
#   ONLY=dense,conv (benchmark families; default all), SKIP_MEMCHECK=1, MEMCHECK_TESTS="tests/test_dense.py",
#   VARIANTS="current no-split-k" (none: skip the step breakdown), GEMM_SWEEP=1 (benchmarks/gpu_gemm_sweep.py),
#   EXAMPLES="digits_cnn tumour_mlp neuron" (trained on cuda; SKIP_EXAMPLES=1: none),
#   PROFILE=1 (benchmarks/gpu_profile.py timed; with NCU=1 also its kernels under Nsight Compute)
#
# Same-card A/B: BASES="DIR=FAMILIES ..." names source trees of predecessors or variants (e.g.
# `git archive REV | tar -x -C DIR` inside an ignored folder that the device tool carries); each is
# built in place after this tree's stages and its benchmark FAMILIES and the step breakdown run on it, into
# $OUT/<dir name>-*; then this tree runs as usual. (The scripts are this tree's: a row that uses an
# API a base lacks prints "failed" there.)
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

[ -n "${SKIP_EXAMPLES:-}" ] || {
stage "the examples, trained on the cuda backend (the same layer code as on cpu)"
for example in ${EXAMPLES:-digits_cnn tumour_mlp neuron}; do
  (time timeout 120 $PY -m fastconv train "$example" --backend cuda --quiet --out "$OUT/train-$example") \
    >"$OUT/train-$example.log" 2>&1
  echo "$example: exit $?"; grep -v "^$" "$OUT/train-$example.log" | tail -14
done
}

stage "benchmarks"
timeout 240 $PY benchmarks/run.py --device cuda --only "${ONLY:-dense,activations,conv,pool,losses,optim,train_step}" \
  --out "$OUT" --name "$NAME" 2>&1 | tee "$OUT/bench.log"

stage "the training step, op by op"
for variant in ${VARIANTS-current}; do  # VARIANTS="current no-split-k slices64": the A/B of 2026-11-26
  extra=$([ "$variant" = current ] && echo --profile)
  timeout 90 $PY benchmarks/gpu_step_breakdown.py --variant "$variant" $extra 2>&1 | tee -a "$OUT/breakdown.log"
done

[ -n "${SKIP_MEMCHECK:-}" ] || {
stage "memcheck over the kernel tests (small shapes)"
timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -m cuda -p no:cacheprovider -x \
  ${MEMCHECK_TESTS:-tests/test_dense.py tests/test_conv.py tests/test_pool.py tests/test_loss.py tests/test_optim.py tests/test_check.py} \
  -k "not bad and not Bad" >"$OUT/memcheck.log" 2>&1
echo "memcheck exit $? (9: an error was reported; 124: ran out of time)"; grep -m5 -E "Invalid|ERROR SUMMARY|passed|failed" "$OUT/memcheck.log"
}
if [ -n "${GEMM_SWEEP:-}" ]; then
  stage "GEMM plan sweep (tiles x K slices)"
  timeout 150 $PY benchmarks/gpu_gemm_sweep.py --json "$OUT/gemm-sweep.json" 2>&1 | tee "$OUT/gemm-sweep.log"
fi

if [ -n "${PROFILE:-}" ]; then
  stage "cross-entropy by row length, then kernels under Nsight Compute"
  timeout 60 $PY benchmarks/gpu_profile.py 2>&1 | tee "$OUT/profile.log"
  [ -z "${NCU:-}" ] || timeout 150 ncu --clock-control none --kernel-name regex:"softmax_cross_entropy_rows|gemm_kernel|copy" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis $PY benchmarks/gpu_profile.py --ncu >"$OUT/ncu.log" 2>&1; ncu_rc=$?
  [ -z "${NCU:-}" ] || echo "ncu exit $ncu_rc"; [ -z "${NCU:-}" ] || grep -E "^  [a-z_]+.*\(|Duration|Throughput|Achieved Occupancy|Registers Per|Stall" "$OUT/ncu.log" | head -60
fi

# The predecessors last (this tree's results come first if time runs out); the editable install
# above loses to PYTHONPATH. Each entry of BASES is DIR=FAMILIES (e.g. ".scratch/base=dense,conv .scratch/variant=losses").
for entry in ${BASES:-}; do
  BASE=$(realpath "${entry%%=*}"); ONLY_BASE=${entry#*=}; TAG=$(basename "$BASE")
  stage "base $TAG: build $BASE in place, then $ONLY_BASE (and the step breakdown with train_step)"
  # (an older setup.py left _cuda in build/ on an in-place build: copy it beside _emu)
  if (cd "$BASE" && CUDAARCHS=90 FASTCONV_CUDA=ON timeout 180 $PY setup.py -q build_ext --inplace \
        && cp -f build/lib*/fastconv/_cuda*.so fastconv/) >"$OUT/$TAG-build.log" 2>&1; then
    (cd /tmp && PYTHONPATH="$BASE" $PY -c "import fastconv, fastconv._cuda; print('base fastconv from', fastconv.__file__)")
    PYTHONPATH="$BASE" timeout 200 $PY benchmarks/run.py --device cuda --only "$ONLY_BASE" \
      --out "$OUT" --name "$TAG-$NAME" 2>&1 | tee "$OUT/$TAG-bench.log"
    case ",$ONLY_BASE," in *,train_step,*)
      PYTHONPATH="$BASE" timeout 60 $PY benchmarks/gpu_step_breakdown.py 2>&1 | tee "$OUT/$TAG-breakdown.log";; esac
  else
    tail -20 "$OUT/$TAG-build.log"; echo "BASE $TAG BUILD FAILED (going on)"
  fi
done

# The device tool brings back at most 8 files: everything goes back as one archive.
(cd "$OUT" && tar czf session.tgz --remove-files $(ls | grep -v '^session.tgz$')) && ls -la "$OUT"
echo "done $(date +%T)"
