#!/usr/bin/env node
// prebuildify runs "<node-gyp> rebuild [flags]" to build the binary it packages.
// This maps that call onto cmake-js, so prebuilds are built by CMakeLists.txt
// (CUDA backend included when nvcc is found) rather than binding.gyp.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
if (args[0] !== 'rebuild') {
  console.error(`prebuildify-cmake: unsupported command ${args.join(' ')}`);
  process.exit(1);
}
const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', '--out', 'build'], { cwd: root, stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
