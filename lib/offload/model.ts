/**
 * OffloadedMoE: a stack of MoE layers whose routed experts live in an {@link ExpertStore}
 * in host memory, with a {@link DeviceExpertCache} on the layers' device.
 *
 * forward(layer, x), per layer:
 * 1. router (groupedGemm with one "expert") and gate (lib/ops) on the device;
 * 2. the chosen ids are read back to the host: a host sync that is inherent here (the
 *    host decides which experts to copy);
 * 3. the distinct experts are acquired from the cache (pinned; misses copied in);
 * 4. the experts run through the native MoE layer forward with forced routing, ids
 *    remapped expert → slot and the gate's weights, shared experts resident;
 * 5. prefetch for the next layer (affinity: after step 3, so the copies overlap step 4;
 *    pre-gating: the next layer's router on this layer's output), then the pins go.
 *
 * The output equals MoELayer.forward on the same weights bit for bit: the same router
 * GEMM and gating kernels, and the expert part is the same native forward; remapping
 * expert ids to slots only reorders whole expert groups, and every row's GEMMs and each
 * token's combine (slot order) are unchanged.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Device, resolveDevice } from '../device';
import { DType, FLOAT_DTYPES } from '../dtype';
import { MoekitError, checkBoolean, checkInteger, checkNumber, checkOneOf, checkOptions, rangeError, typeError } from '../errors';
import { MoELayerConfig, layerScalarParams } from '../layer';
import { RawTensor, native } from '../native';
import { ACTIVATIONS, gate, groupedGemm } from '../ops';
import { listMoELayers } from '../pretrained';
import { ResolvedRouting, RoutingOptions, correctionBiasFor, resolveRouting } from '../routing';
import { Checkpoint } from '../safetensors';
import { Tensor, checkTensor, describeTensor } from '../tensor';
import { CacheStats } from '../cache/expert_cache';
import { AffinityPrefetchSource, LayerwisePrefetchSource, PrefetchCandidate, PrefetchSource, Prefetcher } from '../cache/prefetch';
import { DeviceCacheOptions, DeviceExpertCache } from './cache';
import { ExpertStore, blockPrefix, copyTensorRanges, selectLayers } from './store';

/** The non-expert weights of one layer (host tensors; copied to the device at construction). */
export interface ResidentWeights {
  /** [experts + nullExperts, hidden]. */
  router: Tensor;
  /** [experts + nullExperts], the router's dtype (gpt-oss). */
  routerBias?: Tensor;
  /** [experts] f32 (DeepSeek-V3). */
  correctionBias?: Tensor;
  /** Shared expert(s), as in MoELayerWeights. */
  shared?: { gateUp?: Tensor; gate?: Tensor; up?: Tensor; down: Tensor; outputGate?: Tensor };
}

/** Prefetch options (each source switchable). */
export interface OffloadPrefetchOptions {
  /** Cross-layer affinity (lib/cache AffinityPrefetchSource). Default false. */
  affinity?: boolean;
  /** Pre-gating: the next layer's router applied to this layer's output. Default false. */
  pregating?: boolean;
  /** Multi-layer prediction learned online (lib/cache LayerwisePrefetchSource). Default false. */
  layerwise?: boolean;
  /** While prefetching, protect resident experts of the next layer predicted at least this likely (lib/cache Prefetcher). */
  protectProbability?: number;
  /** Prefetches per layer step (default 2, see lib/cache Prefetcher). */
  maxPerStep?: number;
  /** Minimum estimated probability (default 0.5). */
  minProbability?: number;
  /** Evict only experts the policy ranks below the candidate (default true). */
  guard?: boolean;
}

/** Options of {@link OffloadedMoE}. */
export interface OffloadOptions {
  /** Device of the layers and the cache (default: MOEKIT_DEVICE, else 'auto': CUDA device 0 when usable, else the CPU). */
  device?: string;
  /** The device cache (see DeviceCacheOptions). */
  cache: DeviceCacheOptions;
  /** Prefetch; default none. */
  prefetch?: OffloadPrefetchOptions;
}

/** Options of {@link OffloadedMoE.fromPretrained}. */
export interface OffloadPretrainedOptions extends OffloadOptions {
  /** Decoder layer indices to load (MoE layers only); default every MoE layer. */
  layers?: number[];
}

/** Layer math shared by every layer of the stack (MoELayerConfig without weights). */
export type OffloadLayerConfig = MoELayerConfig;

/** Options of one forward. */
export interface OffloadForwardOptions {
  /** Output dtype; default the input's. */
  outputDtype?: DType;
  /** Policy clock for this step (tokens); default the stack's own token clock. */
  time?: number;
  /** Forced routing (trace replay): [T·k] expert ids (-1 = skip), host memory. The router and gate are skipped. */
  forcedIds?: Int32Array;
  /** [T·k] weights for forcedIds; default 1/k for every used slot. */
  forcedWeights?: Float32Array;
}

interface LayerState {
  routing: ResolvedRouting;
  routerW: Tensor; // [1, cols, H] on the device
  routerB?: Tensor; // [1, cols]
  correctionBias?: Tensor;
  shared?: { wIn: Tensor; wInUp?: Tensor; wOut: Tensor; gate?: Tensor };
}

/** Pre-gating as a lib/cache PrefetchSource: proposals set from the next router's gate. */
export class PregatingPrefetchSource implements PrefetchSource {
  readonly name = 'pregating';
  private layer = -1;
  private probs: Float64Array = new Float64Array(0);
  observe(): void {}
  /** Sets the predicted probability of each expert at `layer` (fraction of the batch's tokens routed to it). */
  setPrediction(layer: number, probs: Float64Array): void {
    this.layer = layer;
    this.probs = probs;
  }
  propose(layer: number, _experts: ArrayLike<number>, out: PrefetchCandidate[]): void {
    if (this.layer !== layer + 1) return;
    const start = out.length;
    for (let e = 0; e < this.probs.length; e++) if (this.probs[e] > 0) out.push({ layer: this.layer, expert: e, probability: this.probs[e] });
    const mine = out.splice(start).sort((a, b) => b.probability - a.probability);
    for (const c of mine) out.push(c);
    this.layer = -1;
  }
  startSequence(): void {
    this.layer = -1;
  }
}

/** A stack of MoE layers with offloaded routed experts. */
export class OffloadedMoE {
  /** MoE layers in the stack. */
  readonly layers: number;
  readonly device: Device;
  readonly store: ExpertStore;
  readonly cache: DeviceExpertCache;
  readonly config: Readonly<Required<Omit<MoELayerConfig, 'routing' | 'capacity'>>> & { capacity: number | undefined; routing: MoELayerConfig['routing'] };
  private state: LayerState[] | undefined;
  private readonly prefetcher: Prefetcher | undefined;
  private readonly pregating: PregatingPrefetchSource | undefined;
  private readonly ownsStore: boolean;
  private clock = 0;

  /**
   * @param config the layers' shape and math (every layer the same)
   * @param resident per layer: router (+ bias, correction bias) and shared experts, host tensors (copied)
   * @param store the routed experts (layers and experts must match)
   */
  constructor(config: OffloadLayerConfig, resident: ResidentWeights[], store: ExpertStore, options: OffloadOptions, internal: { ownsStore?: boolean } = {}) {
    const c = checkOptions<MoELayerConfig>('config', config);
    const hidden = checkInteger('config.hidden', c.hidden, 1, 1 << 20);
    const intermediate = checkInteger('config.intermediate', c.intermediate, 1, 1 << 22);
    const experts = checkInteger('config.experts', c.experts, 1, 1 << 16);
    if (c.routing === undefined) throw typeError('config.routing', 'a routing options object', c.routing);
    const routing = resolveRouting('config.routing', experts, checkOptions('config.routing', c.routing));
    const activation = c.activation === undefined ? 'swiglu' : checkOneOf('config.activation', c.activation, ACTIVATIONS);
    this.config = Object.freeze({
      hidden,
      intermediate,
      experts,
      routing: c.routing,
      activation,
      layoutIn: c.layoutIn === undefined ? 'enk' : checkOneOf('config.layoutIn', c.layoutIn, ['enk', 'ekn'] as const),
      layoutOut: c.layoutOut === undefined ? 'enk' : checkOneOf('config.layoutOut', c.layoutOut, ['enk', 'ekn'] as const),
      alpha: c.alpha === undefined ? 1.702 : checkNumber('config.alpha', c.alpha),
      limit: c.limit === undefined ? 7 : checkNumber('config.limit', c.limit, 0),
      sharedIntermediate: c.sharedIntermediate === undefined ? 0 : checkInteger('config.sharedIntermediate', c.sharedIntermediate, 0, 1 << 22),
      blockSize: c.blockSize === undefined ? 1 : checkInteger('config.blockSize', c.blockSize, 1, 4096),
      capacity: c.capacity === undefined ? undefined : checkInteger('config.capacity', c.capacity, 0, 2 ** 31 - 1),
    });
    if (!(store instanceof ExpertStore)) throw typeError('store', 'an ExpertStore', store);
    if (store.disposed) throw new MoekitError('store has been disposed', 'ERR_DISPOSED');
    if (store.experts !== experts) throw rangeError('store', `a store of ${experts} experts per layer (config.experts)`, `a store of ${store.experts}`);
    if (!Array.isArray(resident) || resident.length !== store.layers) throw rangeError('resident', `an array of ${store.layers} layers' weights (one per store layer)`, resident);
    checkStoreShapes(this.config, store);
    const o = checkOptions<OffloadOptions>('options', options);
    this.device = resolveDevice(o.device, 'options.device');
    this.layers = store.layers;
    this.store = store;
    this.ownsStore = internal.ownsStore ?? false;
    const pf = checkOptions<OffloadPrefetchOptions>('options.prefetch', o.prefetch);
    const affinity = pf.affinity === undefined ? false : checkBoolean('options.prefetch.affinity', pf.affinity);
    const pregating = pf.pregating === undefined ? false : checkBoolean('options.prefetch.pregating', pf.pregating);
    const layerwise = pf.layerwise === undefined ? false : checkBoolean('options.prefetch.layerwise', pf.layerwise);
    if (pf.guard !== undefined) checkBoolean('options.prefetch.guard', pf.guard);
    if (o.cache === undefined) throw typeError('options.cache', 'cache options ({ capacity, perLayer?, policy? })', undefined);
    this.cache = new DeviceExpertCache(store, this.device, o.cache, 'options.cache');
    try {
      const sources: PrefetchSource[] = [];
      if (affinity) sources.push(new AffinityPrefetchSource(store.layers, experts));
      if (layerwise) sources.push(new LayerwisePrefetchSource(store.layers, experts));
      if (pregating) {
        this.pregating = new PregatingPrefetchSource();
        sources.push(this.pregating);
      }
      if (sources.length > 0) {
        const po = { maxPerStep: pf.maxPerStep, minProbability: pf.minProbability, guard: pf.guard, protectProbability: pf.protectProbability };
        this.prefetcher = new Prefetcher(this.cache.core, sources, relabel(po));
      }
      this.state = resident.map((w, l) => this.checkResident(w, l, routing));
    } catch (err) {
      this.cache.dispose();
      throw err;
    }
  }

  /**
   * Loads a Hugging Face checkpoint with its routed experts memory-mapped on the host
   * (an {@link ExpertStore}) and its routers and shared experts resident on the device.
   * Every MoE layer (or `options.layers`) must share one shape (true of every family).
   */
  static async fromPretrained(dir: string, options: OffloadPretrainedOptions): Promise<OffloadedMoE> {
    if (typeof dir !== 'string' || dir === '') throw typeError('dir', 'a checkpoint directory path string', dir);
    if (options === undefined) throw typeError('options', 'an options object with cache options', options);
    const o = checkOptions<OffloadPretrainedOptions>('options', options);
    const infos = selectLayers(listMoELayers(dir), o.layers, 'options.layers');
    resolveDevice(o.device, 'options.device'); // an unusable device fails before anything is read
    const store = ExpertStore.fromPretrained(dir, { layers: infos.map((i) => i.layer) });
    const cp = Checkpoint.open(dir);
    const read: Tensor[] = [];
    try {
      const resident: ResidentWeights[] = [];
      for (const info of infos) {
        const p = blockPrefix(info, cp);
        const r = async (name: string, dtype?: DType) => {
          const t = await cp.read(name, dtype === undefined ? {} : { dtype });
          read.push(t);
          return t;
        };
        const w: ResidentWeights = { router: await r(info.family === 'gpt_oss' ? `${p}.router.weight` : `${p}.gate.weight`) };
        if (info.family === 'gpt_oss') w.routerBias = await r(`${p}.router.bias`, w.router.dtype);
        if (info.family === 'deepseek_v3' && cp.has(`${p}.gate.e_score_correction_bias`)) w.correctionBias = await r(`${p}.gate.e_score_correction_bias`, 'f32');
        if (info.sharedIntermediate > 0) {
          const s = info.family === 'qwen2_moe' ? `${p}.shared_expert` : `${p}.shared_experts`;
          const g = await r(`${s}.gate_proj.weight`);
          w.shared = { gate: g, up: await r(`${s}.up_proj.weight`, g.dtype), down: await r(`${s}.down_proj.weight`) };
          if (info.family === 'qwen2_moe') w.shared.outputGate = await r(`${p}.shared_expert_gate.weight`);
        }
        resident.push(w);
      }
      const info = infos[0];
      const pr = info.preset;
      let alpha = pr.alpha;
      if (info.family === 'gpt_oss') {
        const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
        if (typeof cfg.swiglu_alpha === 'number') alpha = cfg.swiglu_alpha;
      }
      const config: MoELayerConfig = {
        hidden: info.hidden,
        intermediate: info.intermediate,
        experts: info.experts,
        sharedIntermediate: info.sharedIntermediate,
        routing: pr.routing,
        activation: pr.activation,
        layoutIn: pr.layoutIn,
        layoutOut: pr.layoutOut,
        ...(alpha !== undefined ? { alpha } : {}),
        ...(pr.limit !== undefined ? { limit: pr.limit } : {}),
      };
      const { layers: _layers, ...rest } = o;
      void _layers;
      let model: OffloadedMoE | undefined;
      try {
        model = new OffloadedMoE(config, resident, store, rest as OffloadOptions, { ownsStore: true });
        await model.prepare();
      } catch (err) {
        if (model !== undefined) model.dispose();
        throw err;
      }
      return model;
    } catch (err) {
      store.dispose();
      throw err;
    } finally {
      for (const t of read) t.dispose(); // the model keeps device copies
    }
  }

  /** Checkpoint decoder layer index of each MoE layer of the stack. */
  get decoderLayers(): readonly number[] {
    return this.store.decoderLayers;
  }

  private checkResident(w: ResidentWeights, l: number, routing: ResolvedRouting): LayerState {
    const name = `resident[${l}]`;
    const r = checkOptions<ResidentWeights>(name, w) as ResidentWeights;
    const { hidden: H, experts: E } = this.config;
    const cols = E + routing.nullExperts;
    const expect = (n: string, t: unknown, shape: number[], dtypes: readonly DType[] = FLOAT_DTYPES): Tensor => {
      const tensor = checkTensor(n, t);
      if (tensor.shape.join() !== shape.join() || !dtypes.includes(tensor.dtype))
        throw rangeError(n, `a ${dtypes.join('/')} tensor of shape [${shape.join(', ')}]`, describeTensor(tensor));
      return tensor;
    };
    const router = expect(`${name}.router`, r.router, [cols, H]);
    if (r.routerBias !== undefined) expect(`${name}.routerBias`, r.routerBias, [cols], [router.dtype]);
    if (r.correctionBias !== undefined) expect(`${name}.correctionBias`, r.correctionBias, [E], ['f32']);
    const Is = this.config.sharedIntermediate;
    if (r.shared !== undefined) {
      if (Is === 0) throw rangeError('config.sharedIntermediate', `a positive integer when ${name}.shared is given`, 0);
      const s = checkOptions<NonNullable<ResidentWeights['shared']>>(`${name}.shared`, r.shared);
      if (s.gateUp !== undefined) expect(`${name}.shared.gateUp`, s.gateUp, [2 * Is, H]);
      else {
        const g = expect(`${name}.shared.gate`, s.gate, [Is, H]);
        expect(`${name}.shared.up`, s.up, [Is, H], [g.dtype]);
      }
      expect(`${name}.shared.down`, s.down, [H, Is]);
      if (s.outputGate !== undefined) expect(`${name}.shared.outputGate`, s.outputGate, [1, H]);
    } else if (Is > 0) throw rangeError(`${name}.shared`, `shared-expert weights for config.sharedIntermediate = ${Is}`, undefined);
    // Device copies are made lazily on the first forward (async); keep the host tensors until then.
    return { routing, routerW: router, routerB: r.routerBias, correctionBias: r.correctionBias, shared: r.shared ? ({ host: r.shared } as unknown as LayerState['shared']) : undefined };
  }

  private ready: Promise<void> | undefined;

  /** Copies the resident weights to the device (once). */
  private prepare(): Promise<void> {
    if (this.ready === undefined) {
      this.ready = (async () => {
        const st = this.live();
        const dev = this.device.name;
        const made: Tensor[] = [];
        const to = async (t: Tensor | undefined): Promise<Tensor | undefined> => {
          if (t === undefined) return undefined;
          const d = await t.to(dev);
          made.push(d);
          return d;
        };
        /** A [cols, H] host tensor as [1, cols, H] on the device (groupedGemm wants [E, N, K]). */
        const lift = async (t: Tensor | undefined): Promise<Tensor | undefined> => {
          if (t === undefined) return undefined;
          const d = Tensor.empty([1, ...t.shape], t.dtype, dev);
          made.push(d);
          await copyTensorRanges([{ dst: d, dstOffset: 0, src: t, srcOffset: 0, bytes: t.byteLength }]);
          return d;
        };
        try {
          for (const s of st) {
            const host = s.shared as unknown as { host: NonNullable<ResidentWeights['shared']> } | undefined;
            const routerW = (await lift(s.routerW)) as Tensor;
            const routerB = await lift(s.routerB);
            const made0 = correctionBiasFor('config.routing', s.routing, s.correctionBias, (n) => Tensor.zeros([n]));
            const correctionBias = await to(made0);
            if (made0 !== undefined && made0 !== s.correctionBias) made0.dispose();
            let shared: LayerState['shared'];
            if (host !== undefined) {
              const h = host.host;
              shared = {
                wIn: (await to(h.gateUp ?? h.gate)) as Tensor,
                wInUp: h.gateUp === undefined ? await to(h.up) : undefined,
                wOut: (await to(h.down)) as Tensor,
                gate: await to(h.outputGate),
              };
            }
            Object.assign(s, { routerW, routerB, correctionBias, shared });
          }
        } catch (err) {
          for (const t of made) t.dispose();
          this.ready = undefined;
          throw err;
        }
      })();
    }
    return this.ready;
  }

  private live(): LayerState[] {
    if (this.state === undefined) throw new MoekitError('the offloaded model has been disposed', 'ERR_DISPOSED');
    return this.state;
  }

  /**
   * Runs MoE layer `layer` (0 … layers-1) on x [T, hidden] (f32, f16 or bf16, any device).
   * Resolves to the output [T, hidden] on the model's device.
   */
  async forward(layer: number, x: Tensor, options: OffloadForwardOptions = {}): Promise<Tensor> {
    const st = this.live();
    checkInteger('layer', layer, 0, this.layers - 1);
    checkTensor('x', x);
    const { hidden: H } = this.config;
    if (x.shape.length !== 2 || x.shape[1] !== H || !FLOAT_DTYPES.includes(x.dtype))
      throw rangeError('x', `a f32, f16 or bf16 tensor of shape [tokens, ${H}]`, describeTensor(x));
    const o = checkOptions<OffloadForwardOptions>('options', options);
    const outputDtype = o.outputDtype === undefined ? x.dtype : checkOneOf('options.outputDtype', o.outputDtype, FLOAT_DTYPES);
    const time = o.time === undefined ? this.clock : checkNumber('options.time', o.time, 0);
    if (o.time === undefined && layer === this.layers - 1) this.clock += x.shape[0];
    await this.prepare();
    const s = st[layer];
    const T = x.shape[0];
    const temps: Tensor[] = [];
    let acquired: Awaited<ReturnType<DeviceExpertCache['acquire']>> | undefined;
    try {
      const xd = x.device.name === this.device.name ? x : await x.to(this.device.name);
      if (xd !== x) temps.push(xd);
      const slots = s.routing.slots;
      let ids: Int32Array<ArrayBufferLike> = new Int32Array(0);
      let weights: Tensor | undefined;
      if (o.forcedIds !== undefined) {
        ids = checkForced(o.forcedIds, o.forcedWeights, T, slots, this.config.experts);
        const fw = o.forcedWeights ?? Float32Array.from(ids, (e) => (e >= 0 ? 1 / slots : 0));
        const host = Tensor.from(new Float32Array(fw), [T, slots]);
        temps.push(host);
        weights = host;
      } else if (o.forcedWeights !== undefined) {
        throw rangeError('options.forcedWeights', 'forcedIds alongside forcedWeights', 'forcedWeights alone');
      } else if (T > 0) {
        const r = await this.route(s, xd, temps);
        weights = r.weights;
        ids = r.ids;
      }
      // Distinct experts of the batch, ascending.
      const used = new Uint8Array(this.config.experts);
      for (let i = 0; i < ids.length; i++) if (ids[i] >= 0) used[ids[i]] = 1;
      const experts: number[] = [];
      for (let e = 0; e < used.length; e++) if (used[e]) experts.push(e);
      acquired = await this.cache.acquire(layer, experts, time);
      if (this.prefetcher !== undefined) {
        this.prefetcher.observe(layer, experts);
        if (this.pregating === undefined) {
          this.prefetcher.issue(layer, experts, time);
          if (layer + 1 < this.layers) this.cache.startPrefetchCopies(layer + 1);
        }
      }
      const remapped = new Int32Array(ids.length);
      for (let i = 0; i < ids.length; i++) remapped[i] = ids[i] < 0 ? -1 : acquired.indexOf[ids[i]];
      const forcedIdsHost = Tensor.from(remapped, [T, slots], 'i32');
      temps.push(forcedIdsHost);
      const forcedIds = this.device.kind === 'cpu' ? forcedIdsHost : await forcedIdsHost.to(this.device.name);
      if (forcedIds !== forcedIdsHost) temps.push(forcedIds);
      const forcedWeights = weights ?? Tensor.zeros([0, slots]);
      if (weights === undefined) temps.push(forcedWeights);
      const forcedWeightsDev = forcedWeights.device.name === this.device.name ? forcedWeights : await forcedWeights.to(this.device.name);
      if (forcedWeightsDev !== forcedWeights) temps.push(forcedWeightsDev);
      const w = acquired.weights;
      const c = this.config;
      const raw = await (native().moeLayerForward as (p: object) => Promise<RawTensor[]>)({
        x: xd.raw,
        wIn: (w.gateUp ?? w.gate)!.raw,
        wInUp: w.gateUp === undefined ? w.up?.raw : undefined,
        bIn: w.gateUpBias?.raw,
        bInUp: w.upBias?.raw,
        wOut: w.down!.raw,
        bOut: w.downBias?.raw,
        sharedWIn: s.shared?.wIn.raw,
        sharedWInUp: s.shared?.wInUp?.raw,
        sharedWOut: s.shared?.wOut.raw,
        sharedGate: s.shared?.gate?.raw,
        sharedIntermediate: s.shared === undefined ? 0 : c.sharedIntermediate,
        forcedIds: forcedIds.raw,
        forcedWeights: forcedWeightsDev.raw,
        ...layerScalarParams(c, s.routing, outputDtype),
        // The forward sees the acquired slots (or the temporary buffer) as its experts.
        experts: acquired.count,
      });
      const [output, ...rest] = raw.map((r) => new Tensor(r));
      for (const t of rest) t.dispose();
      if (this.pregating !== undefined && this.prefetcher !== undefined && layer + 1 < this.layers && T > 0) {
        try {
          await this.pregate(layer, output, experts, time);
        } catch (err) {
          output.dispose();
          throw err;
        }
      }
      return output;
    } finally {
      acquired?.release();
      for (const t of temps) t.dispose();
    }
  }

  /** Router GEMM + gate on the device; the ids read back to the host. */
  private async route(s: LayerState, xd: Tensor, temps: Tensor[]): Promise<{ ids: Int32Array; weights: Tensor }> {
    const T = xd.shape[0];
    let xf = xd;
    if (xd.dtype !== 'f32') {
      // NOTE: f16/bf16 → f32 is exact; done on the host (no conversion op in lib/ops yet).
      // new Float32Array: the native array may come from another realm (jest), which Tensor.from refuses.
      const host = Tensor.from(new Float32Array(xd.device.kind === 'cpu' ? xd.toFloat32Sync() : await xd.toFloat32()), [T, this.config.hidden]);
      temps.push(host);
      xf = host.device.name === this.device.name ? host : await host.to(this.device.name);
      if (xf !== host) temps.push(xf);
    }
    const offsHost = Tensor.from(new Int32Array([0, T]), [2]);
    temps.push(offsHost);
    const offs = this.device.kind === 'cpu' ? offsHost : await offsHost.to(this.device.name);
    if (offs !== offsHost) temps.push(offs);
    const logits = await groupedGemm(xf, offs, s.routerW, s.routerB === undefined ? {} : { bias: s.routerB });
    temps.push(logits);
    const r = s.routing;
    const routing = await gate(logits, { ...routingOptions(r), experts: r.experts, ...(s.correctionBias ? { correctionBias: s.correctionBias } : {}) });
    temps.push(routing.ids, routing.load, routing.weights);
    // NOTE: a host sync, inherent: the host picks the experts to copy.
    const ids = (await routing.ids.toArray()) as Int32Array;
    return { ids, weights: routing.weights };
  }

  /** Pre-gating: layer+1's router on this layer's output predicts its experts; prefetch them. */
  private async pregate(layer: number, output: Tensor, experts: number[], time: number): Promise<void> {
    const st = this.live();
    const temps: Tensor[] = [];
    try {
      const { ids } = await this.route(st[layer + 1], output, temps);
      const E = this.config.experts;
      const T = output.shape[0];
      const probs = new Float64Array(E);
      const slots = st[layer + 1].routing.slots;
      for (let t = 0; t < T; t++) {
        const seen = new Set<number>();
        for (let q = 0; q < slots; q++) {
          const e = ids[t * slots + q];
          if (e >= 0 && !seen.has(e)) {
            seen.add(e);
            probs[e] += 1 / T;
          }
        }
      }
      (this.pregating as PregatingPrefetchSource).setPrediction(layer + 1, probs);
      (this.prefetcher as Prefetcher).issue(layer, experts, time);
      this.cache.startPrefetchCopies(layer + 1);
    } finally {
      for (const t of temps) t.dispose();
    }
  }

  /** Runs every layer in order, each on the previous one's output; resolves to the last output. */
  async forwardAll(x: Tensor, options: OffloadForwardOptions = {}): Promise<Tensor> {
    let h = x;
    for (let l = 0; l < this.layers; l++) {
      const next = await this.forward(l, h, options);
      if (h !== x) h.dispose();
      h = next;
    }
    return h;
  }

  /** Cache statistics per layer and in total (hits, misses, prefetches, bytes, transfer and stall ms). */
  stats(): { perLayer: CacheStats[]; total: CacheStats } {
    return this.cache.stats();
  }

  /** Waits for prefetch copies in flight (stats are final after it). */
  settle(): Promise<void> {
    return this.cache.settle();
  }

  /** Empties the cache and starts a new sequence for the prefetchers. No forward may be in flight. */
  async reset(): Promise<void> {
    await this.cache.reset();
    this.prefetcher?.startSequence();
  }

  /** True once dispose() has run. */
  get disposed(): boolean {
    return this.state === undefined;
  }

  /** Frees the device weights, the cache slots, and the store when the model made it. */
  dispose(): void {
    const st = this.state;
    if (st === undefined) return;
    this.state = undefined;
    const ready = this.ready;
    const free = () => {
      for (const s of st) for (const t of [s.routerW, s.routerB, s.correctionBias, s.shared?.wIn, s.shared?.wInUp, s.shared?.wOut, s.shared?.gate]) t?.dispose();
    };
    // Device copies exist only once prepare() has finished.
    if (ready !== undefined) void ready.then(free, () => undefined);
    this.cache.dispose();
    if (this.ownsStore) this.store.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function checkForced(ids: unknown, weights: unknown, T: number, slots: number, E: number): Int32Array {
  if (!(ids instanceof Int32Array) && !(ArrayBuffer.isView(ids) && (ids as object).constructor.name === 'Int32Array'))
    throw typeError('options.forcedIds', `an Int32Array of ${T * slots} expert ids`, ids);
  const a = ids as Int32Array;
  if (a.length !== T * slots) throw rangeError('options.forcedIds', `${T * slots} ids ([${T}, ${slots}])`, a);
  for (let i = 0; i < a.length; i++)
    if (!(a[i] >= -1 && a[i] < E)) throw rangeError('options.forcedIds', `expert ids in [-1, ${E})`, `${a[i]} at [${Math.floor(i / slots)}, ${i % slots}]`);
  if (weights !== undefined) {
    if (!ArrayBuffer.isView(weights) || (weights as object).constructor.name !== 'Float32Array' || (weights as Float32Array).length !== T * slots)
      throw typeError('options.forcedWeights', `a Float32Array of ${T * slots} weights`, weights);
  }
  return a;
}

function routingOptions(r: ResolvedRouting): RoutingOptions {
  return {
    k: r.k,
    scoring: r.scoring,
    selection: r.selection,
    nullExperts: r.nullExperts,
    nGroup: r.nGroup,
    topkGroup: r.topkGroup,
    ...(r.groupScore !== undefined ? { groupScore: r.groupScore } : {}),
    renormalize: r.renormalize,
    routedScaling: r.routedScaling,
    topP: r.topP,
    capacityFactor: r.capacityFactor,
    choiceK: r.choiceK,
    sinkhornIters: r.sinkhornIters,
  };
}

type PrefetcherOpts = { maxPerStep?: number; minProbability?: number; guard?: boolean; protectProbability?: number };
function relabel(o: PrefetcherOpts): PrefetcherOpts {
  if (o.maxPerStep !== undefined) checkInteger('options.prefetch.maxPerStep', o.maxPerStep, 0);
  if (o.minProbability !== undefined) checkNumber('options.prefetch.minProbability', o.minProbability, 0, 1);
  if (o.protectProbability !== undefined) checkNumber('options.prefetch.protectProbability', o.protectProbability, 0, 1);
  const out: PrefetcherOpts = {};
  if (o.protectProbability !== undefined) out.protectProbability = o.protectProbability;
  if (o.maxPerStep !== undefined) out.maxPerStep = o.maxPerStep;
  if (o.minProbability !== undefined) out.minProbability = o.minProbability;
  if (o.guard !== undefined) out.guard = o.guard;
  return out;
}

/** The store's expert weights must be what the config's layer reads. */
function checkStoreShapes(c: OffloadedMoE['config'], store: ExpertStore): void {
  const { hidden: H, intermediate: I } = c;
  const glu = c.activation === 'swiglu' || c.activation === 'swiglu-interleaved' || c.activation === 'gpt-oss-swiglu' || c.activation === 'geglu';
  const inShape = (n: number) => (c.layoutIn === 'enk' ? [n, H] : [H, n]);
  const want: Record<string, number[]> = {};
  if (store.spec('gateUp')) {
    want.gateUp = inShape(glu ? 2 * I : I);
    if (store.spec('gateUpBias')) want.gateUpBias = [glu ? 2 * I : I];
    if (store.spec('gate') || store.spec('up') || store.spec('upBias')) throw rangeError('store', 'either gateUp or gate + up experts, not both', 'both');
  } else {
    if (!store.spec('gate') || !store.spec('up')) throw rangeError('store', 'experts with gateUp, or gate and up', 'neither');
    if (c.activation !== 'swiglu' && c.activation !== 'geglu') throw rangeError('config.activation', "'swiglu' or 'geglu' with separate gate and up experts", c.activation);
    want.gate = inShape(I);
    want.up = inShape(I);
    if (store.spec('gateUpBias')) want.gateUpBias = [I];
    if (store.spec('upBias')) want.upBias = [I];
  }
  want.down = c.layoutOut === 'enk' ? [H, I] : [I, H];
  if (store.spec('downBias')) want.downBias = [H];
  for (const s of store.specs) {
    const w = want[s.role];
    if (w === undefined || w.join() !== s.shape.join()) throw rangeError(`store (${s.role})`, `expert ${s.role} weights of shape [${(w ?? []).join(', ')}] for this config`, `[${s.shape.join(', ')}]`);
  }
  if (store.spec('gate') && store.spec('up') && store.spec('gate')!.dtype !== store.spec('up')!.dtype) throw rangeError('store (up)', `the gate's dtype ${store.spec('gate')!.dtype}`, store.spec('up')!.dtype);
}
