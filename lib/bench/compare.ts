/**
 * `moekit bench compare BASE.json NEW.json`: two `moekit bench --json` reports side by side,
 * cell by cell (preset x op x tokens): the time each run's rates used (device median when
 * both have a device timer, else the wall median), the speed-up base / new, and whether the
 * two runs' timings separate beyond their own spread (p10..p90) or overlap. For deciding
 * whether a kernel change (an opt-in environment variable, a commit) made a cell faster on
 * the same machine; the reports' device, dtype, routing, seed and notes are printed first,
 * and a device mismatch is said out loud (timings compare only on the same device).
 */
import * as fs from 'fs';
import type { BenchReport, BenchRow, Timing } from './run';

export const COMPARE_USAGE = `Usage: moekit bench compare BASE.json NEW.json

Compares two reports written by \`moekit bench --json\`, cell by cell (preset x op x tokens
present and run in both): the median time of each (device time when both runs have a
device timer, else the wall time from JavaScript), speed-up = base / new, and a verdict:
"faster" / "slower" when the new run's p10..p90 lies entirely below / above the base's,
else "within spread". Ends with the geometric mean speed-up over the compared cells.
Exit status: 0 when compared, 2 for bad arguments or unreadable reports.`;

/** One compared cell. */
export interface CellComparison {
  preset: string;
  op: string;
  tokens: number;
  basis: 'device' | 'wall';
  baseMs: number;
  newMs: number;
  /** base / new: above 1 the new run is faster. */
  speedup: number;
  verdict: 'faster' | 'slower' | 'within spread';
}

export interface ReportComparison {
  cells: CellComparison[];
  /** Cells run in only one of the reports (or skipped in either), as "preset op T". */
  unmatched: string[];
  /** Geometric mean of the speed-ups; null with no compared cell. */
  geomeanSpeedup: number | null;
  /** Settings that differ between the runs, as "name: base -> new". */
  differences: string[];
  sameDevice: boolean;
}

/** A bench report that cannot be used; the message says which file and why. */
export class CompareInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CompareInputError';
  }
}

const cellKey = (r: Pick<BenchRow, 'preset' | 'op' | 'tokens'>) => `${r.preset} ${r.op} ${r.tokens}`;

function isTiming(t: unknown): t is Timing {
  const o = t as Record<string, unknown> | null;
  return o !== null && typeof o === 'object' && ['median', 'p10', 'p90'].every((k) => typeof o[k] === 'number' && Number.isFinite(o[k] as number));
}

/** Reads and checks one report (`what` names it in errors: "BASE" or "NEW"). */
export function readBenchReport(file: string, what: string): BenchReport {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CompareInputError(`${what}: expected a readable moekit bench --json report, received ${JSON.stringify(file)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CompareInputError(`${what}: expected a moekit bench --json report, received ${JSON.stringify(file)}, which is not JSON (${(e as Error).message})`);
  }
  const r = json as Partial<BenchReport> | null;
  if (r === null || typeof r !== 'object' || r.version !== 1 || !Array.isArray(r.rows) || typeof r.device !== 'object' || r.device === null)
    throw new CompareInputError(`${what}: expected a moekit bench --json report (version 1, with device and rows), received ${JSON.stringify(file)}`);
  r.rows.forEach((row, i) => {
    const ok = row !== null && typeof row === 'object' && typeof row.preset === 'string' && typeof row.op === 'string' && Number.isInteger(row.tokens);
    if (!ok) throw new CompareInputError(`${what}: row ${i} of ${JSON.stringify(file)} has no preset / op / tokens`);
  });
  return r as BenchReport;
}

/** The timing a comparison uses for a row (device when `device`, else wall), if it ran. */
function timingOf(row: BenchRow, device: boolean): Timing | null {
  if (row.status !== 'ok') return null;
  const t = device ? row.deviceMs : row.wallMs;
  return isTiming(t) && t.median > 0 ? t : null;
}

export function compareReports(base: BenchReport, next: BenchReport): ReportComparison {
  const differences: string[] = [];
  const setting = (name: string, a: unknown, b: unknown) => {
    const [sa, sb] = [JSON.stringify(a), JSON.stringify(b)];
    if (sa !== sb) differences.push(`${name}: ${sa} -> ${sb}`);
  };
  setting('device', base.device.description ?? base.device.name, next.device.description ?? next.device.name);
  setting('dtype', base.dtype, next.dtype);
  setting('routing', base.routing, next.routing);
  setting('seed', base.seed, next.seed);
  setting('repeats', base.repeats, next.repeats);
  setting('notes', base.notes ?? [], next.notes ?? []);
  const sameDevice = base.device.name === next.device.name && base.device.description === next.device.description;

  const nextRows = new Map<string, BenchRow>();
  for (const r of next.rows) nextRows.set(cellKey(r), r);
  const seen = new Set<string>();
  const cells: CellComparison[] = [];
  const unmatched: string[] = [];
  for (const b of base.rows) {
    const key = cellKey(b);
    seen.add(key);
    const n = nextRows.get(key);
    const device = n !== undefined && timingOf(b, true) !== null && timingOf(n, true) !== null;
    const tb = timingOf(b, device);
    const tn = n === undefined ? null : timingOf(n, device);
    if (tb === null || tn === null) {
      unmatched.push(key);
      continue;
    }
    const verdict = tn.p90 < tb.p10 ? 'faster' : tn.p10 > tb.p90 ? 'slower' : 'within spread';
    cells.push({ preset: b.preset, op: b.op, tokens: b.tokens, basis: device ? 'device' : 'wall', baseMs: tb.median, newMs: tn.median, speedup: tb.median / tn.median, verdict });
  }
  for (const r of next.rows) if (!seen.has(cellKey(r))) unmatched.push(cellKey(r));
  const geomeanSpeedup = cells.length === 0 ? null : Math.exp(cells.reduce((s, c) => s + Math.log(c.speedup), 0) / cells.length);
  return { cells, unmatched, geomeanSpeedup, differences, sameDevice };
}

const fmtMs = (v: number) => (v >= 100 ? v.toFixed(1) : v >= 1 ? v.toFixed(3) : v.toPrecision(3));

/** The comparison as lines of text: settings, a table, the summary. */
export function formatComparison(c: ReportComparison, baseFile: string, newFile: string): string[] {
  const lines = [`base: ${baseFile}`, `new:  ${newFile}`];
  if (!c.sameDevice) lines.push('WARNING: the runs are on different devices; their timings do not compare.');
  for (const d of c.differences) lines.push(`differs: ${d}`);
  const header = ['preset', 'op', 'T', 'time', 'base ms', 'new ms', 'speed-up', 'verdict'];
  const rows = c.cells.map((x) => [x.preset, x.op, String(x.tokens), x.basis, fmtMs(x.baseMs), fmtMs(x.newMs), `${x.speedup.toFixed(2)}x`, x.verdict]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((v, i) => (i < 2 || i === 7 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ').trimEnd();
  lines.push(line(header));
  for (const r of rows) lines.push(line(r));
  const count = (v: CellComparison['verdict']) => c.cells.filter((x) => x.verdict === v).length;
  lines.push(
    c.geomeanSpeedup === null
      ? 'no cell ran in both reports'
      : `${c.cells.length} cells compared: geometric-mean speed-up ${c.geomeanSpeedup.toFixed(3)}x; ${count('faster')} faster, ${count('slower')} slower, ${count('within spread')} within spread`,
  );
  if (c.unmatched.length > 0) lines.push(`${c.unmatched.length} cells not in both runs (or skipped): ${c.unmatched.join(', ')}`);
  return lines;
}
