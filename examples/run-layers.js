#!/usr/bin/env node
/**
 * Runs every MoE layer of a Hugging Face checkpoint over one batch of hidden states and
 * prints each layer's expert load and time.
 *
 *   node examples/run-layers.js <checkpointDir> [--tokens N] [--input x.safetensors]
 *
 * Hidden states: tensor "x" [T, hidden] of --input, else N (default 64) random rows.
 * Each layer sees the same batch (this is a per-layer check, not a whole model).
 */
const { MoELayer, SafetensorsFile, Tensor, listMoELayers, MoekitError } = require('moekit');

function parseArgs(argv) {
  const args = { dir: undefined, tokens: 64, input: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--tokens') args.tokens = Number(argv[++i]);
    else if (a === '--input') args.input = argv[++i];
    else if (a.startsWith('--') || args.dir !== undefined) throw new Error(`unexpected argument ${a}`);
    else args.dir = a;
  }
  if (args.dir === undefined) throw new Error('usage: node examples/run-layers.js <checkpointDir> [--tokens N] [--input x.safetensors]');
  if (!Number.isInteger(args.tokens) || args.tokens < 1) throw new Error('--tokens takes a positive integer');
  return args;
}

/** Standard normal values from a small seeded generator (the same batch on every run). */
function randomRows(tokens, hidden, seed = 1) {
  let s = seed >>> 0;
  const uniform = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  const out = new Float32Array(tokens * hidden);
  for (let i = 0; i < out.length; i++) out[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return Tensor.from(out, [tokens, hidden]);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const layers = listMoELayers(args.dir);
  if (layers.length === 0) {
    console.log(`${args.dir}: no MoE layers`);
    return;
  }
  const { family, hidden, experts, k } = layers[0];
  const x = args.input !== undefined ? await SafetensorsFile.open(args.input).read('x') : randomRows(args.tokens, hidden);
  if (x.shape.length !== 2 || x.shape[1] !== hidden) throw new Error(`x has shape [${x.shape}], expected [tokens, ${hidden}]`);
  console.log(`${family}: ${layers.length} MoE layers, ${experts} experts, k ${k}, hidden ${hidden}; ${x.shape[0]} tokens (${x.dtype})`);
  for (const info of layers) {
    const layer = await MoELayer.fromPretrained(args.dir, { layer: info.layer });
    const started = process.hrtime.bigint();
    const { output, routing } = await layer.forward(x, { returnRouting: true });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const load = Array.from(await routing.load.toArray());
    console.log(`layer ${info.layer}: load [${load.join(', ')}] imbalance ${routing.stats.maxOverMean.toFixed(2)} ${ms.toFixed(2)} ms`);
    for (const t of [output, routing.ids, routing.weights, routing.load]) t.dispose();
    layer.dispose();
  }
  x.dispose();
}

main().catch((err) => {
  console.error(err instanceof MoekitError ? `${err.code}: ${err.message}` : err.message);
  process.exitCode = 1;
});
