/**
 * safetensors checkpoints: the header is parsed here (it is small JSON); tensor data
 * is read by native code straight into native memory, so shards larger than a
 * JavaScript ArrayBuffer load fine. Sharded checkpoints go through
 * `model.safetensors.index.json`.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}}`,
 * then the data; offsets count from byte 8 + N. Tensors may be misaligned.
 */
import * as fs from 'fs';
import * as path from 'path';
import { DType, dtypeCode } from './dtype';
import { MoekitError, checkOneOf, checkOptions, typeError } from './errors';
import { RawTensor, native } from './native';
import { Tensor, checkTensor } from './tensor';

/** Element types a safetensors header may name. */
export const SAFETENSORS_DTYPES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, F8_E8M0: 1, F4: 0.5, F6_E2M3: 0.75, F6_E3M2: 0.75,
  I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, I64: 8, U64: 8, F64: 8, C64: 8,
};
/** The file dtypes moekit reads, and the moekit dtype of each. */
const READABLE: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
const FILE_DTYPE_OF: Record<string, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

/** Largest header moekit accepts (the reference implementation's limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor entry of a safetensors file. */
export interface TensorEntry {
  name: string;
  /** File dtype as the header writes it (`BF16`, `F32`, …). */
  dtype: string;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
  /** The file that holds it. */
  file: string;
}

function checkpointError(file: string, what: string): MoekitError {
  return new MoekitError(`${file}: ${what}`, 'ERR_CHECKPOINT');
}

/** One `.safetensors` file: its parsed, checked header. */
export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** Byte offset where tensor data starts (8 + header length). */
  readonly dataStart: number;

  private constructor(file: string, metadata: Record<string, string>, tensors: Map<string, TensorEntry>, dataStart: number) {
    this.path = file;
    this.metadata = metadata;
    this.tensors = tensors;
    this.dataStart = dataStart;
  }

  /**
   * Opens and checks a file's header: header length within the file, valid JSON, known
   * dtypes, shapes and byte ranges that agree, every range inside the file and no two
   * ranges overlapping. Throws MoekitError ERR_CHECKPOINT naming the file (and tensor).
   */
  static open(file: string): SafetensorsFile {
    if (typeof file !== 'string') throw typeError('path', 'a file path string', file);
    const size = (native().fileSize as (p: string) => number)(file);
    if (size < 8) throw checkpointError(file, `is ${size} bytes long, too short for a safetensors header`);
    const fd = fs.openSync(file, 'r');
    let header: string;
    let headerLength: number;
    try {
      const lenBuf = Buffer.alloc(8);
      fs.readSync(fd, lenBuf, 0, 8, 0);
      const len = lenBuf.readBigUInt64LE(0);
      if (len > BigInt(size - 8)) throw checkpointError(file, `header length ${len} runs past the end of the file (${size} bytes)`);
      if (len > BigInt(MAX_HEADER_BYTES)) throw checkpointError(file, `header length ${len} exceeds ${MAX_HEADER_BYTES} bytes`);
      headerLength = Number(len);
      const buf = Buffer.alloc(headerLength);
      fs.readSync(fd, buf, 0, headerLength, 8);
      header = buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
    let json: unknown;
    try {
      json = JSON.parse(header);
    } catch (e) {
      throw checkpointError(file, `header is not valid JSON (${(e as Error).message})`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw checkpointError(file, 'header is not a JSON object');
    const dataStart = 8 + headerLength;
    const dataSize = size - dataStart;
    const tensors = new Map<string, TensorEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw checkpointError(file, '__metadata__ is not an object');
        metadata = Object.fromEntries(Object.entries(raw as Record<string, unknown>).map(([k, v]) => [k, String(v)]));
        continue;
      }
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const where = `tensor ${JSON.stringify(name)}`;
      if (e === null || typeof e !== 'object') throw checkpointError(file, `${where}: entry is not an object`);
      if (typeof e.dtype !== 'string' || !(e.dtype in SAFETENSORS_DTYPES)) throw checkpointError(file, `${where}: unknown dtype ${JSON.stringify(e.dtype)}`);
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        throw checkpointError(file, `${where}: shape ${JSON.stringify(e.shape)} is not a list of non-negative integers`);
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[0] > offs[1])
        throw checkpointError(file, `${where}: data_offsets ${JSON.stringify(offs)} is not [begin, end] with 0 <= begin <= end`);
      const numel = (e.shape as number[]).reduce((a, b) => a * b, 1);
      const want = numel * SAFETENSORS_DTYPES[e.dtype];
      if (offs[1] - offs[0] !== want)
        throw checkpointError(file, `${where}: data_offsets span ${offs[1] - offs[0]} bytes but ${e.dtype} ${JSON.stringify(e.shape)} needs ${want}`);
      if (offs[1] > dataSize)
        throw checkpointError(file, `${where}: data_offsets end at byte ${offs[1]} of the data, past its end (${dataSize} bytes; truncated file?)`);
      tensors.set(name, { name, dtype: e.dtype, shape: e.shape as number[], begin: dataStart + offs[0], end: dataStart + offs[1], file });
    }
    const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
    for (let i = 1; i < sorted.length; i++)
      if (sorted[i].begin < sorted[i - 1].end)
        throw checkpointError(file, `tensors ${JSON.stringify(sorted[i - 1].name)} and ${JSON.stringify(sorted[i].name)} have overlapping data_offsets`);
    return new SafetensorsFile(file, metadata, tensors, dataStart);
  }

  /** The entry of `name`, or ERR_CHECKPOINT naming the file. */
  entry(name: string): TensorEntry {
    const e = this.tensors.get(name);
    if (e === undefined) throw checkpointError(this.path, `has no tensor ${JSON.stringify(name)}`);
    return e;
  }

  /** Reads a tensor into a new host tensor, converted to `dtype` (default: the file's). */
  read(name: string, options: { dtype?: DType } = {}): Promise<Tensor> {
    return readEntry(this.entry(name), options);
  }
}

/** Reads one entry (F32, F16 or BF16 only), converted to `dtype` when given. */
export function readEntry(e: TensorEntry, options: { dtype?: DType } = {}): Promise<Tensor> {
  return readStacked([e], e.shape, options);
}

/**
 * Reads entries of one dtype and shape, stacked along a new first dimension, into one
 * host tensor of `shape` (for example E per-expert [I, H] weights into [E, I, H]), with
 * no intermediate copy. `shape` must hold exactly the entries' elements.
 */
export async function readStacked(entries: TensorEntry[], shape: readonly number[], options: { dtype?: DType } = {}): Promise<Tensor> {
  const o = checkOptions<{ dtype?: DType }>('options', options);
  if (entries.length === 0) throw new MoekitError('readStacked needs at least one tensor', 'ERR_INVALID_ARGUMENT');
  const first = entries[0];
  for (const e of entries) {
    if (READABLE[e.dtype] === undefined)
      throw new MoekitError(`${e.file}: tensor ${JSON.stringify(e.name)} has dtype ${e.dtype}; moekit reads F32, F16 and BF16`, 'ERR_UNSUPPORTED');
    if (e.dtype !== first.dtype || e.shape.join() !== first.shape.join())
      throw new MoekitError(
        `${e.file}: tensor ${JSON.stringify(e.name)} is ${e.dtype} ${JSON.stringify(e.shape)} but ${JSON.stringify(first.name)} is ${first.dtype} ${JSON.stringify(first.shape)}; they must match to be stacked`,
        'ERR_CHECKPOINT',
      );
  }
  const fileType = READABLE[first.dtype];
  const dtype = o.dtype === undefined ? fileType : checkOneOf('options.dtype', o.dtype, ['f32', 'f16', 'bf16'] as const);
  try {
    const raw = await (native().readTensor as (p: object) => Promise<RawTensor>)({
      parts: entries.map((e) => ({ path: e.file, offset: e.begin, bytes: e.end - e.begin })),
      fileDtype: dtypeCode(fileType),
      dtype: dtypeCode(dtype),
      shape: [...shape],
    });
    return new Tensor(raw);
  } catch (err) {
    if (err instanceof MoekitError && (err.code === 'ERR_CHECKPOINT' || err.code === 'ERR_IO'))
      throw new MoekitError(`reading ${entries.length === 1 ? 'tensor' : 'tensors'} ${entries.map((e) => JSON.stringify(e.name)).slice(0, 3).join(', ')}${entries.length > 3 ? ', …' : ''}: ${err.message}`, err.code);
    throw err;
  }
}

/**
 * A checkpoint directory: `model.safetensors.index.json` (sharded) or the directory's
 * `*.safetensors` files. Files are opened (and checked) on first use.
 */
export class Checkpoint {
  readonly dir: string;
  /** Tensor name → file name (relative to dir). */
  readonly weightMap: ReadonlyMap<string, string>;
  private readonly files = new Map<string, SafetensorsFile>();

  private constructor(dir: string, weightMap: Map<string, string>) {
    this.dir = dir;
    this.weightMap = weightMap;
  }

  /** Opens a checkpoint directory. ERR_CHECKPOINT when it has no safetensors weights or a bad index. */
  static open(dir: string): Checkpoint {
    if (typeof dir !== 'string') throw typeError('dir', 'a directory path string', dir);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new MoekitError(`${dir} is not a directory`, 'ERR_IO');
    const indexPath = path.join(dir, 'model.safetensors.index.json');
    const map = new Map<string, string>();
    if (fs.existsSync(indexPath)) {
      let index: { weight_map?: unknown };
      try {
        index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
      } catch (e) {
        throw checkpointError(indexPath, `is not valid JSON (${(e as Error).message})`);
      }
      const wm = index.weight_map;
      if (wm === null || typeof wm !== 'object' || Array.isArray(wm)) throw checkpointError(indexPath, 'has no weight_map object');
      for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
        if (typeof file !== 'string' || file.includes('..') || path.isAbsolute(file)) throw checkpointError(indexPath, `weight_map entry ${JSON.stringify(name)} names an invalid file ${JSON.stringify(file)}`);
        if (!fs.existsSync(path.join(dir, file))) throw checkpointError(indexPath, `weight_map names ${file} for ${JSON.stringify(name)}, but that file does not exist`);
        map.set(name, file);
      }
      return new Checkpoint(dir, map);
    }
    const shards = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
    if (shards.length === 0) throw new MoekitError(`${dir} has no *.safetensors files and no model.safetensors.index.json`, 'ERR_CHECKPOINT');
    const cp = new Checkpoint(dir, map);
    for (const f of shards) for (const name of cp.file(f).tensors.keys()) map.set(name, f);
    return cp;
  }

  /** True when the checkpoint has a tensor of this name. */
  has(name: string): boolean {
    return this.weightMap.has(name);
  }

  /** The header entry of a tensor; ERR_CHECKPOINT naming the tensor when it is missing. */
  entry(name: string): TensorEntry {
    const f = this.weightMap.get(name);
    if (f === undefined) throw new MoekitError(`checkpoint ${this.dir} has no tensor ${JSON.stringify(name)}`, 'ERR_CHECKPOINT');
    const e = this.file(f).tensors.get(name);
    if (e === undefined) throw checkpointError(path.join(this.dir, f), `has no tensor ${JSON.stringify(name)} (the index says it should)`);
    return e;
  }

  /** Reads a tensor (converted to `dtype` when given). */
  read(name: string, options: { dtype?: DType } = {}): Promise<Tensor> {
    return readEntry(this.entry(name), options);
  }

  /** Reads same-shaped tensors stacked along a new first dimension (per-expert weights → [E, ...]). */
  readStacked(names: string[], options: { dtype?: DType } = {}): Promise<Tensor> {
    const entries = names.map((n) => this.entry(n));
    return readStacked(entries, [names.length, ...(entries[0]?.shape ?? [])], options);
  }

  private file(name: string): SafetensorsFile {
    let f = this.files.get(name);
    if (f === undefined) {
      f = SafetensorsFile.open(path.join(this.dir, name));
      this.files.set(name, f);
    }
    return f;
  }
}

/** Options of {@link writeSafetensors}. */
export interface WriteOptions {
  /** `__metadata__` strings (HF writes `{format: 'pt'}`). */
  metadata?: Record<string, string>;
  /**
   * Pad the header with spaces so the data starts 8-byte aligned (the usual layout).
   * false leaves it unpadded, which misaligns the data: for testing readers.
   */
  align?: boolean;
}

/**
 * Writes host tensors (f32, f16, bf16) to a safetensors file, in the order given.
 * For tests and tools: the data passes through JavaScript, so each tensor must fit a
 * JavaScript ArrayBuffer.
 */
export async function writeSafetensors(file: string, tensors: Record<string, Tensor>, options: WriteOptions = {}): Promise<void> {
  if (typeof file !== 'string') throw typeError('path', 'a file path string', file);
  const o = checkOptions<WriteOptions>('options', options);
  const header: Record<string, unknown> = {};
  if (o.metadata !== undefined) header.__metadata__ = o.metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    checkTensor(`tensors[${JSON.stringify(name)}]`, t);
    const fileDtype = FILE_DTYPE_OF[t.dtype];
    if (fileDtype === undefined) throw new MoekitError(`tensors[${JSON.stringify(name)}] is ${t.dtype}; the writer takes f32, f16 and bf16`, 'ERR_UNSUPPORTED');
    const data = (await t.toArray()) as unknown as ArrayBufferView;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    header[name] = { dtype: fileDtype, shape: [...t.shape], data_offsets: [offset, offset + bytes.byteLength] };
    chunks.push(bytes);
    offset += bytes.byteLength;
  }
  let json = JSON.stringify(header);
  if (o.align !== false) json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, len);
    fs.writeSync(fd, Buffer.from(json, 'utf8'));
    for (const c of chunks) fs.writeSync(fd, c);
  } finally {
    fs.closeSync(fd);
  }
}
