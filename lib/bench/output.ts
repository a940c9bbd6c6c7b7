/**
 * What `moekit bench` writes: the terminal table, the progress bar, the SVG chart of
 * efficiency against tokens, and the anchors file it can draw beside its own lines.
 *
 * Anchors file (JSON):
 * {
 *   "source": "where the figures come from (printed in the chart)",      // optional
 *   "series": [
 *     { "name": "best anchor", "preset": "mixtral-8x7b",
 *       "points": [ { "tokens": 1, "efficiency": 0.62 },                  // either efficiency,
 *                   { "tokens": 16, "ms": 1.154, "floorMs": 0.940 } ] }    // or ms + floorMs (efficiency = floorMs / ms)
 *   ]
 * }
 * Each series is drawn dashed in its preset's colour; `preset` is optional. Points with
 * `ms` are also compared with moekit's whole-layer rows in a table after the run
 * ({@link formatAnchorComparison}).
 */
import * as fs from 'fs';
import { BenchReport, BenchRow } from './run';

/** One anchor series, validated. */
export interface AnchorSeries {
  name: string;
  preset?: string;
  /** ms and floorMs are kept when the file gives them (the comparison table needs ms). */
  points: { tokens: number; efficiency: number; ms?: number; floorMs?: number }[];
}

export interface Anchors {
  source?: string;
  series: AnchorSeries[];
}

/** Parses an anchors file; throws Error naming the field that is wrong (the CLI reports it under --anchors). */
export function parseAnchors(text: string, file: string): Anchors {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file} is not JSON (${(e as Error).message})`);
  }
  const where = (path: string, expected: string, got: unknown) => new Error(`${file}: ${path}: expected ${expected}, received ${JSON.stringify(got)?.slice(0, 60)}`);
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw where('(top level)', 'an object with "series"', doc);
  const d = doc as Record<string, unknown>;
  if (d.source !== undefined && typeof d.source !== 'string') throw where('source', 'a string', d.source);
  if (!Array.isArray(d.series)) throw where('series', 'an array', d.series);
  const series = d.series.map((s: unknown, i: number): AnchorSeries => {
    if (s === null || typeof s !== 'object' || Array.isArray(s)) throw where(`series[${i}]`, 'an object', s);
    const o = s as Record<string, unknown>;
    if (typeof o.name !== 'string' || o.name === '') throw where(`series[${i}].name`, 'a non-empty string', o.name);
    if (o.preset !== undefined && typeof o.preset !== 'string') throw where(`series[${i}].preset`, 'a string', o.preset);
    if (!Array.isArray(o.points) || o.points.length === 0) throw where(`series[${i}].points`, 'a non-empty array', o.points);
    const points = o.points.map((p: unknown, j: number) => {
      const at = `series[${i}].points[${j}]`;
      if (p === null || typeof p !== 'object' || Array.isArray(p)) throw where(at, 'an object', p);
      const q = p as Record<string, unknown>;
      if (typeof q.tokens !== 'number' || !Number.isInteger(q.tokens) || q.tokens < 1) throw where(`${at}.tokens`, 'a positive integer', q.tokens);
      let efficiency: number;
      if (q.efficiency !== undefined) {
        if (typeof q.efficiency !== 'number' || !(q.efficiency >= 0) || !Number.isFinite(q.efficiency)) throw where(`${at}.efficiency`, 'a finite number >= 0', q.efficiency);
        efficiency = q.efficiency;
      } else {
        if (typeof q.ms !== 'number' || !(q.ms > 0) || !Number.isFinite(q.ms)) throw where(`${at}.ms`, 'a positive number (or give efficiency)', q.ms);
        if (typeof q.floorMs !== 'number' || !(q.floorMs > 0) || !Number.isFinite(q.floorMs)) throw where(`${at}.floorMs`, 'a positive number (with ms)', q.floorMs);
        efficiency = q.floorMs / q.ms;
        return { tokens: q.tokens, efficiency, ms: q.ms, floorMs: q.floorMs };
      }
      return { tokens: q.tokens, efficiency };
    });
    return { name: o.name, ...(o.preset !== undefined ? { preset: o.preset as string } : {}), points };
  });
  return { ...(d.source !== undefined ? { source: d.source as string } : {}), series };
}

export function readAnchors(file: string): Anchors {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return parseAnchors(text, file);
}

/** A number in at most `digits` significant figures, without exponent for ordinary values. */
function sig(x: number | null, digits = 3): string {
  if (x === null || !Number.isFinite(x)) return '-';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 10 ** digits) return x.toFixed(0);
  if (a < 1e-3) return x.toExponential(1);
  return x.toPrecision(digits);
}

function ms(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '-';
  return x >= 100 ? x.toFixed(1) : x >= 1 ? x.toFixed(3) : x === 0 ? '0' : x >= 1e-3 ? x.toPrecision(3) : x.toExponential(2);
}

const COLUMNS: [string, number][] = [
  ['preset', 14],
  ['op', 9],
  ['T', 6],
  ['touched', 7],
  ['dev ms', 9],
  ['spread', 8],
  ['wall ms', 9],
  ['spread', 8],
  ['TFLOP/s', 8],
  ['GB/s', 8],
  ['floor ms', 9],
  ['eff', 5],
];

function line(cells: string[]): string {
  return cells.map((c, i) => (i < 2 ? c.padEnd(COLUMNS[i][1]) : c.padStart(COLUMNS[i][1]))).join(' ');
}

/** The lines printed above the table. */
export function formatHeader(r: BenchReport): string {
  return [
    `device: ${r.device.name} | dtype ${r.dtype} | routing ${r.routing} | ${r.warmup} warm-up + ${r.repeats} timed calls per cell`,
    `bandwidth: ${r.bandwidth.gbs.toFixed(1)} GB/s (${r.bandwidth.source})`,
    `compute peak: ${r.peak.tflops > 0 ? `${r.peak.tflops} TFLOP/s` : 'unknown'} (${r.peak.source})`,
    `device timer: ${r.deviceTimer}`,
    'spread = p90 - p10; dev = device time per call, wall = await from JavaScript; rates and eff use dev when present, else wall',
    line(COLUMNS.map(([name]) => name)),
  ].join('\n');
}

/** One table line. */
export function formatRow(r: BenchRow): string {
  if (r.status === 'skipped') return `${r.preset.padEnd(COLUMNS[0][1])} ${r.op.padEnd(COLUMNS[1][1])} ${String(r.tokens).padStart(COLUMNS[2][1])}  skipped: ${r.reason}`;
  const d = r.deviceMs;
  const w = r.wallMs;
  return line([
    r.preset,
    r.op,
    String(r.tokens),
    String(r.touched),
    ms(d?.median),
    ms(d === null ? null : d.p90 - d.p10),
    ms(w?.median),
    ms(w === null ? null : w.p90 - w.p10),
    sig(r.tflops),
    sig(r.gbs),
    ms(r.floorMs),
    r.efficiency === null ? '-' : r.efficiency.toFixed(2),
  ]);
}

/** The progress bar line (no newline), for a TTY. */
export function progressLine(done: number, total: number, label: string, width = 30): string {
  const filled = total === 0 ? width : Math.round((done / total) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${label}`;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/**
 * An SVG line chart: efficiency (floor / time) against tokens on a log-2 axis, one solid
 * line per preset (per preset and op when several ops ran), anchors dashed (in their
 * preset's colour when one op ran).
 */
export function renderSvg(r: BenchReport, anchors?: Anchors): string {
  const W = 860;
  const Hh = 460;
  const m = { left: 60, right: 260, top: 40, bottom: 50 };
  const ops = new Set(r.rows.map((row) => row.op));
  const series = new Map<string, { preset: string; points: { tokens: number; efficiency: number }[] }>();
  for (const row of r.rows) {
    if (row.efficiency === null) continue;
    const key = ops.size > 1 ? `${row.preset} ${row.op}` : row.preset;
    const s = series.get(key) ?? { preset: row.preset, points: [] };
    s.points.push({ tokens: row.tokens, efficiency: row.efficiency });
    series.set(key, s);
  }
  // A colour per line; an anchor takes its preset's colour when that preset has one line.
  const colors = new Map<string, string>();
  const colorFor = (key: string) => {
    if (!colors.has(key)) colors.set(key, COLORS[colors.size % COLORS.length]);
    return colors.get(key) as string;
  };
  for (const key of series.keys()) colorFor(ops.size > 1 ? key : `preset:${key}`);
  const all = [...[...series.values()].flatMap((s) => s.points), ...(anchors?.series.flatMap((s) => s.points) ?? [])];
  const tokens = all.length > 0 ? all.map((p) => p.tokens) : r.rows.map((row) => row.tokens);
  const lo = Math.log2(Math.min(...tokens, 1));
  const hi = Math.max(Math.log2(Math.max(...tokens, 2)), lo + 1);
  const yMax = Math.max(1, ...all.map((p) => p.efficiency)) * 1.05;
  const px = (t: number) => m.left + ((Math.log2(t) - lo) / (hi - lo)) * (W - m.left - m.right);
  const py = (e: number) => Hh - m.bottom - (e / yMax) * (Hh - m.top - m.bottom);
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${Hh}" viewBox="0 0 ${W} ${Hh}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect x="0" y="0" width="${W}" height="${Hh}" fill="white"/>`);
  const ops1 = ops.size === 1 ? ` · ${[...ops][0]}` : '';
  out.push(`<text x="${m.left}" y="20" font-size="14">${esc(`Efficiency (roofline floor / time) · ${r.device.name} · ${r.dtype}${ops1} · ${r.routing}`)}</text>`);
  const yStep = yMax <= 1.3 ? 0.2 : yMax <= 3 ? 0.5 : Math.ceil(yMax / 6);
  for (let i = 0; i * yStep <= yMax + 1e-9; i++) {
    const e = i * yStep;
    const y = py(e).toFixed(1);
    out.push(`<line x1="${m.left}" y1="${y}" x2="${W - m.right}" y2="${y}" stroke="#dddddd"/>`);
    out.push(`<text x="${m.left - 8}" y="${y}" text-anchor="end" dominant-baseline="middle">${e.toFixed(1)}</text>`);
  }
  for (let p = Math.ceil(lo); p <= Math.floor(hi); p++) {
    const x = px(2 ** p).toFixed(1);
    out.push(`<line x1="${x}" y1="${m.top}" x2="${x}" y2="${Hh - m.bottom}" stroke="#eeeeee"/>`);
    if (p % 2 === 0 || hi - lo <= 8) out.push(`<text x="${x}" y="${Hh - m.bottom + 16}" text-anchor="middle">${2 ** p}</text>`);
  }
  out.push(`<line x1="${m.left}" y1="${Hh - m.bottom}" x2="${W - m.right}" y2="${Hh - m.bottom}" stroke="black"/>`);
  out.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${Hh - m.bottom}" stroke="black"/>`);
  out.push(`<text x="${(m.left + W - m.right) / 2}" y="${Hh - 12}" text-anchor="middle">tokens (log scale)</text>`);
  out.push(`<text x="16" y="${(m.top + Hh - m.bottom) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(m.top + Hh - m.bottom) / 2})">efficiency</text>`);
  const legend: string[] = [];
  const draw = (name: string, c: string, points: { tokens: number; efficiency: number }[], dashed: boolean) => {
    const pts = [...points].sort((a, b) => a.tokens - b.tokens);
    const dash = dashed ? ' stroke-dasharray="6 4"' : '';
    out.push(`<polyline fill="none" stroke="${c}" stroke-width="2"${dash} points="${pts.map((p) => `${px(p.tokens).toFixed(1)},${py(p.efficiency).toFixed(1)}`).join(' ')}"><title>${esc(name)}</title></polyline>`);
    for (const p of pts) out.push(`<circle cx="${px(p.tokens).toFixed(1)}" cy="${py(p.efficiency).toFixed(1)}" r="${dashed ? 2 : 3}" fill="${c}"><title>${esc(`${name} T=${p.tokens}: ${p.efficiency.toFixed(2)}`)}</title></circle>`);
    const ly = m.top + 18 * legend.length;
    legend.push(name);
    out.push(`<line x1="${W - m.right + 12}" y1="${ly}" x2="${W - m.right + 36}" y2="${ly}" stroke="${c}" stroke-width="2"${dash}/>`);
    out.push(`<text x="${W - m.right + 42}" y="${ly}" dominant-baseline="middle">${esc(name)}</text>`);
  };
  for (const [name, s] of series) draw(name, colorFor(ops.size > 1 ? name : `preset:${s.preset}`), s.points, false);
  for (const a of anchors?.series ?? []) {
    const name = a.preset !== undefined ? `${a.preset} · ${a.name}` : a.name;
    draw(name, colorFor(a.preset !== undefined && ops.size === 1 ? `preset:${a.preset}` : `anchor:${name}`), a.points, true);
  }
  if (anchors?.source !== undefined) out.push(`<text x="${m.left}" y="${Hh - 2}" font-size="10" fill="#555555">${esc(`anchors: ${anchors.source.length > 150 ? anchors.source.slice(0, 149) + '…' : anchors.source}`)}</text>`);
  if (series.size === 0) out.push(`<text x="${(m.left + W - m.right) / 2}" y="${Hh / 2}" text-anchor="middle">no cell ran</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/**
 * The whole-layer rows against the anchors, for the terminal: for each `layer` row whose
 * preset and token count an anchor series (with that preset) times in ms, moekit's time
 * (device when measured, else wall), the anchor's, the speed ratio, and efficiency against
 * the anchor's own floor when it gives one (so a bandwidth probe of our own cannot flatter
 * moekit). Ends with the count of cells where moekit is faster. Empty when nothing matches.
 */
export function formatAnchorComparison(r: BenchReport, anchors: Anchors): string[] {
  const out: string[] = [];
  let faster = 0;
  let effOk = 0;
  let withFloor = 0;
  for (const row of r.rows) {
    if (row.op !== 'layer' || row.status !== 'ok' || row.ms === null) continue;
    for (const s of anchors.series) {
      if (s.preset !== row.preset) continue;
      const p = s.points.find((q) => q.tokens === row.tokens && q.ms !== undefined);
      if (p === undefined || p.ms === undefined) continue;
      const ratio = p.ms / row.ms;
      if (ratio > 1) faster++;
      let eff = '-';
      if (p.floorMs !== undefined) {
        withFloor++;
        const e = p.floorMs / row.ms;
        if (e >= 0.8) effOk++;
        eff = e.toFixed(2);
      }
      if (out.length === 0) out.push(`against the anchors (${anchors.source ?? 'anchors file'}):`, `${'preset'.padEnd(14)} ${'T'.padStart(6)} ${'moekit ms'.padStart(10)} ${'anchor'.padEnd(14)} ${'anchor ms'.padStart(10)} ${'speed'.padStart(6)} ${'eff*'.padStart(5)}`);
      out.push(`${row.preset.padEnd(14)} ${String(row.tokens).padStart(6)} ${ms(row.ms).padStart(10)} ${s.name.slice(0, 14).padEnd(14)} ${ms(p.ms).padStart(10)} ${(ratio.toFixed(2) + 'x').padStart(6)} ${eff.padStart(5)}`);
    }
  }
  if (out.length === 0) return out;
  const cells = out.length - 2;
  out.push(`speed = anchor ms / moekit ms (moekit ${r.rows.some((x) => x.basis === 'device') ? 'device' : 'wall'} time); eff* = the anchor's floor / moekit ms`);
  out.push(`moekit faster in ${faster} of ${cells} cells; eff* >= 0.80 in ${effOk} of ${withFloor}`);
  return out;
}
