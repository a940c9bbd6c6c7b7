/**
 * DeviceExpertCache: expert slots on a device, driven by {@link ExpertCacheCore} (the
 * same residency, pinning and eviction code as the trace simulator).
 *
 * Each partition (one per layer, or one shared by all layers) preallocates one slot
 * tensor per expert weight, [C, …] in the store's dtype and per-expert shape, and a slot
 * table (key ↔ slot). The core decides what is resident; after each core call the table
 * is reconciled with it: slots of evicted keys are freed, newly resident keys (demand
 * misses or prefetches) get a free slot and a copy from the store. Every write to a
 * slot is chained after the slot's previous write, and a forward waits for the slots it
 * reads (that wait is the stall time).
 *
 * One access is one forward at one layer: the distinct experts of the batch, pinned
 * together until {@link Acquired.release} (so for one token it is the simulator's step).
 * Experts the core cannot admit (everything resident is pinned) are served from a
 * temporary buffer for that forward: never from a slot another expert owns.
 */
import { Device } from '../device';
import { MoekitError, checkBoolean, checkInteger, checkNumber, checkOneOf, checkOptions, rangeError, typeError } from '../errors';
import { CacheStats, ExpertCacheCore } from '../cache/expert_cache';
import { EvictionPolicy, POLICY_NAMES, PolicyName, PolicyOptions } from '../cache/policy';
import { Tensor } from '../tensor';
import { ExpertRole, ExpertStore, copyTensorRanges } from './store';

/** Options of the device cache. */
export interface DeviceCacheOptions {
  /** Capacity in experts (default unit) or bytes; per layer with `perLayer`, else of the one shared cache. */
  capacity: number;
  /** `'experts'` (default) or `'bytes'` (rounded down to whole experts: every slot holds one expert). */
  capacityUnit?: 'experts' | 'bytes';
  /** One cache per layer (true) or one shared by all layers (false, default). */
  perLayer?: boolean;
  /** Eviction policy of lib/cache/policy.ts (default 'lru'), or a factory. 'belady' is offline-only: refused. */
  policy?: PolicyName | ((keys: number) => EvictionPolicy);
  /** Options of a named policy (LFRU half-life in tokens, a static popularity profile). */
  policyOptions?: PolicyOptions;
}

/** The weights a forward reads for the experts it acquired. */
export interface Acquired {
  /** Expert → index into the weight tensors below (-1 for experts not acquired). */
  indexOf: Int32Array;
  /** Number of [·] rows of the weight tensors (slots, or the temporary buffer's experts). */
  count: number;
  /** One tensor per role: the partition's slot tensors, or a temporary buffer. */
  weights: Partial<Record<ExpertRole, Tensor>>;
  /** Experts served from a temporary buffer (could not be admitted). */
  rejected: number[];
  /** Releases the pins and any temporary buffer. Call once the forward has finished. */
  release(): void;
}

interface Partition {
  slots: Partial<Record<ExpertRole, Tensor>>;
  count: number;
  keyOfSlot: Int32Array;
  free: number[];
  /** Last write to each slot (resolves when the slot holds its key's weights). */
  ready: Promise<void>[];
}

/** Expert slots on a device, with an ExpertCacheCore deciding residency. */
export class DeviceExpertCache {
  readonly core: ExpertCacheCore;
  readonly device: Device;
  readonly store: ExpertStore;
  /** Slots per partition. */
  readonly slotsPerPartition: number;
  readonly perLayer: boolean;
  private readonly parts: Partition[];
  private readonly slotOfKey: Int32Array;
  private failure: Error | undefined;
  private disposedFlag = false;
  /** Copies still running (prefetches): awaited by settle(). */
  private readonly inflight = new Set<Promise<void>>();

  constructor(store: ExpertStore, device: Device, options: DeviceCacheOptions, name = 'options') {
    const o = checkOptions<DeviceCacheOptions>(name, options);
    if (o.capacity === undefined) throw typeError(`${name}.capacity`, 'a capacity in experts or bytes', undefined);
    const unit = o.capacityUnit === undefined ? 'experts' : checkOneOf(`${name}.capacityUnit`, o.capacityUnit, ['experts', 'bytes'] as const);
    const perLayer = o.perLayer === undefined ? false : checkBoolean(`${name}.perLayer`, o.perLayer);
    let slots: number;
    if (unit === 'experts') slots = checkInteger(`${name}.capacity`, o.capacity, 1);
    else {
      const bytes = checkNumber(`${name}.capacity`, o.capacity, 0);
      slots = Math.floor(bytes / store.expertBytes);
      if (slots < 1) throw rangeError(`${name}.capacity`, `at least one expert's bytes (${store.expertBytes})`, o.capacity);
    }
    const policy = o.policy ?? 'lru';
    if (policy === 'belady') throw rangeError(`${name}.policy`, `an online policy (${POLICY_NAMES.filter((p) => p !== 'belady').map((p) => `'${p}'`).join(', ')}): 'belady' needs the future`, policy);
    const keysPerPartition = perLayer ? store.experts : store.layers * store.experts;
    slots = Math.min(slots, keysPerPartition); // more slots than keys would never be used
    // Policy names and options are validated by the core.
    this.core = new ExpertCacheOptionsError(name).wrap(
      () =>
        new ExpertCacheCore({
          layers: store.layers,
          expertsPerLayer: store.experts,
          capacity: slots,
          capacityUnit: 'experts',
          expertBytes: store.expertBytes,
          perLayer,
          policy,
          policyOptions: o.policyOptions,
        }),
    );
    this.store = store;
    this.device = device;
    this.perLayer = perLayer;
    this.slotsPerPartition = slots;
    this.slotOfKey = new Int32Array(store.layers * store.experts).fill(-1);
    this.parts = [];
    try {
      for (let i = 0; i < (perLayer ? store.layers : 1); i++) {
        const t: Partial<Record<ExpertRole, Tensor>> = {};
        this.parts.push({ slots: t, count: slots, keyOfSlot: new Int32Array(slots).fill(-1), free: Array.from({ length: slots }, (_, s) => slots - 1 - s), ready: Array.from({ length: slots }, () => Promise.resolve()) });
        for (const s of store.specs) t[s.role] = Tensor.empty([slots, ...s.shape], s.dtype, device.name);
      }
    } catch (err) {
      this.dispose();
      throw err;
    }
  }

  /** Device bytes the slots take. */
  get slotBytes(): number {
    return this.parts.length * this.slotsPerPartition * this.store.expertBytes;
  }

  private partition(layer: number): Partition {
    return this.parts[this.perLayer ? layer : 0];
  }

  private checkUsable(): void {
    if (this.disposedFlag) throw new MoekitError('the expert cache has been disposed', 'ERR_DISPOSED');
    if (this.failure !== undefined)
      throw new MoekitError(`the expert cache lost an expert copy (${this.failure.message}); call reset() before using it again`, 'ERR_INTERNAL');
  }

  /**
   * Brings the slot table in line with the core for `layers`: frees the slots of evicted
   * keys, gives newly resident keys a slot and starts their copies. `prefetch` marks
   * copies that nobody waits for yet (their time is added when they finish).
   */
  private reconcile(layer: number, track: (p: Promise<number>, layer: number) => void): void {
    const p = this.partition(layer);
    const E = this.store.experts;
    for (let s = 0; s < p.count; s++) {
      const key = p.keyOfSlot[s];
      if (key >= 0 && !this.core.isResident(Math.floor(key / E), key % E)) {
        p.keyOfSlot[s] = -1;
        this.slotOfKey[key] = -1;
        p.free.push(s);
      }
    }
    const layers = this.perLayer ? [layer] : Array.from({ length: this.store.layers }, (_, l) => l);
    for (const l of layers) {
      for (const e of this.core.residentExperts(l)) {
        const key = l * E + e;
        if (this.slotOfKey[key] >= 0) continue;
        const s = p.free.pop();
        if (s === undefined) throw new MoekitError('expert cache: no free slot for a resident expert (slot table out of step with the core)', 'ERR_INTERNAL');
        p.keyOfSlot[s] = key;
        this.slotOfKey[key] = s;
        const copy = p.ready[s].then(() => this.store.copyExpert(l, e, this.targets(p, s)));
        p.ready[s] = copy.then(
          () => undefined,
          (err: Error) => {
            this.failure = err;
            throw err;
          },
        );
        // A prefetch copy's failure is seen by the next reader of the slot (and by
        // `failure`); without a handler here it would be an unhandled rejection.
        p.ready[s].catch(() => undefined);
        track(copy, l);
      }
    }
  }

  private targets(p: Partition, slot: number): { tensor: Tensor; offset: number }[] {
    return this.store.specs.map((s) => ({ tensor: p.slots[s.role] as Tensor, offset: slot * s.bytes }));
  }

  /**
   * Pins `experts` (distinct ids) of `layer` for a forward, fetches the missing ones and
   * resolves once every one is on the device. Stats: hits, misses, bytes through the
   * core; transfer time (the copies' own time) and stall time (how long this call
   * waited for copies) through core.addTimes.
   */
  async acquire(layer: number, experts: number[], time: number): Promise<Acquired> {
    this.checkUsable();
    checkInteger('layer', layer, 0, this.store.layers - 1);
    const E = this.store.experts;
    const copies: Promise<number>[] = [];
    const transfer = (c: Promise<number>, l: number) => {
      copies.push(c);
      void c.then((ms) => this.core.addTimes(l, ms, 0), () => undefined);
    };
    const step = this.core.access(layer, experts, time);
    let released = false;
    const temporaries: Tensor[] = [];
    const release = () => {
      if (released) return;
      released = true;
      for (const t of temporaries) t.dispose();
      this.core.release(layer, experts);
    };
    try {
      this.reconcile(layer, transfer);
      const p = this.partition(layer);
      const rejected = step.rejected > 0 ? experts.filter((e) => this.slotOfKey[layer * E + e] < 0) : [];
      const waitStart = performance.now();
      await Promise.all(experts.filter((e) => this.slotOfKey[layer * E + e] >= 0).map((e) => p.ready[this.slotOfKey[layer * E + e]]));
      const indexOf = new Int32Array(E).fill(-1);
      let weights = p.slots;
      let count = p.count;
      if (rejected.length === 0) {
        for (const e of experts) indexOf[e] = this.slotOfKey[layer * E + e];
      } else {
        // A temporary buffer with exactly this forward's experts: resident ones copied from
        // their slots on the device, the rejected ones from the store.
        count = experts.length;
        weights = {};
        for (const s of this.store.specs) {
          const t = Tensor.empty([count, ...s.shape], s.dtype, this.device.name);
          temporaries.push(t);
          weights[s.role] = t;
        }
        const fromSlots: Parameters<typeof copyTensorRanges>[0] = [];
        experts.forEach((e, i) => {
          indexOf[e] = i;
          const slot = this.slotOfKey[layer * E + e];
          if (slot < 0) {
            transfer(this.store.copyExpert(layer, e, this.store.specs.map((s) => ({ tensor: weights[s.role] as Tensor, offset: i * s.bytes }))), layer);
          } else {
            for (const s of this.store.specs) fromSlots.push({ dst: weights[s.role] as Tensor, dstOffset: i * s.bytes, src: p.slots[s.role] as Tensor, srcOffset: slot * s.bytes, bytes: s.bytes });
          }
        });
        if (fromSlots.length > 0) copies.push(copyTensorRanges(fromSlots));
      }
      await Promise.all(copies);
      this.core.addTimes(layer, 0, performance.now() - waitStart);
      return { indexOf, count, weights, rejected, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  /**
   * After the core admitted prefetches (ExpertCacheCore.prefetch, e.g. through a
   * lib/cache Prefetcher): gives them slots and starts their copies without waiting.
   */
  startPrefetchCopies(layer: number): void {
    this.checkUsable();
    this.reconcile(layer, (c, l) => {
      const done: Promise<void> = c.then(
        (ms) => this.core.addTimes(l, ms, 0),
        () => undefined,
      );
      this.inflight.add(done);
      void done.then(() => this.inflight.delete(done));
    });
  }

  /** Resolves when every prefetch copy started so far has finished. */
  async settle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  /** Slot of `expert` at `layer`, or -1 when not resident. */
  slotOf(layer: number, expert: number): number {
    checkInteger('layer', layer, 0, this.store.layers - 1);
    checkInteger('expert', expert, 0, this.store.experts - 1);
    return this.slotOfKey[layer * this.store.experts + expert];
  }

  /** Statistics per layer and in total (the core's, with measured times). */
  stats(): { perLayer: CacheStats[]; total: CacheStats } {
    return this.core.stats();
  }

  /** Empties the cache (no forward may be in flight). Clears a failed copy. */
  async reset(): Promise<void> {
    await this.settle();
    await Promise.all(this.parts.flatMap((p) => p.ready.map((r) => r.catch(() => undefined))));
    this.core.reset();
    for (const p of this.parts) {
      p.keyOfSlot.fill(-1);
      p.free = Array.from({ length: p.count }, (_, s) => p.count - 1 - s);
      // The chains are kept (errors dropped): a copy started after the wait above still
      // orders the slot's next write after it.
      p.ready = p.ready.map((r) => r.catch(() => undefined));
    }
    this.slotOfKey.fill(-1);
    this.failure = undefined;
  }

  /** Frees the slot tensors. Copies in flight keep their memory until they end. */
  dispose(): void {
    this.disposedFlag = true;
    for (const p of this.parts) for (const t of Object.values(p.slots)) t?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Re-labels the core's option errors with the caller's argument name. */
class ExpertCacheOptionsError {
  constructor(private readonly name: string) {}
  wrap<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof TypeError || err instanceof RangeError) {
        const msg = err.message.replace(/ for options\./, ` for ${this.name}.`);
        throw err instanceof TypeError ? new TypeError(msg) : new RangeError(msg);
      }
      throw err;
    }
  }
}
