#!/usr/bin/env python3
"""OpenBLAS sgemm on the same grouped-GEMM shapes as a `moekit bench --op gemm` run.

The benchmark issue's CPU bar is "grouped GEMM at >= 50% of OpenBLAS sgemm's rate on the
same shapes". This script reads a `moekit bench --device cpu --op gemm --json FILE` report,
and for each gemm-up / gemm-down cell times what a Python MoE runtime on the CPU does: one
OpenBLAS sgemm per touched expert (numpy's matmul, f32 weights, x_e @ W_e^T), the experts
one after another, with the rows each expert got in moekit's run (the report's
`expertRows`). It then prints both rates over the same FLOP count and their ratio.

The comparison favours OpenBLAS: its gemm-up is the GEMM alone (moekit's also applies
SwiGLU to the two halves), and its weights are f32 made once, while moekit reads bf16.

Usage (after `npm install`; numpy with OpenBLAS; not part of the package or the tests):
  node dist/cli.js bench --device cpu --op gemm --preset olmoe-1b-7b,qwen3-30b-a3b,mixtral-8x7b \
      --tokens 1,16,128,512 --json /tmp/moekit-gemm.json
  python3 bench/openblas-baseline.py /tmp/moekit-gemm.json [--threads 2] [--repeats 7] [--json OUT]
"""

import argparse
import json
import os
import re
import platform
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="moekit bench --json report with gemm-up/gemm-down rows")
    ap.add_argument("--threads", type=int, default=2, help="OpenBLAS threads (default 2)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write the rows as JSON here")
    return ap.parse_args()


def main():
    args = parse_args()
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        sys.exit("openblas-baseline: --threads and --repeats must be >= 1, --warmup >= 0")
    # Before numpy loads OpenBLAS.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np

    try:
        with open(args.report) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"openblas-baseline: cannot read report {args.report}: {e}")
    device = report.get("device") or {}
    if device.get("kind") != "cpu":
        sys.exit(f"openblas-baseline: the report is from {device.get('name', 'an unknown device')}; compare a CPU report (--device cpu)")
    m = re.search(r"(\d+) threads", device.get("name", ""))
    if m and int(m.group(1)) != args.threads:
        print(f"openblas-baseline: warning: moekit ran {m.group(1)} threads, OpenBLAS gets {args.threads} (--threads)", file=sys.stderr)
    rows = [r for r in report.get("rows", []) if r.get("op") in ("gemm-up", "gemm-down") and r.get("status") == "ok" and r.get("ms")]
    if not rows:
        sys.exit("openblas-baseline: the report has no gemm-up/gemm-down rows that ran (run moekit bench with --op gemm)")
    missing = [r for r in rows if not isinstance(r.get("expertRows"), list)]
    if missing:
        sys.exit("openblas-baseline: the report's rows have no expertRows (made by an older moekit bench)")

    rng = np.random.default_rng(1)
    weights = {}  # op -> f32 [E, N, K] of the current preset (both ops: rows alternate between them)
    current = [None]

    def weight(r):
        if current[0] != r["preset"]:
            weights.clear()  # one preset's weights at a time
            current[0] = r["preset"]
        if r["op"] not in weights:
            H, I, E = r["hidden"], r["intermediate"], r["experts"]
            N, K = (2 * I, H) if r["op"] == "gemm-up" else (H, I)
            w = np.empty((E, N, K), dtype=np.float32)
            for e in range(E):
                w[e] = rng.standard_normal((N, K), dtype=np.float32) * (1.0 / K ** 0.5)
            weights[r["op"]] = w
        return weights[r["op"]]

    out = []
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    print(f"numpy {np.__version__} with {blas.get('name', 'unknown BLAS')} {blas.get('version', '')}, {args.threads} threads; "
          f"{platform.processor() or platform.machine()}; moekit report {report.get('date')} on {report['device']['name']}")
    hdr = f"{'preset':<14} {'op':<10} {'T':>5} {'experts':>7} {'moekit ms':>10} {'OpenBLAS ms':>11} {'moekit GF/s':>11} {'OpenBLAS GF/s':>13} {'ratio':>6}"
    print(hdr)
    for r in rows:
        w = None  # let a previous preset's weights go before the next are made
        w = weight(r)
        E, N, K = w.shape
        counts = r["expertRows"]
        if len(counts) != E:
            sys.exit(f"openblas-baseline: {r['preset']} {r['op']} T={r['tokens']}: expertRows has {len(counts)} entries for {E} experts")
        xs = [(e, rng.standard_normal((m, K), dtype=np.float32)) for e, m in enumerate(counts) if m > 0]
        ys = [np.empty((x.shape[0], N), dtype=np.float32) for _, x in xs]

        def once():
            t0 = time.perf_counter()
            for (e, x), y in zip(xs, ys):
                np.matmul(x, w[e].T, out=y)
            return time.perf_counter() - t0

        for _ in range(args.warmup):
            once()
        times = sorted(once() for _ in range(args.repeats))
        blas_ms = times[len(times) // 2] * 1e3
        moekit_ms = r["ms"]
        flops = r["flops"]
        row = {
            "preset": r["preset"], "op": r["op"], "tokens": r["tokens"], "touched": r["touched"],
            "flops": flops, "moekitMs": moekit_ms, "openblasMs": blas_ms,
            "openblasSpreadMs": (times[int(0.9 * (len(times) - 1))] - times[int(0.1 * (len(times) - 1))]) * 1e3,
            "moekitGflops": flops / moekit_ms / 1e6, "openblasGflops": flops / blas_ms / 1e6,
            "ratio": blas_ms / moekit_ms,
        }
        out.append(row)
        print(f"{r['preset']:<14} {r['op']:<10} {r['tokens']:>5} {r['touched']:>7} {moekit_ms:>10.3f} {blas_ms:>11.3f} "
              f"{row['moekitGflops']:>11.1f} {row['openblasGflops']:>13.1f} {row['ratio']:>6.2f}", flush=True)
    worst = min(out, key=lambda x: x["ratio"])
    print(f"moekit rate / OpenBLAS rate: worst {worst['ratio']:.2f} ({worst['preset']} {worst['op']} T={worst['tokens']}); "
          f"bar 0.50: {'met' if worst['ratio'] >= 0.5 else 'NOT met'} in {sum(x['ratio'] >= 0.5 for x in out)} of {len(out)} cells")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"numpy": np.__version__, "threads": args.threads, "repeats": args.repeats, "report": args.report, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
