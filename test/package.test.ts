/**
 * The packed package installs offline with no compiler on PATH, loads its prebuilt
 * binary and runs a forward on the CPU. Builds the prebuild with `npm run prebuild`
 * in a scratch copy of the repository so the working tree's build/ is untouched.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.resolve(__dirname, '..');
const SKIP = new Set(['node_modules', 'build', 'prebuilds', 'dist', '.git', '.device', 'coverage']);

function copyTree(src: string, dst: string): void {
  fs.mkdirSync(dst, { recursive: true });
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    if (SKIP.has(entry.name) || entry.name.endsWith('.tgz')) continue;
    const s = path.join(src, entry.name);
    const d = path.join(dst, entry.name);
    if (entry.isDirectory()) copyTree(s, d);
    else if (entry.isFile()) fs.copyFileSync(s, d);
  }
}

/** A PATH holding node and npm only: no cc, c++, nvcc, cmake, make or python. */
function compilerFreePath(dir: string): string {
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh')); // npm runs lifecycle scripts with sh
  const npmCli = fs.realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
  fs.writeFileSync(path.join(bin, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${npmCli}" "$@"\n`, { mode: 0o755 });
  return bin;
}

/** Absolute path of `unshare` when it can cut the network here (root in a user namespace), else null. */
function unshareNetwork(): string | null {
  const which = spawnSync('sh', ['-c', 'command -v unshare'], { encoding: 'utf8' });
  const bin = which.status === 0 ? which.stdout.trim() : '';
  return bin && spawnSync(bin, ['-n', 'true']).status === 0 ? bin : null;
}

const FORWARD_SCRIPT = `
  const moekit = require('moekit');
  const ngb = require('node-gyp-build');
  const T = 5, H = 16, I = 8, E = 4;
  const rnd = (n) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
  const layer = moekit.MoELayer.fromPreset('mixtral', { k: 2 }, { hidden: H, intermediate: I, experts: E }, {
    router: moekit.Tensor.from(rnd(E * H), [E, H]),
    gate: moekit.Tensor.from(rnd(E * I * H), [E, I, H], 'bf16'),
    up: moekit.Tensor.from(rnd(E * I * H), [E, I, H], 'bf16'),
    down: moekit.Tensor.from(rnd(E * H * I), [E, H, I], 'bf16'),
  });
  // Async reads: on a machine with a usable GPU, 'auto' puts the layer (and its output) there.
  layer.forward(moekit.Tensor.from(rnd(T * H), [T, H]), { returnRouting: true }).then(async ({ output, routing }) => {
    const y = await output.toFloat32();
    console.log(JSON.stringify({
      binary: ngb.resolve(require('path').dirname(require.resolve('moekit/package.json'))),
      shape: output.shape, finite: y.every(Number.isFinite), nonzero: y.some((v) => v !== 0),
      load: Array.from(await routing.load.toArray()), cuda: moekit.runtime().compiledWithCuda,
    }));
  });
`;

function runForward(consumer: string, env: NodeJS.ProcessEnv) {
  const run = spawnSync(process.execPath, ['-e', FORWARD_SCRIPT], { cwd: consumer, env, encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`running the installed package failed:\n${run.stdout}\n${run.stderr}`);
  const result = JSON.parse(run.stdout.trim());
  expect(result.shape).toEqual([5, 16]);
  expect(result.finite).toBe(true);
  expect(result.nonzero).toBe(true);
  expect(result.load.reduce((a: number, b: number) => a + b, 0)).toBe(10);
  return result as { binary: string; cuda: boolean };
}

/** `npm pack` of the package in `dir` into `dest`; returns the tarball's path. */
function pack(dir: string, dest: string, env: NodeJS.ProcessEnv, ignoreScripts: boolean): string {
  const args = ['pack', '--silent', ...(ignoreScripts ? ['--ignore-scripts'] : []), '--pack-destination', dest];
  const out = execFileSync('npm', args, { cwd: dir, env, encoding: 'utf8' });
  return path.join(dest, out.trim().split('\n').pop() as string);
}

function makeConsumer(scratch: string, name: string): string {
  const consumer = path.join(scratch, name);
  fs.mkdirSync(consumer);
  fs.writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name, version: '1.0.0', private: true }));
  return consumer;
}

describe('the packed package', () => {
  let scratch = '';
  let repo = '';
  let tarball = '';
  let depTarballs: string[] = [];
  const env = { ...process.env, npm_config_nodedir: process.env.npm_config_nodedir ?? '/usr' };

  beforeAll(() => {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-pack-'));
    repo = path.join(scratch, 'repo');
    copyTree(root, repo);
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(repo, 'node_modules'));
    execFileSync('npm', ['run', 'prebuild'], { cwd: repo, env, stdio: 'pipe' });
    const prebuilds = fs.readdirSync(path.join(repo, 'prebuilds', 'linux-x64'));
    expect(prebuilds.some((f) => f.endsWith('.node'))).toBe(true);
    // npm pack runs "prepare" (tsc → dist/).
    tarball = pack(repo, scratch, env, false);
    // NOTE: npm 11.19 resolves a dependency range from the registry's full document of the
    // package, which a lock-file install never caches, so an offline install of the tarball
    // alone fails on a fresh machine (ENOTCACHED). The dependencies go in beside it as
    // tarballs packed from node_modules (the versions the lock file chose), without scripts.
    const deps = Object.keys(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).dependencies ?? {});
    expect(deps.length).toBeGreaterThan(0);
    depTarballs = deps.map((dep) => pack(path.join(root, 'node_modules', dep), scratch, env, true));
  }, 900_000);

  afterAll(() => {
    if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
  });

  test('installs offline with no compiler on PATH, loads the prebuilt binary and runs a forward', () => {
    expect(fs.existsSync(tarball)).toBe(true);
    const consumer = makeConsumer(scratch, 'consumer');
    const bin = compilerFreePath(scratch);
    const cleanEnv: NodeJS.ProcessEnv = { HOME: process.env.HOME, PATH: bin, npm_config_cache: process.env.npm_config_cache };
    for (const tool of ['cc', 'c++', 'gcc', 'g++', 'nvcc', 'cmake', 'make']) expect(spawnSync('sh', ['-c', `command -v ${tool}`], { env: cleanEnv }).status).not.toBe(0);
    const installArgs = ['install', '--offline', '--no-audit', '--no-fund', tarball, ...depTarballs];
    // NOTE: --offline alone already forbids the registry; unshare -n also cuts the network.
    const unshare = unshareNetwork();
    const cmd = unshare ? [unshare, '-n', path.join(bin, 'npm'), ...installArgs] : [path.join(bin, 'npm'), ...installArgs];
    const inst = spawnSync(cmd[0], cmd.slice(1), { cwd: consumer, env: cleanEnv, encoding: 'utf8' });
    if (inst.status !== 0) throw new Error(`offline install failed (${inst.error?.message ?? `exit ${inst.status}`}):\n${inst.stdout}\n${inst.stderr}`);
    expect(fs.existsSync(path.join(consumer, 'node_modules', 'moekit', 'build'))).toBe(false);
    const result = runForward(consumer, cleanEnv);
    expect(result.binary).toMatch(/node_modules\/moekit\/prebuilds\/linux-x64\/.*\.node$/);
    // The prebuild was made by cmake-js with nvcc present, so it carries the CUDA backend.
    const hasNvcc = spawnSync('sh', ['-c', 'command -v nvcc || test -x /usr/local/cuda/bin/nvcc']).status === 0;
    if (hasNvcc) expect(result.cuda).toBe(true);
  }, 300_000);

  test('without a fitting prebuild, installing compiles the CPU backend from binding.gyp (node-gyp)', () => {
    // Same package minus prebuilds/: node-gyp-build falls back to a source build.
    const unpacked = path.join(scratch, 'noprebuild');
    fs.mkdirSync(unpacked);
    execFileSync('tar', ['-xzf', tarball, '-C', unpacked]);
    fs.rmSync(path.join(unpacked, 'package', 'prebuilds'), { recursive: true, force: true });
    const sourceTarball = pack(path.join(unpacked, 'package'), unpacked, env, true);
    const consumer = makeConsumer(scratch, 'source-consumer');
    const inst = spawnSync('npm', ['install', '--offline', '--no-audit', '--no-fund', sourceTarball, ...depTarballs], { cwd: consumer, env, encoding: 'utf8' });
    if (inst.status !== 0) throw new Error(`source install failed:\n${inst.stdout}\n${inst.stderr}`);
    const result = runForward(consumer, env);
    expect(result.binary).toMatch(/node_modules\/moekit\/build\/Release\/moekit\.node$/);
    expect(result.cuda).toBe(false);
  }, 900_000);
});
