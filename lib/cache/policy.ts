/**
 * Eviction policies for expert caches, behind one interface.
 *
 * A policy only ranks keys: the cache ({@link ExpertCacheCore}) owns residency, pinning
 * and capacity, and asks the policy for a victim among the resident keys it may evict.
 * Keys are small non-negative integers (the cache uses `layer * expertsPerLayer + expert`),
 * so policies keep their state in typed arrays indexed by key.
 *
 * Time: `time` is the caller's clock, non-decreasing (the simulator passes the token's
 * position in its sequence, so one unit is one token). Policies that need an order within
 * a step (LRU: "within a step, earlier slots are older") keep their own access counter.
 */
import { checkInteger, checkNumber, rangeError } from '../errors';

/** Something that answers "is this key pinned?" (a `Set<number>` is one). */
export interface PinnedKeys {
  has(key: number): boolean;
}

/** The ranking side of an expert cache. */
export interface EvictionPolicy {
  /** Short name, as printed by the simulator. */
  readonly name: string;
  /**
   * A demand use of `key` at `time` (called for hits and, after insertion, for misses).
   * `nextUse` is the time of the key's next use, only passed to offline policies (Belady);
   * `Infinity` when never used again.
   */
  onAccess(key: number, time: number, nextUse?: number): void;
  /** `key` became resident at `time`; `prefetch` is true when no step asked for it yet. */
  onInsert(key: number, time: number, prefetch: boolean): void;
  /** `key` left the cache (evicted). */
  onEvict(key: number): void;
  /**
   * The resident key to evict among `candidates`, never one in `pinned`; `undefined`
   * when every candidate is pinned (the cache then reports that it cannot admit).
   */
  chooseVictim(candidates: Iterable<number>, pinned: PinnedKeys): number | undefined;
  /**
   * How much the policy wants to keep `key` (higher = keep). Victims have the lowest
   * priority; a prefetcher compares priorities to decide whether a prefetch is worth
   * its eviction.
   */
  priority(key: number): number;
  /** Forget per-sequence state (the cache was emptied). */
  reset(): void;
}

/** Names accepted by {@link createPolicy}. */
export const POLICY_NAMES = ['lru', 'lfu', 'lfru', 'static', 'belady', 'lookahead'] as const;
/** A policy name. */
export type PolicyName = (typeof POLICY_NAMES)[number];

/**
 * Base for policies that evict the lowest {@link EvictionPolicy.priority}; ties go to the
 * least recently used key (the smallest access counter).
 */
abstract class RankedPolicy implements EvictionPolicy {
  abstract readonly name: string;
  /** Monotone access order: the LRU tie-break. */
  protected readonly order: Float64Array;
  protected counter = 0;

  constructor(readonly keys: number) {
    this.order = new Float64Array(keys);
  }

  onAccess(key: number, _time: number, _nextUse?: number): void {
    this.order[key] = ++this.counter;
  }

  onInsert(key: number, _time: number, _prefetch: boolean): void {
    this.order[key] = ++this.counter;
  }

  onEvict(_key: number): void {}

  abstract priority(key: number): number;

  chooseVictim(candidates: Iterable<number>, pinned: PinnedKeys): number | undefined {
    let best: number | undefined;
    let bestPriority = Infinity;
    let bestOrder = Infinity;
    for (const key of candidates) {
      if (pinned.has(key)) continue;
      const p = this.priority(key);
      if (p < bestPriority || (p === bestPriority && this.order[key] < bestOrder)) {
        best = key;
        bestPriority = p;
        bestOrder = this.order[key];
      }
    }
    return best;
  }

  reset(): void {
    this.order.fill(0);
    this.counter = 0;
  }
}

/** Least recently used: evicts the key whose last access (or insertion) is oldest. */
export class LruPolicy extends RankedPolicy {
  readonly name = 'lru';
  priority(key: number): number {
    return this.order[key];
  }
}

/**
 * Least frequently used: evicts the key with the fewest demand accesses since the last
 * reset, counting accesses made while it was not resident too ("perfect" LFU over the
 * sequence); ties go to the least recently used.
 */
export class LfuPolicy extends RankedPolicy {
  readonly name = 'lfu';
  private readonly counts: Float64Array;
  constructor(keys: number) {
    super(keys);
    this.counts = new Float64Array(keys);
  }
  override onAccess(key: number, time: number): void {
    super.onAccess(key, time);
    this.counts[key] += 1;
  }
  priority(key: number): number {
    return this.counts[key];
  }
  override reset(): void {
    super.reset();
    this.counts.fill(0);
  }
}

/** Options of {@link LfruPolicy}. */
export interface LfruOptions {
  /** Half-life of an access's weight, in time units (tokens in the simulator). Default 32. */
  halfLife?: number;
}

/**
 * Least frecently used (LRFU-style): each demand access adds 1 to a key's score and the
 * score halves every `halfLife` time units, so the policy sits between LFU (infinite
 * half-life) and LRU (tiny half-life). Counts survive eviction until the next reset.
 * Evicts the lowest current score; ties go to the least recently used.
 *
 * Scores are stored scaled by `2^(time / halfLife)` relative to a moving origin, so a
 * comparison needs no exponentials; the origin moves (and stored scores are rescaled)
 * before the scale could overflow.
 */
export class LfruPolicy extends RankedPolicy {
  readonly name: string = 'lfru';
  readonly halfLife: number;
  private readonly scaled: Float64Array;
  private origin = 0;
  private readonly touched: number[] = [];
  private readonly isTouched: Uint8Array;

  constructor(keys: number, options: LfruOptions = {}) {
    super(keys);
    this.halfLife = checkNumber('options.halfLife', options.halfLife ?? 32, Number.MIN_VALUE);
    if (!(this.halfLife > 0)) throw rangeError('options.halfLife', 'a positive number', options.halfLife);
    this.scaled = new Float64Array(keys);
    this.isTouched = new Uint8Array(keys);
  }

  override onAccess(key: number, time: number): void {
    super.onAccess(key, time);
    let exponent = (time - this.origin) / this.halfLife;
    if (exponent > 512) {
      this.rebase(time);
      exponent = 0;
    }
    this.scaled[key] += Math.pow(2, exponent);
    if (this.isTouched[key] === 0) {
      this.isTouched[key] = 1;
      this.touched.push(key);
    }
  }

  private rebase(time: number): void {
    const factor = Math.pow(2, -(time - this.origin) / this.halfLife);
    for (const k of this.touched) this.scaled[k] *= factor;
    this.origin = time;
  }

  /** The score scaled to the current origin (comparable between keys, not absolute). */
  priority(key: number): number {
    return this.scaled[key];
  }

  override reset(): void {
    super.reset();
    for (const k of this.touched) {
      this.scaled[k] = 0;
      this.isTouched[k] = 0;
    }
    this.touched.length = 0;
    this.origin = 0;
  }
}

/** Options of {@link StaticPolicy}. */
export interface StaticOptions {
  /**
   * Popularity per key (for example access counts from a profiling run). Without it the
   * policy counts demand accesses itself, across resets (a popularity profile learned
   * online from everything seen so far).
   */
  popularity?: ArrayLike<number>;
}

/**
 * Static: keeps the most popular keys resident. Evicts the least popular resident key
 * (ties: least recently used). With a fixed profile and a cache that starts empty, the
 * resident set converges to the most popular keys that were needed.
 */
export class StaticPolicy extends RankedPolicy {
  readonly name = 'static';
  private readonly popularity: Float64Array;
  private readonly learn: boolean;
  constructor(keys: number, options: StaticOptions = {}) {
    super(keys);
    this.popularity = new Float64Array(keys);
    this.learn = options.popularity === undefined;
    if (options.popularity !== undefined) {
      const p = options.popularity;
      if (p.length !== keys) throw rangeError('options.popularity', `${keys} values (one per key)`, p);
      for (let i = 0; i < keys; i++) this.popularity[i] = checkNumber(`options.popularity[${i}]`, p[i]);
    }
  }
  override onAccess(key: number, time: number): void {
    super.onAccess(key, time);
    if (this.learn) this.popularity[key] += 1;
  }
  priority(key: number): number {
    return this.popularity[key];
  }
  // reset() keeps the popularity: it describes the model, not the sequence.
}

/**
 * Belady's MIN (offline): evicts the resident key whose next use is farthest in the
 * future; the optimum for demand fetching. Needs `nextUse` on every access (the
 * simulator precomputes it from the trace). A key inserted by a prefetch, before any
 * access told its next use, is treated as needed soon (next use = insertion time).
 */
export class BeladyPolicy extends RankedPolicy {
  readonly name = 'belady';
  private readonly next: Float64Array;
  constructor(keys: number) {
    super(keys);
    this.next = new Float64Array(keys).fill(Infinity);
  }
  override onAccess(key: number, time: number, nextUse?: number): void {
    super.onAccess(key, time);
    if (nextUse === undefined) throw rangeError('nextUse', 'the next use time of the key (Belady is offline)', nextUse);
    this.next[key] = nextUse;
  }
  override onInsert(key: number, time: number, prefetch: boolean): void {
    super.onInsert(key, time, prefetch);
    if (prefetch) this.next[key] = time;
  }
  /** Minus the next use: the farthest next use has the lowest priority. */
  priority(key: number): number {
    return -this.next[key];
  }
  override reset(): void {
    super.reset();
    this.next.fill(Infinity);
  }
}

/** Options of {@link LookaheadPolicy}. */
export interface LookaheadOptions {
  /** How far ahead the policy sees next uses, in time units (tokens in the simulator). Default 1. */
  lookahead?: number;
}

/**
 * Belady with a limited view (offline, a bound for studies, not a cache policy): it sees a
 * key's next use only when it lies within `lookahead` time units of the latest access;
 * such keys are kept, the one needed latest going first. Every other key (next use
 * farther, or never) is ranked by LFRU (`halfLife`) and evicted before them. With a
 * large `lookahead` it is Belady; it measures how much knowledge of the next few tokens
 * an online predictor would need. Needs `nextUse` on every access, like Belady.
 */
export class LookaheadPolicy extends LfruPolicy {
  override readonly name = 'lookahead';
  readonly lookahead: number;
  private readonly next: Float64Array;
  private now = 0;
  constructor(keys: number, options: LookaheadOptions & LfruOptions = {}) {
    super(keys, options);
    this.lookahead = checkNumber('options.lookahead', options.lookahead ?? 1, 0);
    this.next = new Float64Array(keys).fill(Infinity);
  }
  override onAccess(key: number, time: number, nextUse?: number): void {
    super.onAccess(key, time);
    if (nextUse === undefined) throw rangeError('nextUse', 'the next use time of the key (lookahead is offline)', nextUse);
    this.next[key] = nextUse;
    if (time > this.now) this.now = time;
  }
  override onInsert(key: number, time: number, prefetch: boolean): void {
    super.onInsert(key, time, prefetch);
    if (prefetch) this.next[key] = time;
    if (time > this.now) this.now = time;
  }
  /** The current time (the simulator calls this before each step, so the view starts there). */
  advanceTo(time: number): void {
    if (time > this.now) this.now = time;
  }
  private seen(key: number): boolean {
    return this.next[key] - this.now <= this.lookahead;
  }
  /** LFRU score for keys whose next use is out of view; `Infinity` for those in view. */
  override priority(key: number): number {
    return this.seen(key) ? Infinity : super.priority(key);
  }
  override chooseVictim(candidates: Iterable<number>, pinned: PinnedKeys): number | undefined {
    let unseen: number | undefined;
    let unseenPriority = Infinity;
    let seen: number | undefined;
    let seenNext = -Infinity;
    for (const key of candidates) {
      if (pinned.has(key)) continue;
      if (this.seen(key)) {
        if (seen === undefined || this.next[key] > seenNext || (this.next[key] === seenNext && this.order[key] < this.order[seen])) {
          seen = key;
          seenNext = this.next[key];
        }
      } else {
        const p = super.priority(key);
        if (unseen === undefined || p < unseenPriority || (p === unseenPriority && this.order[key] < this.order[unseen])) {
          unseen = key;
          unseenPriority = p;
        }
      }
    }
    return unseen ?? seen;
  }
  override reset(): void {
    super.reset();
    this.next.fill(Infinity);
    this.now = 0;
  }
}

/** Options of {@link createPolicy}. */
export interface PolicyOptions extends LfruOptions, StaticOptions, LookaheadOptions {}

/** A new policy for a key space of `keys` keys. */
export function createPolicy(name: PolicyName, keys: number, options: PolicyOptions = {}): EvictionPolicy {
  checkInteger('keys', keys, 1);
  switch (name) {
    case 'lru':
      return new LruPolicy(keys);
    case 'lfu':
      return new LfuPolicy(keys);
    case 'lfru':
      return new LfruPolicy(keys, options);
    case 'static':
      return new StaticPolicy(keys, options);
    case 'belady':
      return new BeladyPolicy(keys);
    case 'lookahead':
      return new LookaheadPolicy(keys, options);
    default:
      throw rangeError('policy', `one of ${POLICY_NAMES.map((p) => `'${p}'`).join(', ')}`, name);
  }
}
