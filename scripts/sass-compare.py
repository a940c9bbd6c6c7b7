#!/usr/bin/env python3
"""Compares the machine code of one CUDA file's kernels at two commits, without a GPU.

A check for sessions with no GPU: after a refactor of kernels that have run on a GPU, it
shows whether each kernel still issues the same memory, tensor-core and floating-point
instructions. It is evidence, not a test: equal instruction counts do not prove equal
results, and different counts do not prove a defect.

  python3 scripts/sass-compare.py --old 7437cb4 --file kernels/cuda/grouped_gemm.cu \
      --map 'gemm_tc_kernel<(.*), \\(int\\)(128|64)>=>gemm_tc_kernel<\\1, (int)\\2, (int)2>'

For each commit: nvcc (this machine's) writes the file's PTX for compute_90, ptxas
assembles it for sm_90, cuobjdump prints the SASS. Both commits go through the same
ptxas, so scheduling noise is the only difference for unchanged code. nvcc 13 here has no
cuobjdump; Debian's nvidia-cuda-toolkit (11.8, non-free) has one, and its ptxas accepts
the PTX once the .version line is lowered (--ptx-version 7.8):

  apt-get download nvidia-cuda-toolkit && dpkg -x nvidia-cuda-toolkit_*.deb /tmp/cudatk
  ... --tools /tmp/cudatk/usr/bin --ptx-version 7.8

Kernels are matched by demangled name with namespaces dropped; --map rewrites old names
(a template parameter added since, for instance). Output per kernel: "same" (identical
opcode sequence), or the opcode classes whose counts differ.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

# Opcode classes that carry the kernel's data flow: tensor cores, shared/global memory,
# barriers, shuffles, floating point. Integer and predicate arithmetic is left out (ptxas
# re-schedules and re-derives addresses freely between builds).
DATA_OPS = re.compile(r'^(HMMA|HGMMA|IMMA|LDSM|STSM|LDGSTS|LDGDEPBAR|DEPBAR|LDG|STG|LDS|STS|LD|ST|ATOM|RED|BAR|'
                      r'SYNCS|UTMA|SHFL|VOTE|MUFU|FFMA|FMUL|FADD|FMNMX|FSETP|F2F|F2FP|HFMA2|HADD2|HMUL2|EXIT|RET)\b')


def is_data_op(op):
    # HFMA2.MMA with zero operands is ptxas's register move / zeroing idiom, not arithmetic.
    return DATA_OPS.match(op) is not None and not op.startswith('HFMA2.MMA')


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        sys.exit(f"sass-compare: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return res.stdout


def sass_of(rev, args, work):
    src = os.path.join(work, rev)
    if not os.path.isdir(src):
        run(['git', 'worktree', 'add', '--detach', '-f', src, rev])
    ptx = os.path.join(work, rev + '.ptx')
    cubin = os.path.join(work, rev + '.cubin')
    run([args.nvcc, '-std=c++17', '-O3', '--expt-relaxed-constexpr', '-I.', '-arch=compute_90', '-ptx', '-o', ptx,
         args.file], cwd=src)
    if args.ptx_version:
        text = open(ptx).read()
        text = re.sub(r'^\.version \S+', '.version ' + args.ptx_version, text, count=1, flags=re.M)
        open(ptx, 'w').write(text)
    run([os.path.join(args.tools, 'ptxas'), '-arch=sm_90', '-O3', '-o', cubin, ptx])
    return run([os.path.join(args.tools, 'cuobjdump'), '-sass', cubin])


def parse(sass, tools):
    funcs = collections.OrderedDict()
    cur = None
    for line in sass.splitlines():
        m = re.match(r'\s*Function : (\S+)', line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        m = re.match(r'\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;', line)
        if m and cur:
            ins = re.sub(r'^@!?U?P\w+\s+', '', m.group(1))  # predicate guard
            funcs[cur].append(ins.split()[0])
    names = run([os.path.join(tools, 'cu++filt')], input='\n'.join(funcs)).split('\n')
    out = {}
    for (mangled, ops), name in zip(funcs.items(), names):
        out[re.sub(r'(\w+::|\(anonymous namespace\)::|<unnamed>::)', '', name or mangled)] = ops
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--old', required=True, help='commit whose kernels ran on a GPU')
    p.add_argument('--new', default='HEAD')
    p.add_argument('--file', required=True, help='the .cu file, relative to the repository root')
    p.add_argument('--tools', default='/usr/local/cuda/bin', help='folder with ptxas, cuobjdump and cu++filt')
    p.add_argument('--nvcc', default='/usr/local/cuda/bin/nvcc')
    p.add_argument('--ptx-version', default='', help="rewrite the PTX .version line (for an older ptxas)")
    p.add_argument('--map', action='append', default=[], help="REGEX=>REPLACEMENT applied to the old kernels' names")
    args = p.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix='sass-compare-') as work:
            old = parse(sass_of(args.old, args, work), args.tools)
            new = parse(sass_of(args.new, args, work), args.tools)
    finally:
        subprocess.run(['git', 'worktree', 'prune'], capture_output=True)  # the temporary checkouts are gone now
    same = differ = 0
    matched = set()
    for name, ops in sorted(old.items()):
        target = name
        for rule in args.map:
            pat, repl = rule.split('=>', 1)
            target = re.sub(pat, repl, target)
        if target not in new:
            print(f'only in {args.old}: {name}')
            continue
        matched.add(target)
        if ops == new[target]:
            same += 1
            print(f'same         {name}')
            continue
        a = collections.Counter(o for o in ops if is_data_op(o))
        b = collections.Counter(o for o in new[target] if is_data_op(o))
        delta = {k: f'{a[k]}->{b[k]}' for k in sorted(set(a) | set(b)) if a[k] != b[k]}
        if delta:
            differ += 1
            print(f'DATA OPS     {name}: ' + ', '.join(f'{k} {v}' for k, v in delta.items()))
        else:
            same += 1
            print(f'same counts  {name} ({len(ops)} -> {len(new[target])} instructions; integer/control differ)')
    for name in sorted(set(new) - matched):
        print(f'only in {args.new}: {name}')
    print(f'{same} kernels with the same data instructions, {differ} with different ones')


if __name__ == '__main__':
    main()
