#!/usr/bin/env node
// npm "install" script.
// - In a clone of the repository (CMakeLists.txt and cmake-js present): build
//   build/Release/moekit.node with cmake-js, with the CUDA backend when nvcc is found.
// - In an installed package: node-gyp-build, which uses the prebuilt binary that fits
//   this platform and otherwise compiles the CPU backend from binding.gyp.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  if (r.error) {
    console.error(`moekit: could not run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status === null ? 1 : r.status);
}

function resolveFrom(id) {
  try {
    return require.resolve(id, { paths: [root] });
  } catch {
    return null;
  }
}

const cmakeJs = resolveFrom('cmake-js/bin/cmake-js');
if (fs.existsSync(path.join(root, 'CMakeLists.txt')) && cmakeJs) {
  if (process.env.MOEKIT_SKIP_BUILD === '1') {
    console.log('moekit: MOEKIT_SKIP_BUILD=1, not building the native addon');
    process.exit(0);
  }
  run(process.execPath, [cmakeJs, 'compile', '--out', 'build']);
} else {
  const gypBuild = resolveFrom('node-gyp-build/bin.js');
  if (!gypBuild) {
    console.error('moekit: node-gyp-build is missing; reinstall the package');
    process.exit(1);
  }
  run(process.execPath, [gypBuild]);
}
