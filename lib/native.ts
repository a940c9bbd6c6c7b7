/**
 * Loads the native addon and describes its raw (unvalidated) interface.
 * Everything here is private to moekit: the public classes in this folder
 * validate arguments before calling into it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { checkEnvironment } from './env';
import { MoekitError } from './errors';

/** Raw handle of a native tensor (native/tensor.cc). */
export interface RawTensor {
  readonly dtype: number;
  readonly shape: number[];
  readonly device: string;
  readonly disposed: boolean;
  dispose(): void;
  readSync(asFloat32: boolean): Float32Array | Uint16Array | Int32Array | BigInt64Array;
  read(asFloat32: boolean): Promise<Float32Array | Uint16Array | Int32Array | BigInt64Array>;
  to(deviceKind: number, deviceIndex: number): Promise<RawTensor>;
}

/** What runtime() in native/addon.cc returns. */
export interface RawRuntime {
  compiledWithCuda: boolean;
  cudaDriverVersion: number;
  cudaRuntimeVersion: number;
  cudaUnavailableReason: string | null;
  devices: { index: number; name: string; computeCapability: string; memoryBytes: number; multiprocessors: number }[];
  cpuThreads: number;
  cpuIsa: string;
}

/** The addon's exports. Op functions take a params object built by lib/ops.ts. */
export interface NativeBinding {
  NativeTensor: {
    fromArray(view: ArrayBufferView, dtype: number, shape: number[]): RawTensor;
    empty(dtype: number, shape: number[], deviceKind: number, deviceIndex: number): RawTensor;
    prototype: RawTensor;
  };
  setErrorClass(cls: typeof MoekitError): void;
  runtime(): RawRuntime;
  deviceMemory(index: number): { freeBytes: number; totalBytes: number; poolUsedBytes: number; poolReservedBytes: number; graphUsedBytes: number; graphReservedBytes: number };
  [op: string]: unknown;
}

/** The package root (works from lib/ under ts-jest and from dist/ when installed). */
export const packageRoot = path.resolve(__dirname, '..');

let binding: NativeBinding | undefined;

/**
 * The loaded addon; loads it on first use. Throws MoekitError ERR_LOAD with fixes when it
 * cannot, and ERR_INVALID_ARGUMENT when a MOEKIT_* variable the native side reads has a
 * value it does not understand (env.ts).
 */
export function native(): NativeBinding {
  if (binding === undefined) {
    checkEnvironment();
    binding = load();
    binding.setErrorClass(MoekitError);
  }
  return binding;
}

function load(): NativeBinding {
  const override = process.env.MOEKIT_BINARY;
  if (override) {
    try {
      return require(path.resolve(override)) as NativeBinding;
    } catch (err) {
      throw new MoekitError(`Could not load the moekit binary named by MOEKIT_BINARY (${override}): ${(err as Error).message}`, 'ERR_LOAD');
    }
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => NativeBinding;
    return nodeGypBuild(packageRoot);
  } catch (err) {
    throw new MoekitError(explainLoadFailure(err as Error), 'ERR_LOAD');
  }
}

/** A message listing what was tried and concrete fixes. Exported for tests. */
export function explainLoadFailure(err: Error): string {
  const tried: string[] = [];
  for (const dir of ['build/Release', 'build/Debug']) {
    const file = path.join(packageRoot, dir, 'moekit.node');
    tried.push(`${file} (${fs.existsSync(file) ? 'present, failed to load' : 'absent'})`);
  }
  const prebuildDir = path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
  const prebuilds = fs.existsSync(prebuildDir) ? fs.readdirSync(prebuildDir).filter((f) => f.endsWith('.node')) : [];
  tried.push(
    prebuilds.length > 0
      ? `${prebuildDir}: ${prebuilds.join(', ')} (present; none loaded)`
      : `${prebuildDir} (no prebuilt binary for ${process.platform}-${process.arch})`,
  );
  const report = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  const glibc = report?.glibcVersionRuntime;
  const fixes = [
    `Prebuilt binaries are for Linux x64 with glibc >= 2.34${glibc ? ` (this system has glibc ${glibc})` : ' (this system does not report glibc: musl/Alpine needs a source build)'}.`,
    'Rebuild from source in the package directory: `npm rebuild moekit` (needs python3, make and a C++17 compiler; builds the CPU backend).',
    'In a clone of the repository: `npm install` (or `npm run rebuild`) builds build/Release/moekit.node with cmake-js, with CUDA when nvcc is found.',
    'Point MOEKIT_BINARY at a moekit.node built elsewhere.',
  ];
  return [
    `moekit could not load its native binary: ${err.message.split('\n')[0]}`,
    'Tried:',
    ...tried.map((t) => `  - ${t}`),
    'Fixes:',
    ...fixes.map((f) => `  - ${f}`),
  ].join('\n');
}
