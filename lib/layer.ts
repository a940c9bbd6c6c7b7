/**
 * MoELayer: the configuration and weights of one Mixture-of-Experts layer, and its
 * forward pass (router → gating → dispatch → expert MLPs → combine, plus shared experts).
 */
import { Device, resolveDevice } from './device';
import { DType, FLOAT_DTYPES, dtypeCode } from './dtype';
import { MoekitError, checkBoolean, checkInteger, checkNumber, checkOneOf, checkOptions, rangeError, typeError } from './errors';
import { RawTensor, native } from './native';
import { ACTIVATIONS, Activation, WeightLayout } from './ops';
import { Family, PresetOptions, preset } from './presets';
import type { PretrainedOptions } from './pretrained';
import { ResolvedRouting, RoutingOptions, RoutingStats, correctionBiasFor, encodeRouting, resolveRouting, routingStats } from './routing';
import { Tensor, checkTensor, describeTensor } from './tensor';
import { Profile, ProfileOptions, ProfileRequest, checkProfileOptions, runProfile } from './profile';

/** Shape and math of a layer. */
export interface MoELayerConfig {
  hidden: number;
  /** Intermediate size of one routed expert (I). */
  intermediate: number;
  /** Routed experts (E). */
  experts: number;
  routing: RoutingOptions;
  /** Activation of the first projection. Default 'swiglu'. */
  activation?: Activation;
  /** Layout of the first projection's weights: 'enk' [E, N, H] (default) or 'ekn' [E, H, N]. */
  layoutIn?: WeightLayout;
  /** Layout of the down projection: 'enk' [E, H, I] (default) or 'ekn' [E, I, H]. */
  layoutOut?: WeightLayout;
  /** gpt-oss clamped SwiGLU sigmoid scale (default 1.702). */
  alpha?: number;
  /** gpt-oss clamped SwiGLU limit (default 7). */
  limit?: number;
  /** Intermediate size of the shared expert(s) together; 0 or absent for none. */
  sharedIntermediate?: number;
  /** Pad each expert's group to this many rows (the GEMM tile layout). Default 1. */
  blockSize?: number;
  /** Per-expert capacity in pairs (later tokens dropped first). Default unlimited. */
  capacity?: number;
}

/** Weights of a layer. Expert weights are f32, f16 or bf16 host tensors. */
export interface MoELayerWeights {
  /** [experts + nullExperts, hidden]. */
  router: Tensor;
  /** [experts + nullExperts], dtype of router (gpt-oss). */
  routerBias?: Tensor;
  /** [experts] f32: DeepSeek-V3 e_score_correction_bias (selection only). */
  correctionBias?: Tensor;
  /** Fused gate+up [E, 2I, H] (or [E, H, 2I] for 'ekn'); or the only projection [E, I, H] for non-GLU activations. */
  gateUp?: Tensor;
  /** Separate gate [E, I, H] (Mixtral w1), with `up`. */
  gate?: Tensor;
  /** Separate up [E, I, H] (Mixtral w3), with `gate`. */
  up?: Tensor;
  /** Bias of gateUp [E, 2I] (or of gate [E, I]). */
  gateUpBias?: Tensor;
  /** Bias of up [E, I]. */
  upBias?: Tensor;
  /** Down projection [E, H, I] (or [E, I, H] for 'ekn'). */
  down: Tensor;
  /** [E, H]. */
  downBias?: Tensor;
  /** Shared expert(s): SwiGLU MLP run on every token. */
  shared?: {
    /** Fused [2·Is, H], or use gate + up. */
    gateUp?: Tensor;
    gate?: Tensor;
    up?: Tensor;
    /** [H, Is]. */
    down: Tensor;
    /** [1, H]: output scaled by sigmoid(x · gate) (Qwen2-MoE shared_expert_gate). */
    outputGate?: Tensor;
  };
}

/** Options of MoELayer.forward. */
export interface ForwardOptions {
  /** Also return the routing used (ids, weights, load, statistics). */
  returnRouting?: boolean;
  /** Forced routing (routing replay): [T, k] i32 expert ids, -1 = skip. The gate is skipped. */
  forcedIds?: Tensor;
  /** [T, k] f32 weights for forcedIds; default: the router's scores at those ids, post-processed like the gate. */
  forcedWeights?: Tensor;
  /** Output dtype; default the input's. */
  outputDtype?: DType;
  /** Device for this call; default the layer's. */
  device?: string;
  /** On CUDA: use the layer's CUDA-graph cache for this call (default: the layer's `cudaGraphs`). */
  cudaGraph?: boolean;
}

/** The routing a forward used. */
export interface ForwardRouting {
  ids: Tensor;
  weights: Tensor;
  load: Tensor;
  dropped: number;
  stats: RoutingStats;
}

/** Result of forward with returnRouting. */
export interface ForwardResult {
  output: Tensor;
  routing: ForwardRouting;
}

function layoutCode(l: WeightLayout): number {
  return l === 'enk' ? 0 : 1;
}

/**
 * The native layer forward's non-tensor parameters (layouts, expert shape, activation,
 * capacity, output dtype, routing): shared by MoELayer and OffloadedMoE, which pass their
 * own tensors and expert count.
 */
export function layerScalarParams(
  c: Readonly<Required<Omit<MoELayerConfig, 'routing' | 'capacity'>>> & { capacity: number | undefined },
  routing: ResolvedRouting,
  outputDtype: DType,
): Record<string, unknown> {
  return {
    layoutIn: layoutCode(c.layoutIn),
    layoutOut: layoutCode(c.layoutOut),
    intermediate: c.intermediate,
    activation: ACTIVATIONS.indexOf(c.activation),
    alpha: c.alpha,
    limit: c.limit,
    blockSize: c.blockSize,
    capacity: c.capacity ?? -1,
    outDtype: dtypeCode(outputDtype),
    ...encodeRouting(routing),
  };
}

/** Options of the MoELayer constructor and factories. */
export interface MoELayerOptions {
  /** Device of the forwards: 'cpu', 'cuda', 'cuda:N' or 'auto' (default: MOEKIT_DEVICE, else 'auto'). */
  device?: string;
  /** dispose() also disposes the weights given. Default false. */
  ownsWeights?: boolean;
  /**
   * On CUDA, replay forwards of up to {@link CUDA_GRAPH_MAX_TOKENS} tokens from CUDA graphs
   * cached per configuration (shapes, options, device weights). Default true.
   */
  cudaGraphs?: boolean;
}

/**
 * Forwards of at most this many tokens use the CUDA-graph cache: there launch overhead
 * matters and the copies in and out of the graph's own buffers are small.
 */
export const CUDA_GRAPH_MAX_TOKENS = 128;

/** One Mixture-of-Experts layer. */
export class MoELayer {
  readonly config: Readonly<Required<Omit<MoELayerConfig, 'routing' | 'capacity'>>> & { capacity: number | undefined };
  readonly routing: ResolvedRouting;
  readonly device: Device;
  private weights: MoELayerWeights | undefined;
  private readonly ownsWeights: boolean;
  /** Tensors the layer made itself (a zero correction bias), always disposed with it. */
  private readonly ownedExtras: Tensor[] = [];
  private readonly cudaGraphs: boolean;
  /** The native CUDA-graph cache, made on the first CUDA forward that uses it. */
  private graphCache: unknown;

  /**
   * @param config shape and math (see {@link MoELayer.fromPreset} for a family's math)
   * @param weights host tensors; the layer keeps references (and disposes them with
   *   `dispose()` when `ownsWeights` is true)
   */
  constructor(config: MoELayerConfig, weights: MoELayerWeights, options: MoELayerOptions = {}) {
    const c = checkOptions<MoELayerConfig>('config', config);
    const hidden = checkInteger('config.hidden', c.hidden, 1, 1 << 20);
    const intermediate = checkInteger('config.intermediate', c.intermediate, 1, 1 << 22);
    const experts = checkInteger('config.experts', c.experts, 1, 1 << 16);
    if (c.routing === undefined) throw typeError('config.routing', 'a routing options object', c.routing);
    const routing = resolveRouting('config.routing', experts, checkOptions<RoutingOptions>('config.routing', c.routing));
    const activation = c.activation === undefined ? 'swiglu' : checkOneOf('config.activation', c.activation, ACTIVATIONS);
    const layoutIn = c.layoutIn === undefined ? 'enk' : checkOneOf('config.layoutIn', c.layoutIn, ['enk', 'ekn'] as const);
    const layoutOut = c.layoutOut === undefined ? 'enk' : checkOneOf('config.layoutOut', c.layoutOut, ['enk', 'ekn'] as const);
    this.config = Object.freeze({
      hidden,
      intermediate,
      experts,
      activation,
      layoutIn,
      layoutOut,
      alpha: c.alpha === undefined ? 1.702 : checkNumber('config.alpha', c.alpha),
      limit: c.limit === undefined ? 7 : checkNumber('config.limit', c.limit, 0),
      sharedIntermediate: c.sharedIntermediate === undefined ? 0 : checkInteger('config.sharedIntermediate', c.sharedIntermediate, 0, 1 << 22),
      blockSize: c.blockSize === undefined ? 1 : checkInteger('config.blockSize', c.blockSize, 1, 4096),
      capacity: c.capacity === undefined ? undefined : checkInteger('config.capacity', c.capacity, 0, 2 ** 31 - 1),
    });
    this.routing = routing;
    const o = checkOptions<MoELayerOptions>('options', options);
    // 'auto' (and no choice, unless MOEKIT_DEVICE names one): CUDA device 0 when usable, else the CPU.
    this.device = resolveDevice(o.device, 'options.device');
    this.ownsWeights = o.ownsWeights === undefined ? false : checkBoolean('options.ownsWeights', o.ownsWeights);
    this.cudaGraphs = o.cudaGraphs === undefined ? true : checkBoolean('options.cudaGraphs', o.cudaGraphs);
    this.weights = checkWeights(this.config, routing, weights);
    const bias = correctionBiasFor('config.routing', routing, this.weights.correctionBias, (n) => Tensor.zeros([n]));
    if (bias !== this.weights.correctionBias) {
      this.weights.correctionBias = bias;
      this.ownedExtras.push(bias as Tensor);
    }
  }

  /** A layer with a family's routing math (see presets.ts). */
  static fromPreset(
    family: Family,
    presetOptions: PresetOptions,
    shape: { hidden: number; intermediate: number; experts: number; sharedIntermediate?: number },
    weights: MoELayerWeights,
    options: MoELayerOptions = {},
  ): MoELayer {
    const p = preset(family, presetOptions);
    const s = checkOptions<typeof shape>('shape', shape);
    return new MoELayer(
      {
        hidden: s.hidden as number,
        intermediate: s.intermediate as number,
        experts: s.experts as number,
        sharedIntermediate: s.sharedIntermediate,
        routing: p.routing,
        activation: p.activation,
        layoutIn: p.layoutIn,
        layoutOut: p.layoutOut,
        ...(p.alpha !== undefined ? { alpha: p.alpha } : {}),
        ...(p.limit !== undefined ? { limit: p.limit } : {}),
      },
      weights,
      options,
    );
  }

  /**
   * Loads MoE layer `options.layer` of a Hugging Face checkpoint directory (config.json +
   * safetensors) with its family's routing math; the layer owns its weights. See
   * lib/pretrained.ts for the families, tensor names and errors.
   */
  static fromPretrained(dir: string, options: PretrainedOptions): Promise<MoELayer> {
    // NOTE: required on use: pretrained.ts imports this module.
    return (require('./pretrained') as typeof import('./pretrained')).loadMoELayer(dir, options);
  }

  /** True once dispose() has run. */
  get disposed(): boolean {
    return this.weights === undefined;
  }

  /** Releases the layer (and its weights when it owns them). Forwards in flight finish normally. */
  dispose(): void {
    if (this.weights !== undefined && this.ownsWeights) {
      for (const t of weightList(this.weights)) t.dispose();
    }
    for (const t of this.ownedExtras) t.dispose();
    for (const p of this.deviceWeights.values()) p.then((w) => weightList(w).forEach((t) => t.dispose()), () => undefined);
    this.deviceWeights.clear();
    if (this.graphCache !== undefined) (native().releaseGraphCache as (c: unknown) => void)(this.graphCache);
    this.graphCache = undefined;
    this.weights = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Runs the layer on x [T, hidden] (f32, f16 or bf16). Resolves to the output [T, hidden]. */
  forward(x: Tensor, options?: ForwardOptions & { returnRouting?: false }): Promise<Tensor>;
  /** Runs the layer and also returns the routing it used. */
  forward(x: Tensor, options: ForwardOptions & { returnRouting: true }): Promise<ForwardResult>;
  async forward(x: Tensor, options: ForwardOptions = {}): Promise<Tensor | ForwardResult> {
    const a = this.checkCall(x, options, 'options');
    const returnRouting = a.o.returnRouting === undefined ? false : checkBoolean('options.returnRouting', a.o.returnRouting);
    // NOTE: host ids are read synchronously, so on the CPU the native call below starts
    // in this tick and captures every input before the caller can dispose it.
    if (a.o.forcedIds !== undefined && a.o.forcedIds.device.kind !== 'cpu') this.checkForcedIds((await a.o.forcedIds.toArray()) as Int32Array);
    const raw = (await this.launch(x, a)) as RawTensor[];
    const [output, ids, weights, load, droppedRaw] = raw.map((r) => new Tensor(r));
    if (!returnRouting) {
      // Nothing of the routing is returned: no read-back (on a GPU each read is a round
      // trip through the device worker and a device-to-host copy).
      for (const t of [ids, weights, load, droppedRaw]) t.dispose();
      return output;
    }
    // Both read-backs in flight at once; a failed read disposes everything it would return.
    let droppedHost: unknown, loadHost: unknown;
    try {
      [droppedHost, loadHost] = await Promise.all([droppedRaw.toArray(), load.toArray()]);
    } catch (e) {
      for (const t of [output, ids, weights, load]) t.dispose();
      throw e;
    } finally {
      droppedRaw.dispose();
    }
    const dropped = Number((droppedHost as BigInt64Array)[0]);
    const stats = routingStats(loadHost as Int32Array, dropped);
    return { output, routing: { ids, weights, load, dropped, stats } };
  }

  /**
   * Times the layer's forward on x with device timers (see {@link Profile}): the outputs
   * are allocated once and the whole forward (router, gating, dispatch, expert GEMMs,
   * combine, shared experts) runs `warmup` + `repeats` times; on a GPU each repeat is a
   * replay of one captured CUDA graph. Takes the forward's options (forced routing, device,
   * output dtype). For benchmarks; the result is not returned.
   */
  async profile(x: Tensor, options: ProfileOptions & Omit<ForwardOptions, 'returnRouting'> = {}): Promise<Profile> {
    const a = this.checkCall(x, options, 'options');
    const req = checkProfileOptions('options', { warmup: a.o.warmup, repeats: a.o.repeats, graph: a.o.graph, keepOutput: a.o.keepOutput });
    if (a.o.forcedIds !== undefined && a.o.forcedIds.device.kind !== 'cpu') this.checkForcedIds((await a.o.forcedIds.toArray()) as Int32Array);
    const p = (await this.launch(x, a, req)) as Profile & { result?: RawTensor[] };
    const { result, ...profile } = p;
    if (result === undefined) return profile;
    const [output, ...rest] = result.map((r) => new Tensor(r));
    for (const t of rest) t.dispose();
    return { ...profile, output };
  }

  /** Checks the arguments of forward / profile (synchronously). */
  private checkCall(x: Tensor, options: unknown, name: string): { o: Partial<ForwardOptions & ProfileOptions>; device: Device; outputDtype: DType } {
    if (this.weights === undefined) throw new MoekitError('the layer has been disposed', 'ERR_DISPOSED');
    checkTensor('x', x);
    const o = checkOptions<ForwardOptions & ProfileOptions>(name, options);
    const { hidden } = this.config;
    if (x.shape.length !== 2 || x.shape[1] !== hidden || !FLOAT_DTYPES.includes(x.dtype))
      throw rangeError('x', `a f32, f16 or bf16 tensor of shape [tokens, ${hidden}]`, describeTensor(x));
    const device = o.device === undefined ? this.device : resolveDevice(o.device, `${name}.device`);
    const T = x.shape[0];
    const slots = this.routing.slots;
    const outputDtype = o.outputDtype === undefined ? x.dtype : checkOneOf(`${name}.outputDtype`, o.outputDtype, FLOAT_DTYPES);
    if (o.cudaGraph !== undefined) checkBoolean(`${name}.cudaGraph`, o.cudaGraph);
    if (o.forcedIds !== undefined) {
      checkTensor(`${name}.forcedIds`, o.forcedIds);
      if (o.forcedIds.dtype !== 'i32' || o.forcedIds.shape.length !== 2 || o.forcedIds.shape[0] !== T || o.forcedIds.shape[1] !== slots)
        throw rangeError(`${name}.forcedIds`, `an i32 tensor of shape [${T}, ${slots}]`, describeTensor(o.forcedIds));
      if (o.forcedIds.device.kind === 'cpu') this.checkForcedIds(o.forcedIds.toArraySync() as Int32Array);
    }
    if (o.forcedWeights !== undefined) {
      if (o.forcedIds === undefined) throw rangeError(`${name}.forcedWeights`, 'forcedIds alongside forcedWeights', 'forcedWeights alone');
      checkTensor(`${name}.forcedWeights`, o.forcedWeights);
      if (o.forcedWeights.dtype !== 'f32' || o.forcedWeights.shape.join() !== `${T},${slots}`)
        throw rangeError(`${name}.forcedWeights`, `a f32 tensor of shape [${T}, ${slots}]`, describeTensor(o.forcedWeights));
    }
    return { o, device, outputDtype };
  }

  private checkForcedIds(ids: Int32Array): void {
    const slots = this.routing.slots;
    for (let i = 0; i < ids.length; i++)
      if (!(ids[i] >= -1 && ids[i] < this.config.experts))
        throw rangeError('options.forcedIds', `expert ids in [-1, ${this.config.experts})`, `${ids[i]} at [${Math.floor(i / slots)}, ${i % slots}]`);
  }

  /**
   * Starts the native forward (or its profile) on the call's device. On the CPU with host
   * inputs the native call starts synchronously: the job holds the inputs' memory from then on.
   */
  private async launch(x: Tensor, a: { o: Partial<ForwardOptions>; device: Device; outputDtype: DType }, profile?: ProfileRequest): Promise<RawTensor[] | Profile> {
    const w = this.weights as MoELayerWeights;
    const { o, device, outputDtype } = a;
    const fusedIn = w.gateUp !== undefined;
    const sameDevice = (t: Tensor | undefined) => t === undefined || t.device.name === device.name;
    if (device.kind === 'cpu' && sameDevice(x) && sameDevice(o.forcedIds) && sameDevice(o.forcedWeights))
      return this.runForward(w, x, o.forcedIds, o.forcedWeights, fusedIn, outputDtype, profile);
    const graphs = device.kind === 'cuda' && profile === undefined && (o.cudaGraph ?? this.cudaGraphs) && x.shape[0] <= CUDA_GRAPH_MAX_TOKENS;
    // Inputs on another device are copied to the call's device for this call.
    const temporaries: Tensor[] = [];
    const onDevice = async (t: Tensor | undefined): Promise<Tensor | undefined> => {
      if (t === undefined || t.device.name === device.name) return t;
      const moved = await t.to(device.name);
      temporaries.push(moved);
      return moved;
    };
    try {
      const wd = device.kind === 'cpu' ? w : await this.weightsOn(device);
      return await this.runForward(wd, (await onDevice(x)) as Tensor, await onDevice(o.forcedIds), await onDevice(o.forcedWeights), fusedIn, outputDtype, profile, graphs);
    } finally {
      for (const t of temporaries) t.dispose();
    }
  }

  /** Device copies of the weights, made once per device on first use. */
  private readonly deviceWeights = new Map<string, Promise<MoELayerWeights>>();

  private weightsOn(device: Device): Promise<MoELayerWeights> {
    let p = this.deviceWeights.get(device.name);
    if (p === undefined) {
      const host = this.weights as MoELayerWeights;
      const move = async (t: Tensor | undefined) => (t === undefined ? undefined : t.to(device.name));
      p = (async () => {
        const s = host.shared;
        return {
          router: (await move(host.router)) as Tensor,
          routerBias: await move(host.routerBias),
          correctionBias: await move(host.correctionBias),
          gateUp: await move(host.gateUp),
          gate: await move(host.gate),
          up: await move(host.up),
          gateUpBias: await move(host.gateUpBias),
          upBias: await move(host.upBias),
          down: (await move(host.down)) as Tensor,
          downBias: await move(host.downBias),
          shared:
            s === undefined
              ? undefined
              : { gateUp: await move(s.gateUp), gate: await move(s.gate), up: await move(s.up), down: (await move(s.down)) as Tensor, outputGate: await move(s.outputGate) },
        };
      })();
      // A failed upload is not cached: the next forward tries again.
      p.catch(() => this.deviceWeights.delete(device.name));
      this.deviceWeights.set(device.name, p);
    }
    return p;
  }

  private runForward(w: MoELayerWeights, x: Tensor, forcedIds: Tensor | undefined, forcedWeights: Tensor | undefined, fusedIn: boolean, outputDtype: DType, profile?: ProfileRequest, graphs = false): Promise<RawTensor[] | Profile> {
    const c = this.config;
    if (graphs && this.graphCache === undefined) this.graphCache = (native().createGraphCache as () => unknown)();
    const args = {
      graphCache: graphs ? this.graphCache : undefined,
      x: x.raw,
      routerW: w.router.raw,
      routerB: w.routerBias?.raw,
      correctionBias: w.correctionBias?.raw,
      wIn: (fusedIn ? w.gateUp : w.gate)!.raw,
      wInUp: fusedIn ? undefined : w.up!.raw,
      bIn: w.gateUpBias?.raw,
      bInUp: w.upBias?.raw,
      wOut: w.down.raw,
      bOut: w.downBias?.raw,
      sharedWIn: (w.shared?.gateUp ?? w.shared?.gate)?.raw,
      sharedWInUp: w.shared?.gateUp === undefined ? w.shared?.up?.raw : undefined,
      sharedWOut: w.shared?.down.raw,
      sharedGate: w.shared?.outputGate?.raw,
      sharedIntermediate: w.shared === undefined ? 0 : c.sharedIntermediate,
      forcedIds: forcedIds?.raw,
      forcedWeights: forcedWeights?.raw,
      experts: c.experts,
      ...layerScalarParams(c, this.routing, outputDtype),
    };
    if (profile !== undefined) return runProfile('moeLayerForward', args, profile);
    return (native().moeLayerForward as (p: object) => Promise<RawTensor[]>)(args);
  }
}

function weightList(w: MoELayerWeights): Tensor[] {
  const list: (Tensor | undefined)[] = [w.router, w.routerBias, w.correctionBias, w.gateUp, w.gate, w.up, w.gateUpBias, w.upBias, w.down, w.downBias];
  if (w.shared) list.push(w.shared.gateUp, w.shared.gate, w.shared.up, w.shared.down, w.shared.outputGate);
  return list.filter((t): t is Tensor => t !== undefined);
}

function checkWeights(c: MoELayer['config'], r: ResolvedRouting, weights: MoELayerWeights): MoELayerWeights {
  const w = checkOptions<MoELayerWeights>('weights', weights) as MoELayerWeights;
  const { hidden: H, intermediate: I, experts: E } = c;
  const cols = E + r.nullExperts;
  const glu = c.activation === 'swiglu' || c.activation === 'swiglu-interleaved' || c.activation === 'gpt-oss-swiglu' || c.activation === 'geglu';
  const expect = (name: string, t: unknown, shape: number[], dtypes: readonly DType[] = FLOAT_DTYPES): Tensor => {
    const tensor = checkTensor(name, t);
    if (tensor.shape.join() !== shape.join() || !dtypes.includes(tensor.dtype))
      throw rangeError(name, `a ${dtypes.join('/')} tensor of shape [${shape.join(', ')}]`, describeTensor(tensor));
    if (tensor.device.kind !== 'cpu') throw new MoekitError(`${name} is on ${tensor.device.name}; MoELayer weights are host tensors in this version`, 'ERR_UNSUPPORTED');
    return tensor;
  };
  const inShape = (n: number) => (c.layoutIn === 'enk' ? [E, n, H] : [E, H, n]);
  expect('weights.router', w.router, [cols, H]);
  if (w.routerBias !== undefined) expect('weights.routerBias', w.routerBias, [cols], [w.router.dtype]);
  if (w.correctionBias !== undefined) expect('weights.correctionBias', w.correctionBias, [E], ['f32']);
  let wIn: Tensor;
  if (w.gateUp !== undefined) {
    if (w.gate !== undefined || w.up !== undefined) throw rangeError('weights', 'either gateUp or gate + up, not both', 'both');
    wIn = expect('weights.gateUp', w.gateUp, inShape(glu ? 2 * I : I));
    if (w.gateUpBias !== undefined) expect('weights.gateUpBias', w.gateUpBias, [E, glu ? 2 * I : I], [wIn.dtype]);
    if (w.upBias !== undefined) throw rangeError('weights.upBias', 'no upBias with a fused gateUp (use gateUpBias)', 'a Tensor');
  } else {
    if (c.activation !== 'swiglu' && c.activation !== 'geglu')
      throw rangeError('weights.gateUp', `a fused projection for activation '${c.activation}' (separate gate + up need 'swiglu' or 'geglu')`, w.gateUp);
    wIn = expect('weights.gate', w.gate, inShape(I));
    expect('weights.up', w.up, inShape(I), [wIn.dtype]);
    if (w.gateUpBias !== undefined) expect('weights.gateUpBias', w.gateUpBias, [E, I], [wIn.dtype]);
    if (w.upBias !== undefined) expect('weights.upBias', w.upBias, [E, I], [wIn.dtype]);
  }
  const down = expect('weights.down', w.down, c.layoutOut === 'enk' ? [E, H, I] : [E, I, H]);
  if (w.downBias !== undefined) expect('weights.downBias', w.downBias, [E, H], [down.dtype]);
  if (w.shared !== undefined) {
    const s = checkOptions<NonNullable<MoELayerWeights['shared']>>('weights.shared', w.shared);
    const Is = c.sharedIntermediate;
    if (Is === 0) throw rangeError('config.sharedIntermediate', 'a positive integer when weights.shared is given', 0);
    let sIn: Tensor;
    if (s.gateUp !== undefined) sIn = expect('weights.shared.gateUp', s.gateUp, [2 * Is, H]);
    else {
      sIn = expect('weights.shared.gate', s.gate, [Is, H]);
      expect('weights.shared.up', s.up, [Is, H], [sIn.dtype]);
    }
    expect('weights.shared.down', s.down, [H, Is]);
    if (s.outputGate !== undefined) expect('weights.shared.outputGate', s.outputGate, [1, H]);
  } else if (c.sharedIntermediate > 0) {
    throw rangeError('weights.shared', `shared-expert weights for config.sharedIntermediate = ${c.sharedIntermediate}`, undefined);
  }
  return { ...w };
}
