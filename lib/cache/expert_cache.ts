/**
 * The device-independent logic of an expert cache: which experts are resident, what to
 * evict, what is pinned by a forward in flight, and the statistics. The trace simulator
 * runs this class directly; the GPU ExpertCache drives it and does the copies (and fills
 * in the transfer and stall times).
 *
 * Semantics (docs/CACHE.md): a step is one token at one layer. {@link ExpertCacheCore.access}
 * pins every expert of the step before admitting any, so the experts of one step cannot
 * evict each other; a hit is an expert resident when its step needs it. Pinned experts
 * are never evicted: when an expert must be admitted and every resident one is pinned,
 * the cache reports that it cannot admit (the access is counted in `rejected` and the
 * caller must serve it without caching it) instead of evicting a pinned expert.
 */
import { checkBoolean, checkInteger, checkNumber, checkOptions, MoekitError, rangeError, typeError } from '../errors';
import { createPolicy, EvictionPolicy, PinnedKeys, PolicyName, PolicyOptions, POLICY_NAMES } from './policy';

/** Counters of one layer, or of the whole cache. */
export interface CacheStats {
  /** Demand accesses: one per expert per step. */
  accesses: number;
  /** Accesses whose expert was resident (demand-fetched earlier or prefetched). */
  hits: number;
  /** Accesses whose expert had to be fetched on demand. */
  misses: number;
  /** Misses that could not be admitted because every resident expert was pinned. */
  rejected: number;
  /** Prefetches that moved an expert. */
  prefetchesIssued: number;
  /** Prefetched experts later hit by a step (counted once, at their first use). */
  prefetchesUsed: number;
  /** Prefetched experts evicted, or dropped by a reset, before any step used them. */
  prefetchesWasted: number;
  /** Bytes moved onto the device: demand fetches plus prefetches. */
  bytesMoved: number;
  /** Of {@link CacheStats.bytesMoved}, the bytes moved by prefetches. */
  prefetchBytes: number;
  /** Time spent copying experts, in ms (filled by the GPU cache; 0 in the simulator). */
  transferMs: number;
  /** Time compute waited for experts, in ms (filled by the GPU cache; 0 in the simulator). */
  stallMs: number;
}

/** A zeroed {@link CacheStats}. */
export function emptyStats(): CacheStats {
  return { accesses: 0, hits: 0, misses: 0, rejected: 0, prefetchesIssued: 0, prefetchesUsed: 0, prefetchesWasted: 0, bytesMoved: 0, prefetchBytes: 0, transferMs: 0, stallMs: 0 };
}

/** Adds `b` into `a`. */
export function addStats(a: CacheStats, b: CacheStats): CacheStats {
  for (const k of Object.keys(a) as (keyof CacheStats)[]) a[k] += b[k];
  return a;
}

/** Options of {@link ExpertCacheCore}. */
export interface ExpertCacheOptions {
  /** Number of MoE layers. */
  layers: number;
  /** Routed experts per layer. */
  expertsPerLayer: number;
  /**
   * Capacity: experts (default) or bytes, see `capacityUnit`. With `perLayer` it is the
   * capacity of each layer's cache; otherwise of the one cache all layers share.
   */
  capacity: number;
  /** `'experts'` (default) or `'bytes'`. */
  capacityUnit?: 'experts' | 'bytes';
  /**
   * Bytes of one expert: one number for all, or one per key (`layer * expertsPerLayer +
   * expert`). Default 1, so bytes moved count experts.
   */
  expertBytes?: number | ArrayLike<number>;
  /** One cache per layer (true) or one shared by all layers (false, default). */
  perLayer?: boolean;
  /** Eviction policy: a name, or a factory called once per cache partition. */
  policy?: PolicyName | ((keys: number) => EvictionPolicy);
  /** Options for a named policy. */
  policyOptions?: PolicyOptions;
}

/** What {@link ExpertCacheCore.prefetch} did. */
export type PrefetchOutcome = 'fetched' | 'resident' | 'declined' | 'rejected';

/** Result of {@link ExpertCacheCore.access}: counts for this step. */
export interface StepResult {
  hits: number;
  misses: number;
  rejected: number;
}

class Partition {
  readonly residents = new Set<number>();
  used = 0;
  constructor(
    readonly capacity: number,
    readonly policy: EvictionPolicy,
  ) {}
}

/** Pin counts, usable as the `pinned` argument of a policy. */
class PinCounts implements PinnedKeys {
  readonly counts: Int32Array;
  constructor(keys: number) {
    this.counts = new Int32Array(keys);
  }
  has(key: number): boolean {
    return this.counts[key] > 0;
  }
}

/** Device-independent expert cache: residency, pinning, eviction, statistics. */
export class ExpertCacheCore {
  /** Number of MoE layers. */
  readonly layers: number;
  /** Routed experts per layer. */
  readonly expertsPerLayer: number;
  /** Whether each layer has its own cache. */
  readonly perLayer: boolean;
  /** Capacity of each partition (per layer, or the shared one), in `capacityUnit`. */
  readonly capacity: number;
  /** Unit of {@link ExpertCacheCore.capacity}. */
  readonly capacityUnit: 'experts' | 'bytes';
  private readonly partitions: Partition[];
  private readonly resident: Uint8Array;
  private readonly prefetched: Uint8Array;
  private readonly sizes: Float64Array;
  private readonly pins: PinCounts;
  private readonly layerStats: CacheStats[];

  constructor(options: ExpertCacheOptions) {
    const o = checkOptions<ExpertCacheOptions>('options', options);
    this.layers = checkInteger('options.layers', o.layers, 1);
    this.expertsPerLayer = checkInteger('options.expertsPerLayer', o.expertsPerLayer, 1);
    this.perLayer = o.perLayer === undefined ? false : checkBoolean('options.perLayer', o.perLayer);
    const unit = o.capacityUnit ?? 'experts';
    if (unit !== 'experts' && unit !== 'bytes') throw rangeError('options.capacityUnit', "'experts' or 'bytes'", unit);
    this.capacityUnit = unit;
    this.capacity = unit === 'experts' ? checkInteger('options.capacity', o.capacity, 1) : checkNumber('options.capacity', o.capacity, 0);
    const keys = this.layers * this.expertsPerLayer;
    this.sizes = new Float64Array(keys);
    const eb = o.expertBytes ?? 1;
    if (typeof eb === 'number') this.sizes.fill(checkNumber('options.expertBytes', eb, 0));
    else if (eb !== null && typeof eb === 'object' && typeof (eb as ArrayLike<number>).length === 'number') {
      if (eb.length !== keys) throw rangeError('options.expertBytes', `a number or ${keys} sizes (layers × expertsPerLayer)`, eb);
      for (let i = 0; i < keys; i++) this.sizes[i] = checkNumber(`options.expertBytes[${i}]`, eb[i], 0);
    } else throw typeError('options.expertBytes', 'a number or an array of sizes', eb);
    const policy = o.policy ?? 'lru';
    let make: (keys: number) => EvictionPolicy;
    if (typeof policy === 'function') make = policy;
    else if (typeof policy === 'string' && (POLICY_NAMES as readonly string[]).includes(policy)) make = (k) => createPolicy(policy, k, o.policyOptions);
    else throw (typeof policy === 'string' ? rangeError : typeError)('options.policy', `one of ${POLICY_NAMES.map((p) => `'${p}'`).join(', ')} or a policy factory`, policy);
    const count = this.perLayer ? this.layers : 1;
    this.partitions = [];
    for (let i = 0; i < count; i++) this.partitions.push(new Partition(this.capacity, make(keys)));
    this.resident = new Uint8Array(keys);
    this.prefetched = new Uint8Array(keys);
    this.pins = new PinCounts(keys);
    this.layerStats = [];
    for (let l = 0; l < this.layers; l++) this.layerStats.push(emptyStats());
  }

  /** The key of `expert` at `layer`: `layer * expertsPerLayer + expert`. */
  key(layer: number, expert: number): number {
    return layer * this.expertsPerLayer + expert;
  }

  /** The eviction policy that ranks `layer`'s experts. */
  policyOf(layer: number): EvictionPolicy {
    return this.partitionOf(layer).policy;
  }

  private partitionOf(layer: number): Partition {
    return this.partitions[this.perLayer ? layer : 0];
  }

  private checkLayerExpert(layer: number, expert: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers) checkInteger('layer', layer, 0, this.layers - 1);
    if (!Number.isInteger(expert) || expert < 0 || expert >= this.expertsPerLayer) checkInteger('expert', expert, 0, this.expertsPerLayer - 1);
  }

  /** Whether `expert` of `layer` is resident. */
  isResident(layer: number, expert: number): boolean {
    this.checkLayerExpert(layer, expert);
    return this.resident[this.key(layer, expert)] === 1;
  }

  /** Whether `expert` of `layer` is resident through a prefetch no step has used yet. */
  isPrefetchedUnused(layer: number, expert: number): boolean {
    this.checkLayerExpert(layer, expert);
    return this.prefetched[this.key(layer, expert)] === 1;
  }

  /** Resident experts of `layer`, ascending. */
  residentExperts(layer: number): number[] {
    checkInteger('layer', layer, 0, this.layers - 1);
    const out: number[] = [];
    for (let e = 0; e < this.expertsPerLayer; e++) if (this.resident[this.key(layer, e)] === 1) out.push(e);
    return out;
  }

  /** Space used in `layer`'s partition (experts or bytes, per `capacityUnit`). */
  used(layer: number): number {
    checkInteger('layer', layer, 0, this.layers - 1);
    return this.partitionOf(layer).used;
  }

  /** Pins `expert` of `layer` (counted: pin twice, unpin twice). A pinned expert is never evicted. */
  pin(layer: number, expert: number): void {
    this.checkLayerExpert(layer, expert);
    this.pins.counts[this.key(layer, expert)]++;
  }

  /** Releases one pin of `expert` of `layer`. */
  unpin(layer: number, expert: number): void {
    this.checkLayerExpert(layer, expert);
    const k = this.key(layer, expert);
    if (this.pins.counts[k] === 0) throw new MoekitError(`unpin: expert ${expert} of layer ${layer} is not pinned`, 'ERR_INVALID_ARGUMENT');
    this.pins.counts[k]--;
  }

  /** Whether `expert` of `layer` is pinned. */
  isPinned(layer: number, expert: number): boolean {
    this.checkLayerExpert(layer, expert);
    return this.pins.counts[this.key(layer, expert)] > 0;
  }

  private cost(key: number): number {
    return this.capacityUnit === 'experts' ? 1 : this.sizes[key];
  }

  /**
   * Makes room for `key` in `p`; false (nothing evicted) when the unpinned residents
   * cannot free enough space. `minPriority`: evict only keys whose priority is below it
   * (a prefetch's guard); with it, returns false rather than evict a more valuable key.
   */
  private makeRoom(p: Partition, key: number, minPriority: number): boolean {
    const need = this.cost(key);
    if (need > p.capacity) return false;
    if (p.used + need <= p.capacity) return true;
    if (this.capacityUnit === 'bytes' || minPriority !== Infinity) {
      // Check feasibility first so that a refusal evicts nothing.
      let free = p.capacity - p.used;
      const order: number[] = [];
      const candidates = new Set(p.residents);
      while (free < need) {
        const v = p.policy.chooseVictim(candidates, this.pins);
        if (v === undefined || p.policy.priority(v) >= minPriority) return false;
        candidates.delete(v);
        order.push(v);
        free += this.cost(v);
      }
      for (const v of order) this.evict(p, v);
      return true;
    }
    while (p.used + need > p.capacity) {
      const v = p.policy.chooseVictim(p.residents, this.pins);
      if (v === undefined) return false;
      this.evict(p, v);
    }
    return true;
  }

  private evict(p: Partition, key: number): void {
    p.residents.delete(key);
    p.used -= this.cost(key);
    this.resident[key] = 0;
    if (this.prefetched[key] === 1) {
      this.prefetched[key] = 0;
      this.layerStats[Math.floor(key / this.expertsPerLayer)].prefetchesWasted++;
    }
    p.policy.onEvict(key);
  }

  private insert(p: Partition, key: number, time: number, prefetch: boolean): void {
    p.residents.add(key);
    p.used += this.cost(key);
    this.resident[key] = 1;
    if (prefetch) this.prefetched[key] = 1;
    p.policy.onInsert(key, time, prefetch);
  }

  /**
   * One step: the experts `experts` (the token's top-k at `layer`, in slot order) are
   * needed at `time`. Pins them all first (so they cannot evict each other), then, slot by
   * slot, counts a hit or fetches the expert (evicting unpinned experts by the policy).
   * The pins stay until {@link ExpertCacheCore.release} (the forward is in flight).
   * `nextUses[i]` is the next use time of `experts[i]` after this step, for offline
   * policies (Belady) only.
   */
  access(layer: number, experts: ArrayLike<number>, time: number, nextUses?: ArrayLike<number>): StepResult {
    const E = this.expertsPerLayer;
    for (let i = 0; i < experts.length; i++) this.checkLayerExpert(layer, experts[i]);
    for (let i = 0; i < experts.length; i++) {
      for (let j = 0; j < i; j++) if (experts[j] === experts[i]) throw rangeError('experts', 'distinct expert ids within a step', experts);
    }
    const p = this.partitionOf(layer);
    const st = this.layerStats[layer];
    const base = layer * E;
    for (let i = 0; i < experts.length; i++) this.pins.counts[base + experts[i]]++;
    const result: StepResult = { hits: 0, misses: 0, rejected: 0 };
    for (let i = 0; i < experts.length; i++) {
      const key = base + experts[i];
      st.accesses++;
      if (this.resident[key] === 1) {
        st.hits++;
        result.hits++;
        if (this.prefetched[key] === 1) {
          this.prefetched[key] = 0;
          st.prefetchesUsed++;
        }
      } else {
        st.misses++;
        result.misses++;
        st.bytesMoved += this.sizes[key];
        if (this.makeRoom(p, key, Infinity)) this.insert(p, key, time, false);
        else {
          st.rejected++;
          result.rejected++;
        }
      }
      p.policy.onAccess(key, time, nextUses === undefined ? undefined : nextUses[i]);
    }
    return result;
  }

  /** Releases the pins {@link ExpertCacheCore.access} took for a step. */
  release(layer: number, experts: ArrayLike<number>): void {
    for (let i = 0; i < experts.length; i++) this.unpin(layer, experts[i]);
  }

  /**
   * Fetches `expert` of `layer` ahead of need. Returns `'resident'` when already there,
   * `'fetched'` when moved, `'declined'` when making room would evict an expert the
   * policy ranks at or above `minVictimPriority` (default: any unpinned expert may go),
   * and `'rejected'` when every resident expert is pinned. Never evicts a pinned expert.
   */
  prefetch(layer: number, expert: number, time: number, minVictimPriority = Infinity): PrefetchOutcome {
    this.checkLayerExpert(layer, expert);
    const key = this.key(layer, expert);
    if (this.resident[key] === 1) return 'resident';
    const p = this.partitionOf(layer);
    if (!this.makeRoom(p, key, minVictimPriority)) {
      // Distinguish "all pinned" from "only valuable victims".
      return p.policy.chooseVictim(p.residents, this.pins) === undefined && p.used + this.cost(key) > p.capacity ? 'rejected' : 'declined';
    }
    this.insert(p, key, time, true);
    const st = this.layerStats[layer];
    st.prefetchesIssued++;
    st.bytesMoved += this.sizes[key];
    st.prefetchBytes += this.sizes[key];
    return 'fetched';
  }

  /**
   * Empties the cache (a new sequence starts): unused prefetches count as wasted, the
   * policies forget per-sequence state. Pins must all be released first.
   */
  reset(): void {
    for (let k = 0; k < this.pins.counts.length; k++)
      if (this.pins.counts[k] > 0) throw new MoekitError('reset: experts are still pinned by a forward in flight', 'ERR_INVALID_ARGUMENT');
    this.dropUnusedPrefetches();
    for (const p of this.partitions) {
      for (const k of p.residents) {
        this.resident[k] = 0;
        p.policy.onEvict(k);
      }
      p.residents.clear();
      p.used = 0;
      p.policy.reset();
    }
  }

  /** Counts prefetched experts that no step used as wasted (call at the end of a run). */
  dropUnusedPrefetches(): void {
    for (let k = 0; k < this.prefetched.length; k++) {
      if (this.prefetched[k] === 1) {
        this.prefetched[k] = 0;
        this.layerStats[Math.floor(k / this.expertsPerLayer)].prefetchesWasted++;
      }
    }
  }

  /** Adds measured times (the GPU cache's copies and waits) to `layer`'s stats. */
  addTimes(layer: number, transferMs: number, stallMs: number): void {
    checkInteger('layer', layer, 0, this.layers - 1);
    this.layerStats[layer].transferMs += checkNumber('transferMs', transferMs, 0);
    this.layerStats[layer].stallMs += checkNumber('stallMs', stallMs, 0);
  }

  /** A copy of the statistics: per layer, and the total. */
  stats(): { perLayer: CacheStats[]; total: CacheStats } {
    const perLayer = this.layerStats.map((s) => ({ ...s }));
    const total = emptyStats();
    for (const s of perLayer) addStats(total, s);
    return { perLayer, total };
  }
}
