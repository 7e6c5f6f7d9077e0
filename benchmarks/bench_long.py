"""Long inputs: time per state-step across T and L for random, uniform, peaked and adversarial logits.

The no-cliff rule of the long-inputs issue: every family stays on the scaled path, and the time per state-step
(one frame of one extended state, T x (2L + 1) of them a sequence) at (1, 20000, 32, 4000) and (1, 50000, 32, 5000)
random stays within 2x of (1, 3000, 32, 600) random, for every seed tried.

Families (float32 logits, C = 32, labels uniform over the C - 1 non-blank classes):
- random:      standard-normal logits (an untrained model)
- uniform:     logits uniform in [-1, 1) (nearly flat posteriors)
- peaked:      a synthetic trained model: a random monotone alignment of the labels (each label on 1-2 frames, blanks
               between), standard-normal logits plus 8 on the aligned class of every frame
- adversarial: standard-normal logits x 30 (a confident model whose every frame disagrees with the labels)

Each row: median of ``--rounds`` calls (2 threads unless ``--threads``), the loss-only call and the loss + gradient
call, and whether any sequence took the log-space fallback (the kernel's flags, test hook of ``_cpu``).

``--memory`` runs the bounded-memory cases instead, each in a fresh subprocess (peak RSS growth of the call, from
/proc's VmHWM reset before it; the call's own outputs included), within the default budget (1 GiB):
- hour:  (1, 180000, 32, 50000) peaked (an hour at 50 frames/s of a character model), loss + gradient;
- long:  (1, 50000, 32, 5000) random and peaked, loss + gradient, and PyTorch's ctc_loss where it imports;
- batch: (8, 20000, 32, 4000) random, loss + gradient;
- ref:   (1, 20000, 32, 2000) random with every row stored (memory_limit of 64 GiB), the time per state-step the
         hour is compared with.

    python benchmarks/bench_long.py                 # the issue's shapes, 3 seeds each
    python benchmarks/bench_long.py --quick         # smaller shapes (a few seconds)
    python benchmarks/bench_long.py --memory        # the bounded-memory cases (minutes)
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

import cyctc
from cyctc import _cpu

C = 32
LOGSPACE = 4  # CYCTC_LOGSPACE


def make(kind, T, L, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, C, (1, L)).astype(np.int32)
    if kind == "uniform":
        x = rng.uniform(-1.0, 1.0, (1, T, C))
    elif kind == "adversarial":
        x = 30.0 * rng.standard_normal((1, T, C))
    else:
        x = rng.standard_normal((1, T, C))
    if kind == "peaked":
        path = np.zeros(T, np.int64)  # blank everywhere but the aligned label frames
        starts = np.sort(rng.choice(np.arange(0, T - 2, 2), L, replace=False)) if L else np.zeros(0, np.int64)
        for k, s in enumerate(starts):
            path[s: s + 1 + int(rng.integers(0, 2))] = labels[0, k]
        x[0, np.arange(T), path] += 8.0
    return x.astype(np.float32), labels


def timed(fn, rounds):
    fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def measure(kind, T, L, seed, threads, rounds, grad):
    x, lab = make(kind, T, L, seed)
    ll, tl = np.array([L], np.int32), np.array([T], np.int32)
    flags = np.zeros(1, np.int32)
    g = np.empty_like(x) if grad else None
    _cpu.ctc_loss_grad(x, lab, ll, tl, 0, True, g, None, threads, flags)
    dt = timed(lambda: _cpu.ctc_loss_grad(x, lab, ll, tl, 0, True, g, None, threads), rounds)
    return dt, int(flags[0])


MEMORY_CASES = {
    "ref": ("random", 1, 20000, 2000, 64 << 30),
    "hour": ("peaked", 1, 180000, 50000, None),
    "long-random": ("random", 1, 50000, 5000, None),
    "long-peaked": ("peaked", 1, 50000, 5000, None),
    "batch": ("random", 8, 20000, 4000, None),
}


def _status_bytes(field):
    import re
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def memory_child(name, threads, peer):
    """One bounded-memory case in this process: prints one JSON line."""
    kind, B, T, L, limit = MEMORY_CASES[name]
    xs, labs = zip(*(make(kind, T, L, seed) for seed in range(B)))
    x, lab = np.concatenate(xs), np.concatenate(labs)
    out = dict(case=name, family=kind, B=B, T=T, L=L, C=C, threads=threads)
    if peer == "torch":
        import torch
        torch.set_num_threads(threads)
        lp = torch.log_softmax(torch.from_numpy(x).transpose(0, 1).double(), -1).float().requires_grad_()
        tgt, il, tl = torch.from_numpy(lab.astype(np.int64)), torch.full((B,), T), torch.full((B,), L)
        fn = lambda: torch.nn.functional.ctc_loss(lp, tgt, il, tl, reduction="sum").backward()  # noqa: E731
    else:
        fn = lambda: cyctc.ctc_loss(lab, x, [L] * B, [T] * B, False, return_grad=True,  # noqa: E731
                                    reduction="none", num_threads=threads, memory_limit=limit)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    fn()
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_growth"] = _status_bytes("VmHWM") - before
    out["ns_per_state_step"] = out["seconds"] / (B * T * (2 * L + 1)) * 1e9
    out["peer"] = peer or "cyctc"
    print(json.dumps(out), flush=True)


def memory_main(a):
    import subprocess
    rows = []
    print(f"{'case':12s} {'impl':6s} {'B':>2s} {'T':>7s} {'L':>6s} {'s':>8s} {'ns/st':>7s} {'peak MiB':>9s}")
    for name in a.cases.split(","):
        for peer in ([None, "torch"] if name.startswith("long") else [None]):
            cmd = [sys.executable, __file__, "--_memory-child", name, "--threads", str(a.threads)]
            if peer:
                cmd += ["--peer", peer]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                tail = (r.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{name:12s} {peer or 'cyctc':6s} failed: {tail}")
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{name:12s} {row['peer']:6s} {row['B']:2d} {row['T']:7d} {row['L']:6d} {row['seconds']:8.2f} "
                  f"{row['ns_per_state_step']:7.3f} {row['peak_rss_growth'] / 2**20:9.1f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(threads=a.threads, rows=rows, date=time.strftime("%Y-%m-%d %H:%M"),
                           machine=platform.platform()), f, indent=1)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller shapes")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--memory", action="store_true", help="the bounded-memory cases (subprocesses)")
    ap.add_argument("--cases", default="ref,hour,long-random,long-peaked,batch", help="with --memory")
    ap.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_child:
        memory_child(a.memory_child, a.threads, a.peer)
        return 0
    if a.memory:
        return memory_main(a)
    base = (3000, 600)
    shapes = [(3000, 600), (6000, 1200), (20000, 4000), (50000, 5000)]
    grad_shapes = {(3000, 600), (6000, 1200), (20000, 4000)}
    if a.quick:
        base, shapes, grad_shapes = (1500, 300), [(1500, 300), (6000, 1200)], {(1500, 300), (6000, 1200)}
    print(f"cyctc {cyctc.__version__}, {a.threads} threads, {platform.machine()} {platform.processor() or ''}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    rows, ref = [], {}
    print(f"{'family':12s} {'T':>6s} {'L':>5s} {'seed':>4s} {'loss ms':>9s} {'ns/st':>7s} {'x base':>7s} "
          f"{'grad ms':>9s} {'ns/st':>7s} {'x base':>7s} path")
    for kind in ("random", "uniform", "peaked", "adversarial"):
        for T, L in shapes:
            for seed in range(a.seeds):
                steps = T * (2 * L + 1)
                dt, fl = measure(kind, T, L, seed, a.threads, a.rounds, False)
                ns = dt / steps * 1e9
                if (kind, T, L) == ("random",) + base and seed == 0:
                    ref["loss"] = ns
                gdt = gns = None
                gfl = 0
                if (T, L) in grad_shapes:
                    gdt, gfl = measure(kind, T, L, seed, a.threads, max(1, a.rounds // 2), True)
                    gns = gdt / steps * 1e9
                    if (kind, T, L) == ("random",) + base and seed == 0:
                        ref["grad"] = gns
                row = dict(family=kind, T=T, L=L, C=C, seed=seed, loss_s=dt, loss_ns_per_state_step=ns,
                           grad_s=gdt, grad_ns_per_state_step=gns,
                           logspace=bool((fl | gfl) & LOGSPACE))
                rows.append(row)
                rl = ns / ref["loss"] if "loss" in ref else float("nan")
                rg = gns / ref["grad"] if gns is not None and "grad" in ref else float("nan")
                print(f"{kind:12s} {T:6d} {L:5d} {seed:4d} {dt * 1e3:9.1f} {ns:7.3f} {rl:7.2f} "
                      + (f"{gdt * 1e3:9.1f} {gns:7.3f} {rg:7.2f}" if gdt is not None else f"{'-':>9s} {'-':>7s} {'-':>7s}")
                      + (" LOG-SPACE" if row["logspace"] else " scaled"), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(threads=a.threads, rows=rows, date=time.strftime("%Y-%m-%d %H:%M"),
                           machine=platform.platform()), f, indent=1)
    return 1 if any(r["logspace"] and r["family"] != "adversarial" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
