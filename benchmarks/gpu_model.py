#!/usr/bin/env python
"""Roofline-and-latency cost model of one float32 CTC loss + gradient call on an H100, three designs side by side.

    python benchmarks/gpu_model.py [--shapes tiny ocr ...] [--markdown] [--json out.json] [--launches]

Designs, each a list of launches (dicts with the keys of ``cyctc.cuda._backend.launch_plan_summary``: kernel, grid,
block, shared_bytes, barrier_steps, bytes_read, bytes_written, fp64_ops, fp32_ops, transcendentals):

* ``old``: cyctc's first-generation kernels (log-space double recursion, forward then backward in one block of at
  most 512 threads, FP64 row kernels): ``_backend.OLD_DESIGN`` where the backend provides it, else this file's own
  summary of ``_backend.launch_config`` from before the rewrite (``_first_generation``);
* ``new``: ``_backend.launch_plan_summary`` -- the real launch plan of the installed backend;
* ``torch``: PyTorch's native CUDA CTC as ``bench_gpu.py`` calls it (log_softmax, ``F.ctc_loss``, backward), modelled
  here from aten/src/ATen/native/cuda/LossCTC.cu (read, not copied): ``_torch_native``.

Every launch costs the largest of three lower bounds, plus a fixed gap:

* memory: (bytes read + written) / min(HBM bandwidth x efficiency, SMs in use x bytes one SM moves per clock);
* throughput: FP32 and FP64 operations and transcendentals at the H100's issue rates x occupancy share;
* latency: barrier steps x the latency of one step (barrier + the thread's dependent arithmetic for its states,
  + an L2 round trip per state tile when the step's loads are issued after the previous barrier; a design that
  loads a step's inputs one step ahead still waits at least one L2 latency per step);

occupancy share = min(1, blocks / SMs). The call's estimate is the sum over its launches, and at least its host
cost (Python/dispatcher time per call + per launch). All constants are in ``H100`` below; the figures are estimates
to compare designs, not predictions to the microsecond: bench_gpu.py measures.
"""

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_gpu import GPU_SHAPES  # noqa: E402

H100 = dict(
    name="H100 SXM5 (estimate)",
    sm_count=132,
    clock_ghz=1.83,
    hbm_tb_s=3.35,            # peak HBM3 bandwidth
    hbm_efficiency=0.85,      # share of the peak a streaming kernel reaches
    sm_bytes_per_clock=64,    # global-memory (L2) bytes one SM moves per clock: caps kernels with few blocks
    fp32_lanes_per_sm=128,    # FP32 operations per SM per clock (an FMA counts as one operation)
    fp64_lanes_per_sm=64,
    sfu_per_sm=16,            # FP32 transcendental (MUFU) operations per SM per clock
    fp64_transcendental_ops=20,  # FP64 exp / log1p: a software sequence of about this many FP64 operations
    barrier_cycles=50,        # __syncthreads of up to 1024 threads
    shared_cycles=30,         # shared-memory load latency
    l2_cycles=300,            # L2 hit latency (a state row or a logit gathered from global memory)
    dep_cycles_fp32=2.0,      # per FP32 operation on a thread's dependent chain (4-cycle latency, ILP 2)
    dep_cycles_fp64=4.0,      # per FP64 operation (8-cycle latency, ILP 2)
    dep_cycles_mufu=20,       # per FP32 transcendental
    launch_gap_us=1.5,        # device-side gap between dependent back-to-back kernels
    host_us_per_launch=5.0,   # host cost of one kernel launch (CuPy RawKernel / PyTorch op)
    host_us_cyctc=60.0,       # cyctc's Python glue per call (bench_gpu.py --glue-overhead: 55-115 us with a numpy
                              # stand-in for CuPy; real CuPy operations cost more, the count of them less)
    host_us_torch=60.0,       # PyTorch dispatcher + autograd per call beyond the per-op launches (estimate)
)

# whether a design's per-step loads wait behind the previous barrier (True) or were issued one step ahead (False)
LOADS_ON_STEP_PATH = {"old": True, "new": False, "torch": True}


# ---------------------------------------------------------------------------------------------------------------
# The three designs' launch summaries

def _backend():
    from cyctc.cuda import _backend

    return _backend


def _round_warp(n, lo, hi):
    return max(lo, min(hi, (n + 31) // 32 * 32))


def _first_generation(B, T, C, Lmax, with_grad=True):
    """Summary of the first-generation kernels (ctc.cu before the rewrite, commit a5fe765), used only when the
    installed backend has no ``OLD_DESIGN``: row_lse (FP64 online logsumexp), alpha_beta (log-space double, forward
    then backward, 3 log-adds = exp + log1p per state and frame), grad (FP64 softmax and occupancy sums)."""
    S, isz, rows = 2 * Lmax + 1, 4, B * T
    row_grid, row_block = ((rows + 7) // 8, 1, 1), (256, 1, 1)
    passes = 2 if with_grad else 1
    out = [dict(kernel="cyctc_row_lse<float>", grid=row_grid, block=row_block, shared_bytes=0, barrier_steps=0,
                bytes_read=rows * C * isz, bytes_written=rows * 8, fp64_ops=rows * C * 4, fp32_ops=0,
                transcendentals=rows * C),
           dict(kernel="cyctc_alpha_beta<float>", grid=(B, 1, 1), block=(_round_warp(S, 32, 512), 1, 1),
                shared_bytes=16 * S if 16 * S + 256 <= 48 * 1024 else 0, barrier_steps=passes * T + 2,
                bytes_read=passes * rows * S * (isz + 8), bytes_written=(2 * rows * S * 8 if with_grad else 0) + B * 8,
                fp64_ops=passes * rows * S * 10, fp32_ops=0, transcendentals=passes * rows * S * 4)]
    if with_grad:
        out.append(dict(kernel="cyctc_grad<float>", grid=row_grid, block=row_block, shared_bytes=0, barrier_steps=0,
                        bytes_read=rows * (C * isz + S * 8 + 8), bytes_written=rows * C * isz,
                        fp64_ops=rows * (C + S) * 4, fp32_ops=0, transcendentals=rows * (C + S)))
    return out


def _torch_native(B, T, C, Lmax, with_grad=True):
    """PyTorch's native CUDA path for F.ctc_loss(x.log_softmax(-1), ...) + backward, float32 (LossCTC.cu):
    the forward kernel keeps log_alpha (B, T, S) in global memory, one block row per example with threads over the
    states (a power of two >= S, at most 1024, tiles beyond), T barrier-separated steps of 3 expf + 1 logf per
    state; the backward runs the beta kernel (T more steps, log_beta (B, T, S) in global memory), collects
    alpha*beta per class and forms the gradient with elementwise kernels; log_softmax forward and backward around
    it. Small bookkeeping kernels (offsets, fills, the sum and its backward) are counted as launches only."""
    S, isz, rows, N = 2 * Lmax + 1, 4, B * T, B * T * C
    threads = 1024
    while threads // 2 >= S:
        threads //= 2
    batch = max(1, min(1024 // threads, B))
    grid = (1, (B + batch - 1) // batch, 1)  # the block's threads loop over the state tiles
    gather = rows * min(C * isz, S * 32)  # the states' log-probs: a 32-byte sector each, at most the whole row
    chain = dict(grid=grid, block=(threads, batch, 1), shared_bytes=0, barrier_steps=T,
                 bytes_read=rows * S * isz * 3 + gather, bytes_written=rows * S * isz, fp64_ops=0,
                 fp32_ops=rows * S * 12, transcendentals=rows * S * 4)
    rowk = (rows, 1, 1), (128, 1, 1)  # log_softmax: a block per row
    elem = (max(1, (N + 511) // 512), 1, 1), (128, 1, 1)  # elementwise kernels: 4 elements per thread
    out = [dict(kernel="log_softmax fwd", grid=rowk[0], block=rowk[1], shared_bytes=0, barrier_steps=0,
                bytes_read=N * isz, bytes_written=N * isz, fp64_ops=0, fp32_ops=N * 4, transcendentals=N),
           dict(kernel="ctc_loss_gpu_kernel (alpha)", **chain)]
    if with_grad:
        out += [dict(kernel="ctc_loss_backward_betas_gpu_kernel", **chain),
                dict(kernel="collect + gradient (elementwise)", grid=elem[0], block=elem[1], shared_bytes=0,
                     barrier_steps=0, bytes_read=2 * rows * S * isz + 3 * N * isz, bytes_written=2 * N * isz,
                     fp64_ops=0, fp32_ops=rows * (S * 6 + C * 6), transcendentals=rows * (2 * S + 2 * C)),
                dict(kernel="log_softmax bwd", grid=rowk[0], block=rowk[1], shared_bytes=0, barrier_steps=0,
                     bytes_read=2 * N * isz, bytes_written=N * isz, fp64_ops=0, fp32_ops=N * 3, transcendentals=N)]
    small = 7 if with_grad else 3  # target offsets, alpha/beta/grad fills, sum, sum backward, zero padded frames
    for i in range(small):
        out.append(dict(kernel="bookkeeping", grid=(1, 1, 1), block=(128, 1, 1), shared_bytes=0, barrier_steps=0,
                        bytes_read=0, bytes_written=0, fp64_ops=0, fp32_ops=0, transcendentals=0))
    return out


def design_launches(design, B, T, C, Lmax, with_grad=True):
    """The launch summaries of ``design`` ("old", "new", "torch"), or None where the backend lacks it."""
    if design == "torch":
        return _torch_native(B, T, C, Lmax, with_grad)
    be = _backend()
    if design == "new":
        f = getattr(be, "launch_plan_summary", None)
        return None if f is None else f(B, T, C, Lmax, dtype="float32", with_grad=with_grad)
    if design == "old":
        f = getattr(be, "OLD_DESIGN", None)
        if f is not None:
            return f(B, T, C, Lmax, dtype="float32", with_grad=with_grad)
        return _first_generation(B, T, C, Lmax, with_grad)
    raise ValueError(f"unknown design {design!r}")


# ---------------------------------------------------------------------------------------------------------------
# The model

def _threads(launch):
    gx, gy, gz = launch["grid"]
    bx, by, bz = launch["block"]
    return gx * gy * gz, bx * by * bz


def launch_time_us(launch, loads_on_path, hw=H100, states=None):
    """(estimate, bound) for one launch: the largest of the memory, throughput and latency bounds (us).
    ``states``: extended states per example (S), to count the state tiles a thread walks per step."""
    blocks, per_block = _threads(launch)
    share = min(1.0, blocks / hw["sm_count"])
    hz = hw["clock_ghz"] * 1e9
    byts = launch["bytes_read"] + launch["bytes_written"]
    bw = min(hw["hbm_tb_s"] * 1e12 * hw["hbm_efficiency"], min(blocks, hw["sm_count"]) * hw["sm_bytes_per_clock"] * hz)
    t_mem = byts / bw * 1e6
    fp64_heavy = launch["fp64_ops"] > launch["fp32_ops"]
    tr = launch["transcendentals"]
    fp64 = launch["fp64_ops"] + (tr * hw["fp64_transcendental_ops"] if fp64_heavy else 0)
    t_ops = (launch["fp32_ops"] / (hw["fp32_lanes_per_sm"] * hw["sm_count"] * hz * share)
             + fp64 / (hw["fp64_lanes_per_sm"] * hw["sm_count"] * hz * share)
             + (0 if fp64_heavy else tr / (hw["sfu_per_sm"] * hw["sm_count"] * hz * share))) * 1e6
    t_lat = 0.0
    steps = launch["barrier_steps"]
    if steps:
        per = steps * blocks * per_block  # thread-steps
        chain = (launch["fp32_ops"] / per * hw["dep_cycles_fp32"] + launch["fp64_ops"] / per * hw["dep_cycles_fp64"]
                 + tr / per * (hw["fp64_transcendental_ops"] * hw["dep_cycles_fp64"] if fp64_heavy
                               else hw["dep_cycles_mufu"]))
        if loads_on_path:  # each tile's loads are issued after the previous tile's stores
            tiles = math.ceil(states / launch["block"][0]) if states else 1
            cycles = hw["barrier_cycles"] + tiles * (hw["shared_cycles"] + hw["l2_cycles"]) + chain
        else:
            cycles = hw["barrier_cycles"] + max(hw["shared_cycles"] + chain, hw["l2_cycles"])
        t_lat = steps * cycles / hz * 1e6
    bounds = {"memory": t_mem, "throughput": t_ops, "latency": t_lat}
    bound = max(bounds, key=bounds.get)
    return bounds[bound] + hw["launch_gap_us"], bound


def estimate(design, B, T, C, Lmax, with_grad=True, hw=H100):
    """Totals of one call under ``design``: launches, barrier steps, bytes, FP64 operations, estimated us."""
    launches = design_launches(design, B, T, C, Lmax, with_grad)
    if launches is None:
        return None
    rows = []
    for ln in launches:
        t, bound = launch_time_us(ln, LOADS_ON_STEP_PATH[design], hw, 2 * Lmax + 1)
        rows.append(dict(ln, est_us=t, bound=bound))
    device = sum(r["est_us"] for r in rows)
    host = (hw["host_us_torch"] if design == "torch" else hw["host_us_cyctc"]) + hw["host_us_per_launch"] * len(rows)
    return dict(design=design, launches=len(rows), barrier_steps=sum(r["barrier_steps"] for r in rows),
                bytes=sum(r["bytes_read"] + r["bytes_written"] for r in rows),
                fp64_ops=sum(r["fp64_ops"] for r in rows), fp32_ops=sum(r["fp32_ops"] for r in rows),
                transcendentals=sum(r["transcendentals"] for r in rows), device_us=device, host_us=host,
                est_us=max(device, host), per_launch=rows)


def model(shapes, hw=H100):
    out = []
    for name, (B, T, C, L) in shapes:
        out.append(dict(shape=name, B=B, T=T, C=C, L=L,
                        designs={d: estimate(d, B, T, C, L, True, hw) for d in ("old", "new", "torch")}))
    return out


def _fmt_us(us):
    return f"{us / 1e3:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def format_markdown(results):
    head = ("| shape (B, T, C, L) | launches old / new / torch | barrier steps old / new / torch | "
            "MB moved old / new / torch | FP64 Mop old / new / torch | est. old | est. new | est. torch | "
            "torch / new |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        d = r["designs"]

        def trio(key, f):
            return " / ".join(f(d[k][key]) if d[k] else "n/a" for k in ("old", "new", "torch"))
        est = [(_fmt_us(d[k]["est_us"]) + ("*" if d[k]["host_us"] >= d[k]["device_us"] else "")) if d[k] else "n/a"
               for k in ("old", "new", "torch")]
        ratio = f"{d['torch']['est_us'] / d['new']['est_us']:.1f}x" if d["new"] else "n/a"
        lines.append(f"| {r['shape']} ({r['B']}, {r['T']}, {r['C']}, {r['L']}) | {trio('launches', str)} | "
                     f"{trio('barrier_steps', str)} | {trio('bytes', lambda v: f'{v / 1e6:.1f}')} | "
                     f"{trio('fp64_ops', lambda v: f'{v / 1e6:.1f}')} | {est[0]} | {est[1]} | {est[2]} | {ratio} |")
    return "\n".join(lines)


def format_launches(results):
    lines = []
    for r in results:
        for design, e in r["designs"].items():
            if not e:
                continue
            lines.append(f"{r['shape']} [{design}] host {_fmt_us(e['host_us'])}, device {_fmt_us(e['device_us'])}")
            for ln in e["per_launch"]:
                if ln["kernel"] == "bookkeeping":
                    continue
                lines.append(f"    {ln['kernel']:<36} grid {ln['grid']} block {ln['block']} steps "
                             f"{ln['barrier_steps']:>5}  {(ln['bytes_read'] + ln['bytes_written']) / 1e6:9.1f} MB  "
                             f"{_fmt_us(ln['est_us']):>9} ({ln['bound']})")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", help="shape names or name=B,T,C,L (default: the GPU benchmark grid)")
    ap.add_argument("--json", help="write the per-launch model to this file")
    ap.add_argument("--launches", action="store_true", help="also print every launch with its bound")
    args = ap.parse_args(argv)
    from bench_gpu import parse_shapes

    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(str(e))
    results = model(shapes)
    be = _backend()
    print(f"Cost model, float32 loss + gradient, {H100['name']}: {H100['sm_count']} SMs at {H100['clock_ghz']} GHz, "
          f"HBM {H100['hbm_tb_s']} TB/s x {H100['hbm_efficiency']}; old design from "
          f"{'_backend.OLD_DESIGN' if hasattr(be, 'OLD_DESIGN') else 'gpu_model._first_generation'}; new design "
          f"{'from _backend.launch_plan_summary' if hasattr(be, 'launch_plan_summary') else 'n/a (backend has no launch_plan_summary)'}")
    print(format_markdown(results))
    print("est.: the larger of device time and host time per call; * host-bound (the host floor: "
          f"{H100['host_us_cyctc']:.0f} us cyctc glue or {H100['host_us_torch']:.0f} us PyTorch, + "
          f"{H100['host_us_per_launch']:.0f} us per launch)")
    if args.launches:
        print()
        print(format_launches(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(hardware=H100, results=results), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
