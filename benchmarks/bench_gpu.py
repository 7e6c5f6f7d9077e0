#!/usr/bin/env python
"""GPU benchmark: cyctc on CuPy arrays against PyTorch's native CUDA CTC and cuDNN's, side by side in one process.

    python benchmarks/bench_gpu.py [--shapes tiny ocr ...] [--rounds 7] [--json out.json] [--budget-s 200]
    python benchmarks/bench_gpu.py --quick [--json out.json]      # speech-char, long, one-long, training
    python benchmarks/bench_gpu.py --dry-run [--shapes tiny]     # no GPU: the same code paths on the CPU
    python benchmarks/bench_gpu.py --glue-overhead                # no GPU: Python cost of the CuPy glue per call

float32, loss + gradient with respect to the logits, blank 0, the problems of ``_problems.py`` (bench_cpu.py's) plus
a training batch; inputs are moved to the device once, outside the timing. ``--json`` is rewritten after every shape
(``"complete": false`` until the run ends), so a run killed part-way keeps what it measured.

Exit status: 0 every shape measured (or skipped for the time budget) and cyctc's GPU results right; 1 a shape failed
or cyctc's GPU results disagree with its CPU results; 2 nothing was measured: no CuPy, no CUDA device, cyctc not
importable, or cyctc's CUDA backend raised on a tiny problem (each with a message saying which).

Correctness before timing: cyctc's GPU loss and gradient are compared with cyctc's CPU result, and each PyTorch
variant with cyctc's GPU result (tolerances of ``_check.py``); a mismatching variant is reported and not timed.

Columns:
* ``cyctc``: ``cyctc.ctc_loss(labels, logits (T,B,C) cupy, label_length, logit_length, blank_index=0,
  return_grad=True)`` with labels and lengths as numpy arrays (no host synchronisation in the call);
* ``cyctc-devlen``: the same with CuPy labels and lengths (one batched device-to-host copy per call);
* ``torch-native``: ``F.ctc_loss(x.log_softmax(-1), targets (B,L) int64 on the GPU, input_lengths and
  target_lengths as int64 CPU tensors, blank=0, reduction="none")``, ``.sum().backward()``, cuDNN disabled (CPU
  lengths are PyTorch's cheapest form: CUDA lengths are copied to the host inside the call);
* ``torch-cudnn``: cuDNN enabled, in the form PyTorch's ``_use_cudnn_ctc_loss`` requires (read in
  aten/src/ATen/native/cudnn/LossCTC.cpp): float32 CUDA log-probs, blank 0, concatenated int32 targets on the
  CPU, lengths as Python lists, every input length equal to T, every label length < 256 and <= its input length.
  It runs on a copy of the problem with all logit lengths = T, and cyctc is timed on that copy too
  (``cyctc-allT``). A shape that breaks the conditions, or where PyTorch still did not pick cuDNN (the backward
  node is checked: ``CudnnCtcLossBackward0``), reports "n/a" with the reason.

Timing: CUDA events on each library's current stream (both the legacy default stream). Per variant: warm-up
(at least 2 calls and 0.1 s), an inner repeat count so that one sample lasts ``--min-sample-ms``, then
``--rounds`` rounds interleaved across variants (order rotated each round); the result is the median of the
samples (device time between an event before the first and after the last call of a sample, so host overhead
that leaves the GPU idle is included). ``host us`` is the host time per cyctc call before the sample's final sync
(the Python + launch cost). ``--budget-s`` bounds the run: shapes left when it is spent are listed as skipped.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import _check  # noqa: E402
import _problems  # noqa: E402

# the GPU grid: bench_cpu.py's shapes plus a training batch (too big for the CPU benchmark's default run)
GPU_SHAPES = dict(_problems.SHAPES, training=(64, 1000, 5000, 200))
# --quick (gpu_check.sh --quick): the shapes where the recursion's critical path, not the host, decides
QUICK_SHAPES = ("speech-char", "long", "one-long", "training")
NOTHING_MEASURED = 2  # exit status when no shape could run at all
COLUMNS = ["cyctc", "cyctc-devlen", "torch-native", "cyctc-allT", "torch-cudnn"]
CUDNN_MAX_LABEL = 256  # PyTorch: target_lengths[b] < 256


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", help=f"shape names ({', '.join(GPU_SHAPES)}), or name=B,T,C,L "
                                                "(default: all)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per variant (default 7)")
    ap.add_argument("--min-sample-ms", type=float, default=10.0,
                    help="short calls are repeated so that one timed sample lasts at least this long (default 10)")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="stop starting new shapes after this many seconds (0: no limit)")
    ap.add_argument("--json", help="write every result (and the environment) to this JSON file, rewritten after "
                                   "each shape")
    ap.add_argument("--quick", action="store_true",
                    help=f"the quick check's shapes ({', '.join(QUICK_SHAPES)}) unless --shapes names others")
    ap.add_argument("--no-torch", action="store_true", help="time cyctc alone")
    ap.add_argument("--glue-overhead", action="store_true",
                    help="no GPU: time the Python glue of each public CuPy entry with tests/fake_cupy.py standing "
                         "in for CuPy and the kernels stubbed; print syncs and transfers per call")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: run the same code paths with numpy arrays and the CPU backend, host timers")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.min_sample_ms <= 0:
        ap.error("--min-sample-ms must be > 0")
    if args.shapes is None and args.quick:
        args.shapes = list(QUICK_SHAPES)
    if args.shapes is None and args.dry_run:
        args.shapes = ["tiny", "ocr"]
    try:
        args.shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(str(e))
    return args


def parse_shapes(spec):
    """Names (of GPU_SHAPES) or name=B,T,C,L -> list of (name, (B, T, C, L))."""
    if not spec:
        return list(GPU_SHAPES.items())
    out = []
    for item in spec:
        for part in item.split():
            if "=" in part:
                key, dims = part.split("=", 1)
                try:
                    dims = tuple(int(v) for v in dims.split(","))
                except ValueError:
                    dims = ()
                if len(dims) != 4 or min(dims) < 1:
                    raise ValueError(f"--shapes: {part!r}: expected name=B,T,C,L (positive integers)")
                out.append((key, dims))
            elif part in GPU_SHAPES:
                out.append((part, GPU_SHAPES[part]))
            else:
                raise ValueError(f"--shapes: unknown shape {part!r}; known: {', '.join(GPU_SHAPES)}")
    return out


def cudnn_eligible(label_length, logit_length, T, blank=0, dtype="float32"):
    """(True, "") when PyTorch's ``_use_cudnn_ctc_loss`` (list lengths, CPU int32 concatenated targets) would pick
    cuDNN for these lengths, else (False, the first condition that fails)."""
    label_length, logit_length = np.asarray(label_length), np.asarray(logit_length)
    if blank != 0:
        return False, "blank is not 0"
    if np.dtype(dtype) != np.float32:
        return False, "log-probs are not float32"
    if label_length.size and int(label_length.max()) >= CUDNN_MAX_LABEL:
        return False, f"a label of {int(label_length.max())} >= {CUDNN_MAX_LABEL}"
    if np.any(logit_length != T):
        return False, "logit lengths differ from T"
    if np.any(label_length > logit_length):
        return False, "a label longer than its input"
    return True, ""


def all_t_copy(p):
    """The problem with every logit length = T (cuDNN's condition), same logits and labels."""
    return _problems.Problem(p.name, p.logits, p.labels, p.label_length, np.full(p.B, p.T, np.int32))


# ---------------------------------------------------------------------------------------------------------------
# Devices: the real one (CuPy + CUDA events) or the dry run's stand-in (numpy + host clock)

class CupyDevice:
    def __init__(self, cupy):
        self.cp = cupy
        self.xp = cupy

    def to(self, a):
        return self.cp.asarray(a)

    def host(self, a):
        return self.cp.asnumpy(a)

    def sync(self):
        self.cp.cuda.Device().synchronize()

    def release(self):
        """Hand CuPy's cached blocks back to the driver (PyTorch's allocator needs them on the next shape)."""
        self.cp.get_default_memory_pool().free_all_blocks()

    def events(self):
        e = (self.cp.cuda.Event(), self.cp.cuda.Event())
        return e[0].record, e[1].record, lambda: (e[1].synchronize(), self.cp.cuda.get_elapsed_time(*e))[1] / 1e3

    def info(self):
        cp = self.cp
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return dict(gpu=name, compute_capability=f"{props['major']}.{props['minor']}",
                    sm_count=props["multiProcessorCount"], memory_gib=round(props["totalGlobalMem"] / 2**30, 1),
                    driver=nvidia_driver_version(), cuda_driver=_cuda_version(cp.cuda.runtime.driverGetVersion()),
                    cuda_runtime=_cuda_version(cp.cuda.runtime.runtimeGetVersion()), cupy=cp.__version__)


class DryDevice:
    """numpy in place of CuPy: cyctc runs its CPU backend, timed with the host clock (development only)."""

    xp = np

    def to(self, a):
        return np.array(a)

    def host(self, a):
        return np.asarray(a)

    def sync(self):
        pass

    def release(self):
        pass

    def events(self):
        t = [0.0, 0.0]

        def start():
            t[0] = time.perf_counter()

        def stop():
            t[1] = time.perf_counter()
        return start, stop, lambda: t[1] - t[0]

    def info(self):
        return dict(gpu="dry run (no GPU: numpy arrays, cyctc's CPU backend, host clock)")


class TorchTimer:
    def __init__(self, torch):
        self.torch = torch

    def events(self):
        c = self.torch.cuda
        e = (c.Event(enable_timing=True), c.Event(enable_timing=True))
        return e[0].record, e[1].record, lambda: (e[1].synchronize(), e[0].elapsed_time(e[1]))[1] / 1e3


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}"


def parse_nvidia_driver(text):
    """The NVIDIA driver version (e.g. "570.86.15") in the text of /proc/driver/nvidia/version, or None."""
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text or "")
    return m.group(1) if m else None


def nvidia_driver_version():
    """The NVIDIA driver's version: /proc/driver/nvidia/version, else nvidia-smi; "unknown" when neither says."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            v = parse_nvidia_driver(f.read())
        if v:
            return v
    except OSError:
        pass
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        v = r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""
        return v or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkout_commit():
    """The benchmarked checkout's commit (short hash, "+dirty" with uncommitted changes), or None."""
    try:
        git = ["git", "-C", HERE]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=20).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_ready():
    """(cupy module, None) or (None, reason)."""
    try:
        import cupy
    except ImportError as e:
        return None, f"CuPy is not installed ({e}); pip install cupy-cuda13x (or cupy-cuda12x)"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device
        return None, f"no CUDA device ({type(e).__name__}: {e})"
    if n < 1:
        return None, "no CUDA device"
    return cupy, None


# ---------------------------------------------------------------------------------------------------------------
# Timing

def time_variants(variants, rounds, min_sample_s):
    """variants: name -> (fn, events_factory). Interleaved rounds; returns name -> dict(median, q25, q75, samples,
    inner, host_per_call) in seconds (device time per call; host time per call before the sample's sync)."""
    inner = {}
    for name, (fn, events) in variants.items():
        t0 = time.perf_counter()
        calls = 0
        while calls < 2 or time.perf_counter() - t0 < 0.1:
            fn()
            calls += 1
        est = _sample(fn, events, 1)[0]
        inner[name] = max(1, min(1000, math.ceil(min_sample_s / max(est, 1e-7))))
    samples = {n: [] for n in variants}
    hosts = {n: [] for n in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            dev_s, host_s = _sample(variants[name][0], variants[name][1], inner[name])
            samples[name].append(dev_s / inner[name])
            hosts[name].append(host_s / inner[name])
    out = {}
    for name, s in samples.items():
        a = np.asarray(s)
        out[name] = dict(median=float(np.median(a)), q25=float(np.percentile(a, 25)), q75=float(np.percentile(a, 75)),
                         samples=[float(v) for v in a], inner=inner[name],
                         host_per_call=float(statistics.median(hosts[name])))
    return out


def _sample(fn, events, k):
    start, stop, elapsed = events()
    start()
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    host = time.perf_counter() - t0
    stop()
    return elapsed(), host


# ---------------------------------------------------------------------------------------------------------------
# One shape

def run_shape(name, dims, dev, torch, args, log):
    import cyctc

    B, T, C, L = dims
    t_start = time.perf_counter()
    p = _problems.make_problem(name, shape=dims)
    row = dict(shape=name, B=B, T=T, C=C, L=L, checks={}, notes=[])
    tol = _check.TOL["float32"]
    variants = {}
    eligible, why = cudnn_eligible(p.label_length, np.full(B, T), T)
    problems = [("", p)] + ([("-allT", all_t_copy(p))] if torch is not None and eligible else [])
    if torch is not None and not eligible:
        row["notes"].append(f"torch-cudnn n/a: {why}")
    for suffix, prob in problems:
        x = dev.to(prob.logits)
        labels, ll, tl = prob.labels, prob.label_length, prob.logit_length
        want_loss, want_grad = cyctc.ctc_loss(labels, prob.logits, ll, tl, blank_index=0, return_grad=True)

        def cy(x=x, labels=labels, ll=ll, tl=tl):
            return cyctc.ctc_loss(labels, x, ll, tl, blank_index=0, return_grad=True)
        g_loss, g_grad = cy()
        ok = _checked(row, "cyctc" + suffix, dev.host(g_loss), dev.host(g_grad), want_loss, want_grad, tol, log)
        if ok:
            variants["cyctc" + suffix] = (cy, dev.events)
        if suffix == "":
            dl = [dev.to(v) for v in (labels, ll, tl)]

            def cy_dev(x=x, dl=dl):
                return cyctc.ctc_loss(dl[0], x, dl[1], dl[2], blank_index=0, return_grad=True)
            d_loss, d_grad = cy_dev()
            if _checked(row, "cyctc-devlen", dev.host(d_loss), dev.host(d_grad), want_loss, want_grad, tol, log):
                variants["cyctc-devlen"] = (cy_dev, dev.events)
        if torch is None:
            continue
        key = "torch-native" if suffix == "" else "torch-cudnn"
        fn, note = _torch_variant(torch, prob, cudnn=suffix != "")
        if fn is None:
            row["notes"].append(f"{key} n/a: {note}")
            continue
        t_loss, t_grad = fn()
        if _checked(row, key, t_loss.detach().cpu().numpy(), t_grad.cpu().numpy(), dev.host(g_loss),
                    dev.host(g_grad), tol, log):
            variants[key] = (fn, TorchTimer(torch).events)
        del t_loss, t_grad
    dev.sync()
    row["grad"] = time_variants(variants, args.rounds, args.min_sample_ms / 1e3)
    row["seconds"] = round(time.perf_counter() - t_start, 1)
    cells = "  ".join(f"{k} {v['median'] * 1e3:.3f} ms" for k, v in row["grad"].items())
    log(f"{name}: loss+grad  {cells}" + ("  [" + "; ".join(row["notes"]) + "]" if row["notes"] else ""))
    return row


def _checked(row, key, loss, grad, want_loss, want_grad, tol, log):
    ok, info = _check.compare(loss, grad, want_loss, want_grad, tol)
    row["checks"][key] = dict(ok=ok, **info)
    against = "cyctc CPU" if key.startswith("cyctc") else "cyctc GPU"
    log(f"{row['shape']}: check {key} vs {against}: {'ok' if ok else 'MISMATCH: not timed'} "
        f"{_check.describe(info)}")
    return ok


def _torch_variant(torch, p, cudnn):
    """(function returning (loss, grad w.r.t. the logits), "") or (None, why not)."""
    F = torch.nn.functional
    xt = torch.from_numpy(p.logits).cuda().requires_grad_(True)
    if not cudnn:
        tgt = torch.from_numpy(p.labels.astype(np.int64)).cuda()
        il = torch.from_numpy(p.logit_length.astype(np.int64))
        tl = torch.from_numpy(p.label_length.astype(np.int64))
    else:
        tgt = torch.from_numpy(np.concatenate([p.labels[b, :p.label_length[b]] for b in range(p.B)])
                               .astype(np.int32))  # on the CPU
        il = [int(v) for v in p.logit_length]
        tl = [int(v) for v in p.label_length]

    def call():
        was = torch.backends.cudnn.enabled  # PyTorch always asks cuDNN for its deterministic CTC algorithm
        torch.backends.cudnn.enabled = cudnn
        try:
            xt.grad = None
            loss = F.ctc_loss(xt.log_softmax(-1), tgt, il, tl, blank=0, reduction="none")
            loss.sum().backward()
        finally:
            torch.backends.cudnn.enabled = was
        return loss, xt.grad
    try:
        loss, _ = call()
    except Exception as e:  # e.g. a cuDNN without CTC support
        return None, f"{type(e).__name__}: {e}"
    node = type(loss.grad_fn).__name__ if loss.grad_fn is not None else "none"
    if cudnn and "Cudnn" not in node:
        return None, f"PyTorch did not pick cuDNN (backward node {node})"
    if not cudnn and "Cudnn" in node:
        return None, "PyTorch picked cuDNN with cuDNN disabled"
    return call, ""


# ---------------------------------------------------------------------------------------------------------------
# Report

def write_json(path, data):
    """Replace ``path`` with ``data`` as JSON in one step (written beside it, then renamed): a run killed while
    writing leaves the previous complete file, never a truncated one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def format_table(results):
    def ms(g, k):
        return f"{g[k]['median'] * 1e3:.3f}" if k in g else "n/a"

    def ratio(g, a, b):
        return f"{g[a]['median'] / g[b]['median']:.2f}x" if a in g and b in g else "n/a"
    head = ["shape (B, T, C, L)"] + COLUMNS + ["native / cyctc", "cudnn / cyctc-allT", "cyctc host us/call"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        g = r.get("grad", {})
        if r.get("skipped"):
            lines.append(f"| {r['shape']} | skipped: {r['skipped']} |")
            continue
        host = f"{g['cyctc']['host_per_call'] * 1e6:.0f}" if "cyctc" in g else "n/a"
        cells = [f"{r['shape']} ({r['B']}, {r['T']}, {r['C']}, {r['L']})"] + [ms(g, k) for k in COLUMNS] + [
            ratio(g, "torch-native", "cyctc"), ratio(g, "torch-cudnn", "cyctc-allT"), host]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(dev, torch):
    import cyctc

    env = dict(dev.info(), python=platform.python_version(), numpy=np.__version__,
               cyctc=getattr(cyctc, "__version__", "?"), commit=checkout_commit(),
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), host=platform.node())
    if torch is not None:
        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   cudnn=str(torch.backends.cudnn.version()))
    return env


def glue_overhead(repeats=9, calls=300, patch=None):
    """Per public entry, with tests/fake_cupy.py standing in for CuPy (numpy data; each CuPy operation then costs
    about a numpy call instead of a kernel launch) and the kernels stubbed: host time per call (best of
    ``repeats``), and the syncs, host-to-device copies and device operations the call asks CuPy for. No GPU.
    ``patch``: what installs the stand-ins (pytest's monkeypatch in tests; by default they stay for the process)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import fake_cupy
    from cuda_calls import is_blank_last, problem, public_calls

    from cyctc.cuda import _backend

    class _Patch:  # for good (a benchmark process); tests pass pytest's monkeypatch
        def setitem(self, d, k, v):
            d[k] = v

        def setattr(self, obj, name, v):
            setattr(obj, name, v)
    patch = patch or _Patch()
    fake_cupy.install(patch)
    patch.setattr(_backend, "get_function", lambda dev, src, name: fake_cupy.Kernel(name))
    rows = []
    for small_on_device in (False, True):
        for name, _ in public_calls(*problem()):
            if small_on_device and name.endswith("no lengths"):
                continue
            x, labels, ll, tl = problem(blank=6 if is_blank_last(name) else 0)
            fn = dict(public_calls(x, labels, ll, tl))[name]
            cache = {}

            def dev(v):
                if id(v) not in cache:
                    cache[id(v)] = (v, fake_cupy.asarray(v))
                return cache[id(v)][1]
            small = dev if small_on_device else (lambda v: v)
            fn(small, dev)
            fake_cupy.reset()
            fn(small, dev)
            counts = dict(fake_cupy.COUNTS)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn(small, dev)
                best = min(best, (time.perf_counter() - t0) / calls)
            rows.append((name, "cupy" if small_on_device else "numpy", best, counts))
    print("Host time per call of the CuPy glue (fake CuPy, kernels stubbed, best of repeats) and what it asks of CuPy")
    print(f"{'entry':<36}{'lengths':>8}{'us/call':>9}{'syncs':>7}{'H2D':>5}{'device ops':>12}")
    for name, kind, t, c in rows:
        print(f"{name:<36}{kind:>8}{t * 1e6:>9.1f}{c['syncs']:>7}{c['h2d']:>5}{c['ops']:>12}")
    return rows


def main(argv=None):
    args = parse_args(argv)

    def log(msg=""):
        print(msg, flush=True)
    if args.glue_overhead:
        glue_overhead()
        return 0
    if args.dry_run:
        dev = DryDevice()
    else:
        cupy, why = gpu_ready()
        if cupy is None:
            log(f"bench_gpu: FAILED: nothing measured: {why}.")
            return NOTHING_MEASURED
        dev = CupyDevice(cupy)
    try:
        import cyctc
    except ImportError as e:
        log(f"bench_gpu: FAILED: nothing measured: cyctc is not importable ({e}); install it first "
            "(pip install --no-build-isolation .).")
        return NOTHING_MEASURED
    if not args.dry_run:
        try:
            t = _problems.make_problem("tiny")
            cyctc.ctc_loss(t.labels, dev.to(t.logits), t.label_length, t.logit_length, blank_index=0,
                           return_grad=True)
            dev.sync()
        except Exception as e:
            log(f"bench_gpu: FAILED: nothing measured: cyctc's CUDA backend raised on a tiny problem "
                f"({type(e).__name__}: {e}).")
            return NOTHING_MEASURED
    torch = None
    if not (args.no_torch or args.dry_run):
        try:
            import torch
            if not torch.cuda.is_available():
                log("note: torch sees no CUDA device: cyctc is timed alone")
                torch = None
        except ImportError:
            log("note: torch is not installed: cyctc is timed alone")
    env = environment(dev, torch)
    log("cyctc GPU benchmark: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    log(f"float32, loss + gradient; {args.rounds} rounds, median of CUDA-event samples >= {args.min_sample_ms} ms")
    results = []

    def save(complete):
        if args.json:
            write_json(args.json, dict(environment=env, complete=complete, shapes=[n for n, _ in args.shapes],
                                       results=results))
    save(False)
    t0 = time.perf_counter()
    for name, dims in args.shapes:
        if args.budget_s and time.perf_counter() - t0 > args.budget_s:
            results.append(dict(shape=name, B=dims[0], T=dims[1], C=dims[2], L=dims[3],
                                skipped=f"time budget of {args.budget_s:.0f} s spent"))
            log(f"{name}: skipped (time budget spent)")
            continue
        try:
            results.append(run_shape(name, dims, dev, torch, args, log))
        except Exception as e:  # one shape failing (e.g. out of memory) must not hide the others
            results.append(dict(shape=name, B=dims[0], T=dims[1], C=dims[2], L=dims[3],
                                skipped=f"{type(e).__name__}: {e}"))
            log(f"{name}: FAILED {type(e).__name__}: {e}")
        save(False)
        dev.release()
        if torch is not None:
            torch.cuda.empty_cache()
    log()
    log(format_table(results))
    log("ms per loss+gradient call (median, CUDA events); cuDNN compared on the copy with all logit lengths = T")
    mismatches = [f"{r['shape']}:{k}" for r in results for k, c in r.get("checks", {}).items() if not c["ok"]]
    if mismatches:
        log("MISMATCHES (not timed): " + ", ".join(mismatches))
    save(True)
    failed = [r["shape"] for r in results if "skipped" in r and not r["skipped"].startswith("time budget")]
    if failed:
        log("FAILED shapes: " + ", ".join(failed))
    return 1 if failed or any(m.split(":")[1].startswith("cyctc") for m in mismatches) else 0


if __name__ == "__main__":
    sys.exit(main())
