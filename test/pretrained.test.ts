/**
 * Hugging Face checkpoints: tiny checkpoints of every MoE family written in Hub naming
 * (test/pretrained/tiny.ts), loaded with MoELayer.fromPretrained and run through the
 * `moekit run-layer` CLI and examples/run-layers.js, compared with the float64 family
 * references; broken checkpoints give errors naming the file and the tensor.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FAMILIES, MoELayer, MoekitError, SafetensorsFile, Tensor, listMoELayers, runtime, writeSafetensors } from '../lib';
import type { Family } from '../lib';
import { expectMoekitError, testSeed } from './helpers';
import { Rng, refGating, roundTo } from './reference';
import { Layout, TinyModel, WDtype, tinyModel, writeModel, writeRawSafetensors } from './pretrained/tiny';

const seed = testSeed('pretrained');
const root = path.resolve(__dirname, '..');
let tmp: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-pretrained-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

let dirCount = 0;
function freshDir(label: string): string {
  return path.join(tmp, `${label}-${dirCount++}`);
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

function randomX(rng: Rng, T: number, H: number, dtype: WDtype = 'f32'): Float64Array {
  return roundTo(Float64Array.from({ length: T * H }, () => rng.normal(0, 1)), dtype);
}

/**
 * Compares an output with the reference row by row, as test/ops/layer.test.ts does: rows
 * routed by a near tie (reference margin < 1e-4) are skipped; the bound is float32
 * accumulation relative to the row's magnitude plus the output dtype's rounding.
 * Returns the compared rows.
 */
function compareOutput(got: Float32Array, want: Float64Array, T: number, H: number, outDtype: WDtype, margin: ArrayLike<number>, where: string): number[] {
  const eps = outDtype === 'bf16' ? 2 ** -8 : outDtype === 'f16' ? 2 ** -11 : 0;
  const rows: number[] = [];
  for (let t = 0; t < T; t++) {
    if (margin[t] < 1e-4) continue;
    let rowMax = 0;
    for (let h = 0; h < H; h++) rowMax = Math.max(rowMax, Math.abs(want[t * H + h]));
    for (let h = 0; h < H; h++) {
      const i = t * H + h;
      const bound = 3e-5 * (rowMax + 1e-3) + eps * Math.abs(want[i]);
      if (!(Math.abs(got[i] - want[i]) <= bound)) throw new Error(`${where}: y[${t}, ${h}] = ${got[i]}, reference ${want[i]} (seed ${seed})`);
    }
    rows.push(t);
  }
  return rows;
}

/** Routing ids equal and weights within float32 error on the compared rows. */
function compareRouting(ids: ArrayLike<number>, weights: ArrayLike<number>, want: { ids: Int32Array; weights: Float64Array; k: number }, rows: number[], where: string): void {
  const k = want.k;
  for (const t of rows)
    for (let s = 0; s < k; s++) {
      const i = t * k + s;
      expect([where, t, s, ids[i]]).toEqual([where, t, s, want.ids[i]]);
      if (!(Math.abs(weights[i] - want.weights[i]) <= 3e-5 * (1 + Math.abs(want.weights[i])))) throw new Error(`${where}: weights[${t}, ${s}] = ${weights[i]}, reference ${want.weights[i]} (seed ${seed})`);
    }
}

/** Loads every MoE layer and checks forward against the reference. */
async function checkModel(dir: string, model: TinyModel, options: { dtype?: WDtype } = {}): Promise<void> {
  const rng = new Rng(seed ^ hash(dir));
  const T = 33;
  for (const [layerIndex, ref] of model.moe) {
    const layer = await MoELayer.fromPretrained(dir, { layer: layerIndex, ...options });
    const x = randomX(rng, T, model.hidden);
    const want = ref.run(x, T, options.dtype);
    const margin = refGating(want.routerLogits, T, ref.gating).margin;
    const xt = Tensor.from(Float32Array.from(x), [T, model.hidden]);
    const { output, routing } = await layer.forward(xt, { returnRouting: true, outputDtype: 'f32' });
    const where = `${model.family} layer ${layerIndex}${options.dtype ? ` (${options.dtype})` : ''}`;
    expect(output.shape).toEqual([T, model.hidden]);
    const rows = compareOutput(output.toFloat32Sync(), want.out, T, model.hidden, 'f32', margin, where);
    expect(rows.length).toBeGreaterThan(T / 2);
    compareRouting(routing.ids.toArraySync() as Int32Array, routing.weights.toFloat32Sync(), want.routing, rows, where);
    for (const t of [xt, output, routing.ids, routing.weights, routing.load]) t.dispose();
    layer.dispose();
    expect(layer.disposed).toBe(true);
  }
}

const LAYOUTS: Record<Family, Layout> = {
  mixtral: {},
  qwen2_moe: { shards: 2, align: false }, // two files, no index, misaligned data
  qwen3_moe: {},
  olmoe: { shards: 3, index: true },
  deepseek_v2: { shards: 2, index: true },
  deepseek_v3: { shards: 2, index: true, align: false },
  gpt_oss: { align: false },
};

describe('MoELayer.fromPretrained matches the family references', () => {
  for (const family of FAMILIES) {
    const layout = LAYOUTS[family];
    test(`${family} (${layout.shards ?? 1} file(s)${layout.index ? ', index.json' : ''}${layout.align === false ? ', misaligned' : ''})`, async () => {
      const model = tinyModel(family, seed ^ hash(family));
      const dir = freshDir(family);
      await writeModel(dir, model, layout);

      const list = listMoELayers(dir);
      expect(list.map((l) => l.layer)).toEqual([...model.moe.keys()]);
      for (const l of list) {
        expect({ family: l.family, hidden: l.hidden, intermediate: l.intermediate, experts: l.experts, k: l.k, sharedIntermediate: l.sharedIntermediate }).toEqual({
          family,
          hidden: model.hidden,
          intermediate: model.intermediate,
          experts: model.experts,
          k: model.k,
          sharedIntermediate: model.sharedIntermediate,
        });
        expect(l.preset.family).toBe(family);
        expect(l.preset.routing.k).toBe(model.k);
      }

      await checkModel(dir, model);

      // Dense layers are refused, naming the argument and listing the MoE layers.
      for (let l = 0; l < model.layers; l++) {
        if (model.moe.has(l)) continue;
        await expect(MoELayer.fromPretrained(dir, { layer: l })).rejects.toThrow(RangeError);
        await expect(MoELayer.fromPretrained(dir, { layer: l })).rejects.toThrow(
          new RegExp(`^Expected one of the MoE layers of .*config\\.json \\(${[...model.moe.keys()].join(', ').replace('0, 1', '0-1').replace('1, 2', '1-2')} of ${model.layers} layers\\) for options\\.layer but received ${l} of type number$`),
        );
      }
      await expect(MoELayer.fromPretrained(dir, { layer: model.layers })).rejects.toThrow(/for options\.layer/);
    });
  }

  test('options.dtype converts every weight (the correction bias stays f32)', async () => {
    for (const family of ['qwen3_moe', 'mixtral', 'deepseek_v3', 'gpt_oss'] as const) {
      const model = tinyModel(family, seed ^ hash(`${family}-dtype`));
      const dir = freshDir(`${family}-dtype`);
      await writeModel(dir, model);
      await checkModel(dir, model, { dtype: family === 'mixtral' ? 'f16' : family === 'gpt_oss' ? 'f32' : 'bf16' });
    }
  });

  test('config.json key spellings of other transformers versions, and defaults for left-out keys', async () => {
    const model = tinyModel('mixtral', seed ^ hash('spellings'));
    const dir = freshDir('spellings');
    // num_experts / top_k instead of num_local_experts / num_experts_per_tok.
    await writeModel(dir, model, {}, { model_type: 'mixtral', hidden_size: 32, intermediate_size: 16, num_hidden_layers: 2, num_experts: 4, top_k: 2 });
    await checkModel(dir, model);
    // Left out: the transformers defaults (num_local_experts 8) contradict the tensors.
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'mixtral', hidden_size: 32, intermediate_size: 16, num_hidden_layers: 2 }));
    const err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 0 }), 'ERR_CHECKPOINT');
    expect(err.message).toContain(path.join(dir, 'model.safetensors'));
    expect(err.message).toContain('"model.layers.0.block_sparse_moe.gate.weight" has shape [4, 32]');
    expect(err.message).toContain('implies [8, 32]');
  });

  test('the fused expert layout of newer transformers (gate_up_proj [E, 2I, H], down_proj [E, H, I])', async () => {
    const model = tinyModel('olmoe', seed ^ hash('fused'));
    const { hidden: H, intermediate: I, experts: E } = model;
    for (const layer of model.moe.keys()) {
      const p = `model.layers.${layer}.mlp.experts`;
      const gateUp = new Float64Array(E * 2 * I * H);
      const down = new Float64Array(E * H * I);
      for (let e = 0; e < E; e++) {
        gateUp.set(model.tensors[`${p}.${e}.gate_proj.weight`].values, (e * 2 * I) * H);
        gateUp.set(model.tensors[`${p}.${e}.up_proj.weight`].values, (e * 2 * I + I) * H);
        down.set(model.tensors[`${p}.${e}.down_proj.weight`].values, e * H * I);
        for (const n of ['gate_proj', 'up_proj', 'down_proj']) delete model.tensors[`${p}.${e}.${n}.weight`];
      }
      model.tensors[`${p}.gate_up_proj`] = { values: gateUp, shape: [E, 2 * I, H], dtype: 'f16' };
      model.tensors[`${p}.down_proj`] = { values: down, shape: [E, H, I], dtype: 'f16' };
    }
    const dir = freshDir('fused');
    await writeModel(dir, model);
    await checkModel(dir, model);
  });
});

describe('argument and config errors', () => {
  let dir: string;
  beforeAll(async () => {
    dir = freshDir('args');
    await writeModel(dir, tinyModel('qwen2_moe', seed ^ 7));
  });

  test('arguments are checked with the argument named', async () => {
    await expect(MoELayer.fromPretrained(42 as never, { layer: 1 })).rejects.toThrow(new TypeError('Expected a checkpoint directory path string for dir but received 42 of type number'));
    await expect(MoELayer.fromPretrained(dir, undefined as never)).rejects.toThrow(/^Expected an options object with a layer index for options but received undefined$/);
    await expect(MoELayer.fromPretrained(dir, { layer: -1 })).rejects.toThrow(/^Expected a non-negative integer for options\.layer but received -1 of type number$/);
    await expect(MoELayer.fromPretrained(dir, { layer: '1' as never })).rejects.toThrow(TypeError);
    await expect(MoELayer.fromPretrained(dir, { layer: 1, dtype: 'i32' as never })).rejects.toThrow(/for options\.dtype but received "i32"/);
    await expect(MoELayer.fromPretrained(dir, { layer: 1, device: 'tpu' })).rejects.toThrow(/for options\.device but received "tpu"/);
    if (!runtime().backends.includes('cuda')) {
      // Checked before any weight is read (with a GPU this loads onto it: test/gpu covers that).
      const err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 1, device: 'cuda' }), 'ERR_CUDA_UNAVAILABLE');
      expect(err.message).toContain('options.device');
    }
  });

  test('config.json: missing, not JSON, unknown model_type, values of the wrong type', async () => {
    const d = freshDir('config');
    await writeModel(d, tinyModel('olmoe', seed ^ 8));
    const config = path.join(d, 'config.json');
    const original = fs.readFileSync(config, 'utf8');
    fs.rmSync(config);
    await expectMoekitError(() => MoELayer.fromPretrained(d, { layer: 0 }), 'ERR_CHECKPOINT', /has no config\.json/);
    fs.writeFileSync(config, '{"model_type": "olmoe",');
    await expectMoekitError(() => MoELayer.fromPretrained(d, { layer: 0 }), 'ERR_CHECKPOINT', new RegExp(`^${escape(config)}: is not valid JSON`));
    fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(original), model_type: 'llama' }));
    const err = await expectMoekitError(() => listMoELayers(d), 'ERR_UNSUPPORTED');
    expect(err.message).toBe(`${config}: model_type "llama" is not a supported MoE family; supported: ${FAMILIES.join(', ')}`);
    fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(original), num_experts: '8' }));
    await expectMoekitError(() => MoELayer.fromPretrained(d, { layer: 0 }), 'ERR_CHECKPOINT', /config\.json: num_experts is "8"; expected an integer >= 1/);
    fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(original), num_experts_per_tok: 9 }));
    await expectMoekitError(() => MoELayer.fromPretrained(d, { layer: 0 }), 'ERR_CHECKPOINT', /num_experts_per_tok = 9 is more than the 8 experts/);
    fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(original), model_type: 'deepseek_v3', n_group: 3, moe_intermediate_size: 16 }));
    await expectMoekitError(() => MoELayer.fromPretrained(d, { layer: 0 }), 'ERR_CHECKPOINT', /n_group = 3 does not divide the 8 experts/);
    fs.writeFileSync(config, JSON.stringify({ ...JSON.parse(original), quantization_config: { quant_method: 'mxfp4' } }));
    await expectMoekitError(() => MoELayer.fromPretrained(d, { layer: 0 }), 'ERR_UNSUPPORTED', /quantized checkpoints \(quant_method "mxfp4"\)/);
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('broken checkpoints give errors naming the file and the tensor', () => {
  /** A one-file mixtral checkpoint; returns its dir and safetensors path. */
  async function mixtral(label: string, edit?: (m: TinyModel) => void): Promise<{ dir: string; file: string; model: TinyModel }> {
    const model = tinyModel('mixtral', seed ^ hash(label));
    edit?.(model);
    const dir = freshDir(label);
    await writeModel(dir, model);
    return { dir, file: path.join(dir, 'model.safetensors'), model };
  }
  const expertName = 'model.layers.1.block_sparse_moe.experts.3.w2.weight';

  test('truncated file', async () => {
    const { dir, file } = await mixtral('truncated');
    const f = SafetensorsFile.open(file);
    const last = [...f.tensors.values()].sort((a, b) => b.end - a.end)[0];
    fs.truncateSync(file, fs.statSync(file).size - 10);
    const err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 0 }), 'ERR_CHECKPOINT');
    expect(err.message).toContain(file);
    expect(err.message).toContain(JSON.stringify(last.name));
    expect(err.message).toMatch(/truncated/);
  });

  test('header length past the end of the file', async () => {
    const { dir, file } = await mixtral('header');
    const fd = fs.openSync(file, 'r+');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(fs.statSync(file).size));
    fs.writeSync(fd, len, 0, 8, 0);
    fs.closeSync(fd);
    const err = await expectMoekitError(() => listMoELayers(dir), 'ERR_CHECKPOINT');
    expect(err.message).toMatch(new RegExp(`^${escape(file)}: header length \\d+ runs past the end of the file`));
  });

  test('data offsets past the end, overlapping offsets, unknown and unreadable dtypes', async () => {
    const { dir, model } = await mixtral('raw', (m) => delete m.tensors[expertName]);
    const extra = path.join(dir, 'model-extra.safetensors');
    const [H, I] = [model.hidden, model.intermediate];
    const bytes = H * I * 4;
    const cases: { header: Record<string, unknown>; data: number; code: string; message: RegExp }[] = [
      { header: { [expertName]: { dtype: 'F32', shape: [H, I], data_offsets: [0, bytes] } }, data: bytes - 4, code: 'ERR_CHECKPOINT', message: /data_offsets end at byte \d+ of the data, past its end/ },
      {
        header: { [expertName]: { dtype: 'F32', shape: [H, I], data_offsets: [0, bytes] }, 'model.norm.weight': { dtype: 'F32', shape: [H], data_offsets: [bytes - 8, bytes - 8 + H * 4] } },
        data: bytes + H * 4,
        code: 'ERR_CHECKPOINT',
        message: /have overlapping data_offsets/,
      },
      { header: { [expertName]: { dtype: 'Q4_K', shape: [H, I], data_offsets: [0, bytes] } }, data: bytes, code: 'ERR_CHECKPOINT', message: /unknown dtype "Q4_K"/ },
      { header: { [expertName]: { dtype: 'I64', shape: [H, I], data_offsets: [0, 2 * bytes] } }, data: 2 * bytes, code: 'ERR_UNSUPPORTED', message: /has dtype I64; moekit reads F32, F16 and BF16/ },
    ];
    for (const c of cases) {
      writeRawSafetensors(extra, c.header, Buffer.alloc(c.data));
      for (const call of [() => MoELayer.fromPretrained(dir, { layer: 1 }), () => listMoELayers(dir)]) {
        const err = await expectMoekitError(call, c.code, c.message);
        expect(err.message).toContain(extra);
        expect(err.message).toContain(JSON.stringify(expertName));
      }
    }
  });

  test('a missing expert tensor', async () => {
    const { dir, file } = await mixtral('missing', (m) => delete m.tensors[expertName]);
    (await MoELayer.fromPretrained(dir, { layer: 0 })).dispose();
    const err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 1 }), 'ERR_CHECKPOINT');
    expect(err.message).toBe(`${dir}: tensor ${JSON.stringify(expertName)} of mixtral MoE layer 1 is missing (looked in ${file})`);
  });

  test('a tensor whose shape contradicts config.json', async () => {
    const name = 'model.layers.0.block_sparse_moe.experts.2.w1.weight';
    const { dir, file } = await mixtral('shape', (m) => {
      m.tensors[name] = { values: new Float64Array(12 * 32), shape: [12, 32], dtype: 'bf16' };
    });
    const err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 0 }), 'ERR_CHECKPOINT');
    expect(err.message).toMatch(new RegExp(`^${escape(file)}: tensor "${escape(name)}" has shape \\[12, 32\\] but ${escape(path.join(dir, 'config.json'))} implies \\[16, 32\\]`));
    await expectMoekitError(() => listMoELayers(dir), 'ERR_CHECKPOINT', /has shape \[12, 32\]/);
  });

  test('a bad model.safetensors.index.json', async () => {
    const model = tinyModel('deepseek_v2', seed ^ hash('index'));
    const dir = freshDir('index');
    await writeModel(dir, model, { shards: 2, index: true });
    const indexFile = path.join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
    const name = 'model.layers.2.mlp.experts.5.up_proj.weight';

    fs.writeFileSync(indexFile, '{"weight_map": {');
    await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 1 }), 'ERR_CHECKPOINT', new RegExp(`^${escape(indexFile)}: is not valid JSON`));
    fs.writeFileSync(indexFile, JSON.stringify({ metadata: {} }));
    await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 1 }), 'ERR_CHECKPOINT', new RegExp(`^${escape(indexFile)}: has no weight_map object`));
    fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...index.weight_map, [name]: 'model-00009-of-00009.safetensors' } }));
    let err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 2 }), 'ERR_CHECKPOINT');
    expect(err.message).toContain(indexFile);
    expect(err.message).toContain(JSON.stringify(name));
    // The index points at a shard that lacks the tensor.
    const other = index.weight_map[name] === 'model-00001-of-00002.safetensors' ? 'model-00002-of-00002.safetensors' : 'model-00001-of-00002.safetensors';
    fs.writeFileSync(indexFile, JSON.stringify({ weight_map: { ...index.weight_map, [name]: other } }));
    err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 2 }), 'ERR_CHECKPOINT');
    expect(err.message).toContain(path.join(dir, other));
    expect(err.message).toContain(JSON.stringify(name));
    // The index leaves the tensor out.
    const { [name]: _dropped, ...rest } = index.weight_map;
    fs.writeFileSync(indexFile, JSON.stringify({ weight_map: rest }));
    err = await expectMoekitError(() => MoELayer.fromPretrained(dir, { layer: 2 }), 'ERR_CHECKPOINT');
    expect(err.message).toBe(`${dir}: tensor ${JSON.stringify(name)} of deepseek_v2 MoE layer 2 is missing (looked in ${indexFile})`);
    // Layer 1 is complete and still loads.
    fs.writeFileSync(indexFile, JSON.stringify(index));
    await checkModel(dir, model);
  });
});

/** Builds dist/ when it is missing or older than lib/ (the CLI and the example run the built package). */
function ensureBuilt(): void {
  const newest = Math.max(...fs.readdirSync(path.join(root, 'lib')).map((f) => fs.statSync(path.join(root, 'lib', f)).mtimeMs));
  const cli = path.join(root, 'dist', 'cli.js');
  if (fs.existsSync(cli) && fs.statSync(cli).mtimeMs >= newest && fs.existsSync(path.join(root, 'dist', 'pretrained.js'))) return;
  const r = spawnSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.build.json'], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tsc failed: ${r.stdout}${r.stderr}`);
}

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', env: { ...process.env, MOEKIT_DEVICE: 'cpu' } }); // the CPU backend's bounds (a GPU rounds x to bf16)
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('moekit CLI', () => {
  let dir: string;
  let model: TinyModel;
  beforeAll(async () => {
    ensureBuilt();
    model = tinyModel('qwen2_moe', seed ^ hash('cli'));
    dir = freshDir('cli');
    await writeModel(dir, model, { shards: 2, align: false });
  });
  const cli = path.join('dist', 'cli.js');

  test('run-layer writes y, ids and weights that match the reference', async () => {
    const rng = new Rng(seed ^ 0xc11);
    const T = 29;
    const H = model.hidden;
    const x = randomX(rng, T, H, 'bf16');
    const input = path.join(dir, 'x.safetensors');
    const xt = Tensor.from(Float32Array.from(x), [T, H], 'bf16');
    await writeSafetensors(input, { x: xt });
    xt.dispose();
    const ref = model.moe.get(2)!;
    const want = ref.run(x, T);
    const margin = refGating(want.routerLogits, T, ref.gating).margin;
    for (const dtype of [undefined, 'f32', 'f16'] as const) {
      const output = path.join(dir, `y-${dtype ?? 'default'}.safetensors`);
      const r = run([cli, 'run-layer', '--model', dir, '--layer', '2', '--input', input, `--output=${output}`, ...(dtype ? ['--dtype', dtype] : [])]);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^layer 2 \\(8 experts, k 4\\): ${T} tokens in [\\d.]+ ms; wrote .*y-${dtype ?? 'default'}\\.safetensors`));
      const out = SafetensorsFile.open(output);
      const outDtype = dtype ?? 'bf16';
      expect([...out.tensors.keys()].sort()).toEqual(['ids', 'weights', 'y']);
      expect([out.entry('y').dtype, out.entry('y').shape]).toEqual([outDtype.toUpperCase(), [T, H]]);
      expect([out.entry('ids').dtype, out.entry('ids').shape]).toEqual(['F32', [T, 4]]);
      expect([out.entry('weights').dtype, out.entry('weights').shape]).toEqual(['F32', [T, 4]]);
      const y = await out.read('y');
      const ids = await out.read('ids');
      const weights = await out.read('weights');
      const rows = compareOutput(y.toFloat32Sync(), want.out, T, H, outDtype, margin, `CLI --dtype ${dtype}`);
      expect(rows.length).toBeGreaterThan(T / 2);
      compareRouting(ids.toFloat32Sync(), weights.toFloat32Sync(), want.routing, rows, `CLI --dtype ${dtype}`);
      for (const t of [y, ids, weights]) t.dispose();
    }
  });

  test('layers lists the MoE layers (table and JSON), --help prints the usage', () => {
    const json = run([cli, 'layers', '--model', dir, '--json']);
    expect(json.status).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual(JSON.parse(JSON.stringify(listMoELayers(dir))));
    const table = run([cli, 'layers', '--model', dir]);
    expect(table.status).toBe(0);
    expect(table.stdout).toMatch(/qwen2_moe, 2 MoE layer\(s\)/);
    expect(table.stdout).toMatch(/^\s+1\s+40\s+8\s+8\s+4\s+24\s+bf16\s+topk, softmax$/m);
    const help = run([cli, '--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage:/);
    expect(help.stdout).toMatch(/stored as F32/);
  });

  test('argument errors exit 2 and failures exit 1, with one line and no stack trace', async () => {
    const input = path.join(dir, 'x.safetensors');
    const cases: [string[], number, RegExp][] = [
      [['run-layer', '--model', dir, '--input', input, '--output', 'o.safetensors'], 2, /^moekit: run-layer needs --layer/],
      [['run-layer', '--model', dir, '--layer', 'two', '--input', input, '--output', 'o.safetensors'], 2, /--layer takes a layer index/],
      [['run-layer', '--model', dir, '--layer', '1', '--input', input, '--output', 'o', '--dtype', 'f64'], 2, /--dtype takes f32, f16, bf16/],
      [['run-layer', '--model', dir, '--layer', '1', '--input', input, '--output', 'o', '--color'], 2, /unknown option --color/],
      [['frobnicate'], 2, /unknown command "frobnicate"/],
      [[], 2, /^moekit: no command given/],
      [['run-layer', '--model', dir, '--layer', '0', '--input', input, '--output', 'o'], 2, /for --layer but received 0/],
      [['run-layer', '--model', path.join(dir, 'nope'), '--layer', '1', '--input', input, '--output', 'o'], 1, /is not a directory|no config\.json/],
      [['run-layer', '--model', dir, '--layer', '1', '--input', path.join(dir, 'config.json'), '--output', 'o'], 1, /config\.json: header length/],
      [['run-layer', '--model', dir, '--layer', '1', '--input', input, '--output', path.join(dir, 'no', 'such', 'dir', 'y.safetensors')], 1, /ENOENT/],
      [['layers', '--model', os.tmpdir()], 1, /has no config\.json/],
    ];
    for (const [args, status, message] of cases) {
      const r = run([cli, ...args]);
      expect([args.join(' '), r.status]).toEqual([args.join(' '), status]);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    // x of the wrong width.
    const wrong = path.join(dir, 'wrong.safetensors');
    await writeSafetensors(wrong, { x: Tensor.zeros([3, 7]) });
    const r = run([cli, 'run-layer', '--model', dir, '--layer', '1', '--input', wrong, '--output', path.join(dir, 'o.safetensors')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`moekit: ${wrong}: tensor "x" has shape [3, 7] but layer 1 of ${dir} takes [tokens, 40]\n`);
  });
});

describe('examples/run-layers.js', () => {
  test('runs every MoE layer of a tiny checkpoint and prints load and time', async () => {
    ensureBuilt();
    const model = tinyModel('deepseek_v3', seed ^ hash('example'));
    const dir = freshDir('example');
    await writeModel(dir, model, { shards: 2, index: true });
    const lines = (stdout: string) => stdout.trim().split('\n').filter((l) => l.startsWith('layer '));
    const r = run([path.join('examples', 'run-layers.js'), dir, '--tokens', '24']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^deepseek_v3: 2 MoE layers, 8 experts, k 2, hidden 48; 24 tokens \(f32\)$/m);
    const got = lines(r.stdout);
    expect(got.map((l) => Number(/^layer (\d+):/.exec(l)![1]))).toEqual([0, 2]);
    for (const l of got) {
      const m = /^layer \d+: load \[([\d, ]+)\] imbalance \d+\.\d\d ([\d.]+) ms$/.exec(l);
      expect(m).not.toBeNull();
      const load = m![1].split(', ').map(Number);
      expect(load).toHaveLength(8);
      expect(load.reduce((a, b) => a + b, 0)).toBe(24 * 2);
    }

    // With --input: the load is the reference routing's.
    const rng = new Rng(seed ^ 0xe1);
    const T = 19;
    const x = randomX(rng, T, model.hidden);
    const input = path.join(dir, 'hidden.safetensors');
    await writeSafetensors(input, { x: Tensor.from(Float32Array.from(x), [T, model.hidden]) });
    const r2 = run([path.join('examples', 'run-layers.js'), dir, '--input', input]);
    expect(r2.status).toBe(0);
    expect(r2.stdout).toMatch(/; 19 tokens \(f32\)$/m);
    for (const l of lines(r2.stdout)) {
      const layer = Number(/^layer (\d+):/.exec(l)![1]);
      const ref = model.moe.get(layer)!;
      const want = ref.run(x, T);
      const margin = refGating(want.routerLogits, T, ref.gating).margin;
      if (Array.from(margin).some((v) => v < 1e-4)) continue; // a near tie could move one token
      const load = new Array(8).fill(0);
      for (const id of want.routing.ids) load[id]++;
      expect(l).toContain(`load [${load.join(', ')}]`);
    }
  });
});

test('MoekitError is what checkpoint failures throw', async () => {
  await expect(MoELayer.fromPretrained(path.join(tmp, 'does-not-exist'), { layer: 0 })).rejects.toBeInstanceOf(MoekitError);
});
