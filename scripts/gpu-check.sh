#!/usr/bin/env bash
# Everything a lent GPU machine should run, in two calls of under 10 minutes (MOEKIT_STEPS below;
# see docs/ARCHITECTURE.md, "Checks outside npm test"):
#
#   here:   npm install && npm run prepare && bash ../shared/device/stage.sh build/Release dist prebuilds
#   there:  MOEKIT_STEPS="tests bench offload" bash .device/run.sh bash scripts/gpu-check.sh   (carry [".device"])
#           MOEKIT_STEPS="ncu memcheck" bash .device/run.sh bash scripts/gpu-check.sh
#
# 1. test/gpu (every op and layer against the CPU backend, graphs, device memory) -> $OUT/gpu-tests.json
# 2. `moekit bench` on the presets, bf16, whole layer -> $OUT/bench.json, $OUT/bench.svg
# 2b. `moekit bench offload` (Mixtral, cache fraction 0.25, lfru, no prefetch and layerwise) -> $OUT/offload.txt
# 3. ncu counters of the grouped GEMM kernels at mixtral T = 4096 -> $OUT/ncu.txt 
# 4. compute-sanitizer memcheck over the op/layer/graph GPU tests at small sizes -> $OUT/memcheck.log
# 5. "wgmma" (not in the default set; the Hopper grouped GEMM is opt-in until this passes):
#    with MOEKIT_WGMMA=require, scripts/gpu-wgmma-diag.js (exact-valued inputs that name the
#    element behind each output) -> $OUT/wgmma-diag.txt, test/gpu/wgmma.test.ts + the layer tests -> $OUT/wgmma-tests.{json,log},
#    the layer bench at prefill sizes -> $OUT/bench-wgmma.{txt,json}, and wgmma.test.ts under
#    memcheck -> $OUT/memcheck-wgmma.log. Run it on its own: MOEKIT_STEPS="wgmma".
# 5b. "wgmma-tma" (not in the default set; after "wgmma" passes): the same kernel fed by TMA,
#    MOEKIT_WGMMA_TMA=1 (thread 0) and =ws (producer warpgroup): for each, diag
#    -> $OUT/tma-F-diag.txt and wgmma.test.ts -> $OUT/tma-F-tests.{json,log}; the GEMM bench at
#    T = 1024..16384 with cp.async, 1 and ws, and `bench compare` against cp.async
#    -> $OUT/compare-tma-F.txt (limits sum to 495 s). "wgmma-tma-memcheck": wgmma.test.ts
#    under memcheck for both -> $OUT/memcheck-tma-F.log (300 s).
# 6. "optin" (not in the default set): the three opt-in changes of 2026-11-23, the 3..16-row
#    tensor-core kernel (MOEKIT_SKINNY), 3 weight stages in the 64-row tiles
#    (MOEKIT_TC_STAGES=3) and shared experts on a side stream (MOEKIT_CONCURRENT_SHARED=1):
#    test/gpu/skinny.test.ts with MOEKIT_SKINNY=require (its mixed shapes also run 64-row
#    tiles) -> $OUT/skinny-tests.{json,log}, the op, layer and graph GPU tests with all three
#    on (small sizes) -> $OUT/skinny-suite.{json,log}, the layer + GEMM bench at T = 1, 16, 128
#    with both off and on, and T = 128, 1024 with MOEKIT_TC_STAGES=3 alone -> $OUT/bench-skinny-{off,on,tc3}.txt,
#    and skinny.test.ts + profile.test.ts under memcheck with all three on
#    -> $OUT/memcheck-skinny.log. Run it on its own: MOEKIT_STEPS="optin".
# Each step has its own time limit (MOEKIT_T_TESTS, MOEKIT_T_BENCH, MOEKIT_T_OFFLOAD, MOEKIT_T_NCU,
# MOEKIT_T_MEMCHECK, MOEKIT_T_WGMMA_*, MOEKIT_T_TMA_*, MOEKIT_T_SKINNY_*);
# on an H100 (2026-11-22) the layer bench took about 70 s.
# Prints a short summary last. Each step runs even if an earlier one failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/moekit-gpu-check}"
mkdir -p "$OUT"
export PATH="/usr/local/cuda/bin:$PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
summary=()
# MOEKIT_STEPS picks steps (default all); a lent machine allows 10 minutes a call, so split
# the full set over two calls: MOEKIT_STEPS="tests bench offload", then MOEKIT_STEPS="ncu memcheck".
steps=" ${MOEKIT_STEPS:-tests bench offload ncu memcheck} "
want() { [[ "$steps" == *" $1 "* ]]; }
# Counts and failures of a jest --json report, briefly.
jest_counts() { node -e "const r=require('$1');console.log(r.numPassedTests+' passed, '+r.numFailedTests+' failed, '+r.numPendingTests+' skipped')" 2>/dev/null || echo 'no results'; }
jest_failures() {
  node -e "
const r=require('$1');
for (const f of r.testResults) { if (f.status!=='passed' && f.assertionResults.length===0) console.log('SUITE FAIL', f.name, String(f.message).slice(0,600));
  for (const a of f.assertionResults) if (a.status==='failed') console.log('FAIL', a.fullName, '::', a.failureMessages.join(' ').replace(/\\s+/g,' ').slice(0,400)); }
" 2>/dev/null | head -c "${2:-3000}"
}

if want tests; then
  timeout -k 5 "${MOEKIT_T_TESTS:-300}" node node_modules/.bin/jest --runInBand --testTimeout=150000 test/gpu --json --outputFile="$OUT/gpu-tests.json" > "$OUT/gpu-tests.log" 2>&1
  summary+=("test/gpu: exit $? ($(jest_counts "$OUT/gpu-tests.json"))")
fi

if want bench && [ -f dist/cli.js ]; then
  timeout -k 5 "${MOEKIT_T_BENCH:-100}" node dist/cli.js bench --device cuda --dtype bf16 ${MOEKIT_BENCH_ARGS:---op layer --preset mixtral-8x7b,qwen3-30b-a3b,olmoe-1b-7b,deepseek-v3 --tokens 1,16,128,1024,4096,16384} --json "$OUT/bench.json" --svg "$OUT/bench.svg" --anchors bench/anchors-h100.json > "$OUT/bench.txt" 2>&1
  summary+=("bench: exit $? (table in bench.txt)")
fi

# Expert offload on the GPU (issue 7): Mixtral, a quarter of each layer's experts cached,
# decode; routing from MOEKIT_OFFLOAD_TRACE (a trace carried along) or uniform -> $OUT/offload.txt
if want offload && [ -f dist/cli.js ]; then
  trace_args=()
  [ -n "${MOEKIT_OFFLOAD_TRACE:-}" ] && trace_args=(--trace "$MOEKIT_OFFLOAD_TRACE")
  for pf in none layerwise; do
    timeout -k 5 "${MOEKIT_T_OFFLOAD:-90}" node dist/cli.js bench offload --device cuda --preset mixtral-8x7b --cache-fraction 0.25 \
      --policy lfru --prefetch "$pf" --layers 4 --tokens 64 "${trace_args[@]}" >> "$OUT/offload.txt" 2>&1
    summary+=("bench offload ($pf): exit $?")
  done
fi

# Hardware counters of the grouped GEMM at prefill (the largest gap to the anchors; see
# docs/BENCHMARKS.md): speed of light, memory, occupancy, warp stalls -> $OUT/ncu.txt
if want ncu && command -v ncu > /dev/null && [ -f dist/cli.js ]; then
  timeout -k 5 "${MOEKIT_T_NCU:-150}" ncu --target-processes all -k regex:gemm --launch-skip 2 --launch-count 4 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats --section ComputeWorkloadAnalysis \
    node dist/cli.js bench --device cuda --dtype bf16 --op gemm --preset mixtral-8x7b --tokens 4096 --warmup 1 --repeats 1 --no-graph \
    > "$OUT/ncu.txt" 2>&1
  summary+=("ncu: exit $? (ncu.txt)")
fi

if want memcheck && command -v compute-sanitizer > /dev/null; then
  MOEKIT_GPU_QUICK=1 timeout -k 5 "${MOEKIT_T_MEMCHECK:-140}" compute-sanitizer --tool memcheck --target-processes all --error-exitcode 99 \
    node node_modules/.bin/jest --runInBand ${MOEKIT_MEMCHECK_FILES:-test/gpu/ops.test.ts test/gpu/layer.test.ts test/gpu/profile.test.ts} > "$OUT/memcheck.log" 2>&1
  summary+=("memcheck: exit $? ($(grep -c 'Invalid\|Error' "$OUT/memcheck.log") lines naming errors; see memcheck.log)")
elif want memcheck; then
  summary+=("memcheck: compute-sanitizer not found")
fi

# The Hopper wgmma grouped GEMM (kernels/cuda/grouped_gemm_sm90.cu). MOEKIT_WGMMA=require turns
# any fallback to the mma.sync kernel into an error, so what passes is the wgmma kernel.
if want wgmma; then
  # Exact-valued inputs first: a layout error shows as a pattern (scripts/gpu-wgmma-diag.js).
  MOEKIT_WGMMA=require timeout -k 5 "${MOEKIT_T_WGMMA_DIAG:-60}" node scripts/gpu-wgmma-diag.js > "$OUT/wgmma-diag.txt" 2>&1
  summary+=("wgmma diag: exit $? ($(tail -n 1 "$OUT/wgmma-diag.txt"))")
  MOEKIT_WGMMA=require timeout -k 5 "${MOEKIT_T_WGMMA_TESTS:-200}" node node_modules/.bin/jest --runInBand --testTimeout=150000 \
    test/gpu/wgmma.test.ts test/gpu/layer.test.ts --json --outputFile="$OUT/wgmma-tests.json" > "$OUT/wgmma-tests.log" 2>&1
  summary+=("wgmma tests: exit $? ($(jest_counts "$OUT/wgmma-tests.json"))")
  if [ -f dist/cli.js ]; then
    MOEKIT_WGMMA=require timeout -k 5 "${MOEKIT_T_WGMMA_BENCH:-130}" node dist/cli.js bench --device cuda --dtype bf16 --op all \
      --preset mixtral-8x7b,qwen3-30b-a3b,olmoe-1b-7b,deepseek-v3 --tokens 1024,4096,16384 \
      --json "$OUT/bench-wgmma.json" --anchors bench/anchors-h100.json > "$OUT/bench-wgmma.txt" 2>&1
    summary+=("wgmma bench: exit $? (bench-wgmma.txt)")
  fi
  if command -v compute-sanitizer > /dev/null; then
    MOEKIT_WGMMA=require timeout -k 5 "${MOEKIT_T_WGMMA_MEMCHECK:-120}" compute-sanitizer --tool memcheck --target-processes all --error-exitcode 99 \
      node node_modules/.bin/jest --runInBand test/gpu/wgmma.test.ts > "$OUT/memcheck-wgmma.log" 2>&1
    summary+=("wgmma memcheck: exit $? ($(grep -c 'Invalid\|Error' "$OUT/memcheck-wgmma.log") lines naming errors)")
  fi
  cat "$OUT/wgmma-diag.txt"
  tail -n 60 "$OUT/bench-wgmma.txt" 2>/dev/null
  jest_failures "$OUT/wgmma-tests.json" 4000
fi

# The wgmma kernel fed by TMA (MOEKIT_WGMMA_TMA=1: from thread 0; =ws: from a producer
# warpgroup; see the file comment of grouped_gemm_sm90.cu), after "wgmma" has passed: for
# each feed the same diagnosis and tests, then the GEMM bench at prefill sizes with each feed
# and `bench compare` against cp.async. A wait on tile 0's TMA barrier that never
# completes traps after 10 s (a CUDA error in the test), so a byte-count error cannot hang
# the call. "wgmma-tma-memcheck" runs wgmma.test.ts under memcheck for both.
if want wgmma-tma; then
  for f in 1 ws; do
    MOEKIT_WGMMA=require MOEKIT_WGMMA_TMA=$f timeout -k 5 "${MOEKIT_T_TMA_DIAG:-45}" node scripts/gpu-wgmma-diag.js > "$OUT/tma-$f-diag.txt" 2>&1
    summary+=("tma=$f diag: exit $? ($(tail -n 1 "$OUT/tma-$f-diag.txt"))")
    MOEKIT_WGMMA=require MOEKIT_WGMMA_TMA=$f timeout -k 5 "${MOEKIT_T_TMA_TESTS:-120}" node node_modules/.bin/jest --runInBand --testTimeout=100000 \
      test/gpu/wgmma.test.ts --json --outputFile="$OUT/tma-$f-tests.json" > "$OUT/tma-$f-tests.log" 2>&1
    summary+=("tma=$f tests: exit $? ($(jest_counts "$OUT/tma-$f-tests.json"))")
  done
  if [ -f dist/cli.js ]; then
    for f in 0 1 ws; do
      MOEKIT_WGMMA=require MOEKIT_WGMMA_TMA=$f timeout -k 5 "${MOEKIT_T_TMA_BENCH:-55}" node dist/cli.js bench --device cuda --dtype bf16 --op gemm \
        --preset mixtral-8x7b,qwen3-30b-a3b,olmoe-1b-7b --tokens 1024,4096,16384 --repeats 10 \
        --json "$OUT/bench-tma-$f.json" > "$OUT/bench-tma-$f.txt" 2>&1
      summary+=("tma=$f bench: exit $?")
    done
    for f in 1 ws; do
      node dist/cli.js bench compare "$OUT/bench-tma-0.json" "$OUT/bench-tma-$f.json" > "$OUT/compare-tma-$f.txt" 2>&1
      summary+=("tma=$f compare with cp.async: exit $? (compare-tma-$f.txt)")
    done
  fi
  for f in 1 ws; do
    cat "$OUT/tma-$f-diag.txt"
    cat "$OUT/compare-tma-$f.txt" 2>/dev/null
    jest_failures "$OUT/tma-$f-tests.json" 3000
  done
fi
if want wgmma-tma-memcheck && command -v compute-sanitizer > /dev/null; then
  for f in 1 ws; do
    MOEKIT_WGMMA=require MOEKIT_WGMMA_TMA=$f timeout -k 5 "${MOEKIT_T_TMA_MEMCHECK:-150}" compute-sanitizer --tool memcheck --target-processes all --error-exitcode 99 \
      node node_modules/.bin/jest --runInBand test/gpu/wgmma.test.ts > "$OUT/memcheck-tma-$f.log" 2>&1
    summary+=("tma=$f memcheck: exit $? ($(grep -c 'Invalid\|Error' "$OUT/memcheck-tma-$f.log") lines naming errors)")
  done
elif want wgmma-tma-memcheck; then
  summary+=("wgmma-tma-memcheck: compute-sanitizer not found")
fi

# The small-batch grouped GEMM changes: the skinny kernel (kernels/cuda/grouped_gemm_skinny.cu,
# experts with 3..16 rows on tensor cores; MOEKIT_SKINNY=require makes every decline an error,
# so what passes is that kernel) and 3 weight stages in gemm_tc_kernel's 64-row tiles.
if want optin; then
  MOEKIT_SKINNY=require MOEKIT_TC_STAGES=3 timeout -k 5 "${MOEKIT_T_SKINNY_TESTS:-90}" node node_modules/.bin/jest --runInBand --testTimeout=80000 \
    test/gpu/skinny.test.ts --json --outputFile="$OUT/skinny-tests.json" > "$OUT/skinny-tests.log" 2>&1
  summary+=("skinny tests: exit $? ($(jest_counts "$OUT/skinny-tests.json"))")
  MOEKIT_SKINNY=1 MOEKIT_TC_STAGES=3 MOEKIT_CONCURRENT_SHARED=1 MOEKIT_GPU_QUICK=1 timeout -k 5 "${MOEKIT_T_SKINNY_SUITE:-140}" node node_modules/.bin/jest --runInBand --testTimeout=140000 \
    test/gpu/ops.test.ts test/gpu/layer.test.ts test/gpu/profile.test.ts --json --outputFile="$OUT/skinny-suite.json" > "$OUT/skinny-suite.log" 2>&1
  summary+=("ops + layer + profile tests with all three opt-ins: exit $? ($(jest_counts "$OUT/skinny-suite.json"))")
  if [ -f dist/cli.js ]; then
    # off: none; on: all three (deepseek-v3 T = 1 isolates the side stream: one row per expert,
    # no 3..16-row experts); tc3: the third weight stage alone, where the 64-row tiles run.
    for mode in off on tc3; do
      case "$mode" in
        off) envs=(-u MOEKIT_SKINNY -u MOEKIT_TC_STAGES -u MOEKIT_CONCURRENT_SHARED); tokens=1,16,128 ;;
        on) envs=(MOEKIT_SKINNY=1 MOEKIT_TC_STAGES=3 MOEKIT_CONCURRENT_SHARED=1); tokens=1,16,128 ;;
        tc3) envs=(-u MOEKIT_SKINNY -u MOEKIT_CONCURRENT_SHARED MOEKIT_TC_STAGES=3); tokens=128,1024 ;;
      esac
      env "${envs[@]}" timeout -k 5 "${MOEKIT_T_SKINNY_BENCH:-55}" node dist/cli.js bench --device cuda --dtype bf16 \
        --op layer,gemm --preset mixtral-8x7b,qwen3-30b-a3b,olmoe-1b-7b,deepseek-v3 --tokens "$tokens" \
        --json "$OUT/bench-skinny-$mode.json" --anchors bench/anchors-h100.json > "$OUT/bench-skinny-$mode.txt" 2>&1
      summary+=("skinny bench ($mode): exit $? (bench-skinny-$mode.txt)")
    done
  fi
  if command -v compute-sanitizer > /dev/null; then
    # skinny.test.ts (its 64-row tiles with the third stage) and the graph tests (a shared-expert
    # layer captured, replayed and run eagerly with the side stream).
    MOEKIT_SKINNY=require MOEKIT_TC_STAGES=3 MOEKIT_CONCURRENT_SHARED=1 MOEKIT_GPU_QUICK=1 timeout -k 5 "${MOEKIT_T_SKINNY_MEMCHECK:-150}" \
      compute-sanitizer --tool memcheck --target-processes all --error-exitcode 99 \
      node node_modules/.bin/jest --runInBand --testTimeout=140000 test/gpu/skinny.test.ts test/gpu/profile.test.ts > "$OUT/memcheck-skinny.log" 2>&1
    summary+=("skinny memcheck: exit $? ($(grep -c 'Invalid\|Error' "$OUT/memcheck-skinny.log") lines naming errors)")
  fi
  jest_failures "$OUT/skinny-tests.json"
  jest_failures "$OUT/skinny-suite.json"
  tail -n 30 "$OUT/bench-skinny-off.txt" "$OUT/bench-skinny-on.txt" "$OUT/bench-skinny-tc3.txt" 2>/dev/null
  # The decision: cell by cell, off -> on and off -> third stage alone (T = 128 overlaps).
  node dist/cli.js bench compare "$OUT/bench-skinny-off.json" "$OUT/bench-skinny-on.json" > "$OUT/compare-on.txt" 2>&1
  node dist/cli.js bench compare "$OUT/bench-skinny-off.json" "$OUT/bench-skinny-tc3.json" > "$OUT/compare-tc3.txt" 2>&1
  cat "$OUT/compare-on.txt" "$OUT/compare-tc3.txt"
fi

tail -n 40 "$OUT/bench.txt" 2>/dev/null
tail -n 30 "$OUT/offload.txt" 2>/dev/null
# failing GPU tests, briefly (full messages in gpu-tests.json / gpu-tests.log)
want tests && jest_failures "$OUT/gpu-tests.json" 6000
grep -m 20 -B2 -A8 'Invalid\|========= Error\|ERROR SUMMARY' "$OUT/memcheck.log" 2>/dev/null | head -c 3000
printf '%s\n' "${summary[@]}"
