#!/usr/bin/env bash
# Short diagnostic pass on a GPU machine: the step-by-step smoke check, then each
# test/gpu file on its own with its own time limit (a hang in one leaves the others).
# Usage there: bash .device/run.sh bash scripts/gpu-diag.sh [file-stem:seconds ...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/moekit-gpu-diag}"; mkdir -p "$OUT"
timeout -k 5 "${MOEKIT_T_SMOKE:-90}" node scripts/gpu-smoke.js 2>&1 | tee "$OUT/smoke.log" | grep -v '^  \.\.\. still' | tail -n 60
specs=("$@"); [ ${#specs[@]} -gt 0 ] || specs=(device:20 layer:120 profile:60 offload:50 leaks:50)
for spec in "${specs[@]}"; do
  f=${spec%%:*}; s=${spec##*:}
  rm -f "/tmp/r-$f.json"
  timeout -k 5 "$s" node node_modules/.bin/jest --runInBand --testTimeout=$((s * 1000)) "test/gpu/$f.test.ts" --json --outputFile="/tmp/r-$f.json" >> "$OUT/jest.log" 2>&1
  echo "== $f: exit $?"
  node -e "const r=require('/tmp/r-$f.json');console.log(r.numPassedTests+' passed, '+r.numFailedTests+' failed');for(const f of r.testResults){if(f.assertionResults.length===0&&f.message)console.log(f.message.slice(0,800));for(const a of f.assertionResults)if(a.status==='failed')console.log('FAIL',a.title,'::',a.failureMessages.join(' ').replace(/\s+/g,' ').slice(0,500))}" 2>/dev/null || echo "   (no results)"
done
