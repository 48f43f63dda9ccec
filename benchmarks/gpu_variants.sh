#!/usr/bin/env bash
# A same-card A/B of kernel variants that differ in one source file, cheap enough for one lease:
# this tree is built once (pip, as gpu_session.sh does, and beside it a CMake build of _cuda alone);
# then each variant's copy of FILE replaces the tree's, only the units that include it recompile
# (seconds for sm_90, where a whole build takes over a minute), and the module goes into that
# variant's own copy of the package. TIME then runs on each variant in turn (PYTHONPATH picks the
# copy; the editable install loses to it), interleaved over ROUNDS so that drift hits them alike,
# and a table of the medians closes the output. FILE is restored at the end.
#
#   FILE=csrc/kernels/loss.cuh VARIANTS="base=.ab/base.cuh wide=.ab/wide.cuh" \
#   TIME="benchmarks/gpu_profile.py --all-rows" ROUNDS=2 bash benchmarks/gpu_variants.sh
#
# The tree itself is the variant "tree". TIME must accept --json PATH and write {case: rate} there
# (higher is better). Variant files live in an ignored folder that the device tool carries. CHECK, if
# set, is run by python on every variant after the timings, from /tmp so that the tree's own package
# is not on the path: give files by absolute path (CHECK="-m pytest -q -m cuda $PWD/tests/test_loss.py").
# Logs and results go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu-variants}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3
: "${FILE:?FILE names the source file the variants replace}" "${TIME:?TIME is the timing script and its arguments}"
ROUNDS=${ROUNDS:-2}
stage() { echo; echo "== $1 ($(date +%T), ${SECONDS}s)"; }
cp "$FILE" "$OUT/tree-file" || exit 1
trap 'cp "$OUT/tree-file" "$FILE"' EXIT  # the tree's own file back, however the script ends

stage "build the tree (pip) and _cuda alone (CMake, for the variants), side by side"
(time CUDAARCHS=90 FASTCONV_CUDA=ON timeout 240 $PY -m pip install --no-build-isolation --no-deps -e .) \
  >"$OUT/build.log" 2>&1 &
pip_pid=$!
BUILD=/tmp/variants-build
(cmake -S . -B "$BUILD" -GNinja -DCMAKE_BUILD_TYPE=Release -DFASTCONV_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
   -DPython_EXECUTABLE="$(command -v $PY)" -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" \
   -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$BUILD/module" && time timeout 240 cmake --build "$BUILD" --target _cuda) \
  >"$OUT/cmake.log" 2>&1
cmake_rc=$?
wait $pip_pid; pip_rc=$?
tail -3 "$OUT/build.log"; tail -3 "$OUT/cmake.log"
[ $pip_rc -eq 0 ] && [ $cmake_rc -eq 0 ] || { echo "BUILD FAILED (pip $pip_rc, cmake $cmake_rc)"; exit 1; }

stage "the variants, one unit rebuilt each"
names=()
for entry in tree ${VARIANTS:-}; do
  name=${entry%%=*}
  if [ "$name" != tree ] && ! cp "${entry#*=}" "$FILE"; then echo "$name: no file ${entry#*=} (left out)"; continue; fi
  if (time timeout 120 cmake --build "$BUILD" --target _cuda) >"$OUT/build-$name.log" 2>&1; then
    rm -rf "/tmp/variants/$name"; mkdir -p "/tmp/variants/$name"
    cp -r fastconv "/tmp/variants/$name/" && rm -f /tmp/variants/$name/fastconv/_cuda*.so
    cp "$BUILD"/module/_cuda*.so "/tmp/variants/$name/fastconv/"
    names+=("$name"); echo "$name: built ($(grep real "$OUT/build-$name.log"));" \
      "imports $(cd /tmp && PYTHONPATH="/tmp/variants/$name" $PY -c 'import fastconv._cuda as m; print(m.__file__)')"
  else
    tail -20 "$OUT/build-$name.log"; echo "$name: BUILD FAILED (left out)"
  fi
done
[ ${#names[@]} -gt 0 ] || { echo "no variant built"; exit 1; }

stage "timings: ${names[*]} x $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${names[@]}"; do
    echo "-- $name, round $round"
    if PYTHONPATH="/tmp/variants/$name" timeout 120 $PY $TIME --json "$OUT/ab-$name-round$round.json" \
         >"$OUT/time-$name-$round.log" 2>&1; then
      tail -n +2 "$OUT/time-$name-$round.log"
    else
      echo "$name round $round: exit $? (left out)"; tail -5 "$OUT/time-$name-$round.log"
    fi
  done
done

stage "medians (rate; ratio to tree)"
$PY - "$OUT" "${names[@]}" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
rates = {n: [json.loads(p.read_text()) for p in sorted(out.glob(f"ab-{n}-round*.json"))] for n in names}
cases = list(dict.fromkeys(case for runs in rates.values() for run in runs for case in run))
print(f"{'case':>14s} " + " ".join(f"{n:>16s}" for n in names))
for case in cases:
    med = {n: statistics.median(r[case] for r in rates[n] if case in r) for n in names
           if any(case in r for r in rates[n])}
    base = med.get("tree")
    print(f"{case:>14s} " + " ".join(f"{med[n]:8.1f} ({med[n] / base:4.2f})" if base else f"{med[n]:16.1f}"
                                      for n in names if n in med))
EOF

if [ -n "${CHECK:-}" ]; then
  stage "check on every variant: $CHECK"
  for name in "${names[@]}"; do
    (cd /tmp && PYTHONPATH="/tmp/variants/$name" timeout 120 $PY $CHECK) >"$OUT/check-$name.log" 2>&1
    echo "$name: exit $? ($(tail -1 "$OUT/check-$name.log"))"
  done
fi
echo "done $(date +%T), ${SECONDS}s"
