#!/usr/bin/env bash
# Runs the CPU test suite against a build with AddressSanitizer and UBSan.
#
#   bash scripts/asan.sh [jest args…]     (every CPU test but the package, GPU and RSS tests;
#                                          extra args go to jest, e.g. a test path or --json)
#
# Builds build-asan/Release/moekit.node (CPU backend only) with cmake-js, then runs jest
# with the sanitizer runtime preloaded into node and MOEKIT_BINARY pointing at that build.
# Leak detection is off: Node itself does not free everything at exit; the RSS test in
# test/reliability/leaks.test.ts covers moekit's own leaks. Any ASan/UBSan report fails
# the run (halt_on_error), printed with the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
export npm_config_nodedir="${npm_config_nodedir:-/usr}"
npx cmake-js compile --out build-asan --CDMOEKIT_CUDA=OFF --CDMOEKIT_SANITIZE=ON >/dev/null
asan_lib=$(g++ -print-file-name=libasan.so)
ubsan_lib=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan_lib $ubsan_lib"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87"
export MOEKIT_BINARY="$PWD/build-asan/Release/moekit.node"
export MOEKIT_FUZZ_CALLS="${MOEKIT_FUZZ_CALLS:-10000}"
# NOTE: the ignore patterns come last: the option takes every word after it.
exec node node_modules/.bin/jest --runInBand "$@" --testPathIgnorePatterns 'package.test' 'test/gpu' 'leaks.test'
