#!/usr/bin/env python
"""Instruction-level cost model of one float32 CTC loss + gradient call on an H200: cyctc (second and third
generation chain kernels) against PyTorch's native CUDA CTC. ESTIMATES, not measurements: bench_gpu.py on a device
measures (issue 22), and where it has, its figures replace these.

    python benchmarks/gpu_model.py [--shapes speech-char long ...] [--sass committed|live|FILE]
                                   [--k 8] [--instr-per-state 16] [--warps-per-block 8] [--launches] [--json out.json]

What is modelled
================

The chain (the T-step recursion) is where the designs differ; everything else is bandwidth.

A *chain* is one example in one direction (forward or backward). Its per-frame step on one SM costs

    frame cycles = max(issue, latency)
    issue   = warps per scheduler x max(I, 8 x MUFU)   (a scheduler issues one warp-instruction per clock; the 16
                                                         SFU lanes of an SM take 8 clocks per warp-wide MUFU)
    latency = I x alu_latency / ilp                     (one warp's own dependent path through its instructions)
              + collectives x shfl_latency              (shuffles / warp reductions on that path)
              + the memory round trips on the path      (shared memory, L2 or HBM, per state tile)
              + barrier_cycles                          (when a chain spans several warps, or a block shares a barrier)

where I is the instructions one thread executes per frame (all its state tiles) and "warps per scheduler" counts
every warp resident on the SM (the SM's four schedulers share them). A launch takes waves x T x frame cycles, the
waves and residency following from the occupancy limits (64 warps, 32 blocks, 65536 registers and 228 KiB of
shared memory per SM, the kernel's registers from ptxas). Every example is taken at full length, on the scaled path.
The other kernels (cyctc's rows and gradient kernels, PyTorch's log_softmax, gradient and elementwise kernels) are
bound by bytes / min(HBM 4.8 TB/s x 0.85, SMs in use x 64 B per clock), or by their instruction issue. Each launch
adds a 1.5 us gap; a call costs at least its host time.

Host time. PyTorch's: an assumed 60 us of dispatcher and autograd per call plus 5 us per op it launches (not
measured here: no PyTorch CUDA build on this machine). cyctc's is MEASURED, not assumed (``measure_glue``): the
public call ``cyctc.ctc_loss(labels, x, label_length, logit_length, return_grad=True)`` with numpy labels and lengths
(bench_gpu.py's cyctc column) is timed per shape with tests/fake_cupy.py standing in for CuPy (an allocation is a
cached lookup; kernels stubbed to no-ops), best of 5 x 40 calls, on the machine that runs the model; the stand-in
counts the device operations and host-to-device copies the call asks for, and the model adds an estimated 3 us of
CuPy's own host cost for each of those and 5 us per launch. The stand-in's other Python (array wrappers, views,
about 0.3-2 us an operation) stays in the measurement, about what CuPy's array bookkeeping costs; the figure is
that machine's: the committed log was made on a shared 2-vCPU VM, slower than a usual GPU host.

cyctc, second generation (``cyctc_chain<T>``, today's ctc.cu): grid (B, 2), forward and backward chains
concurrently, one state per thread, ``_backend.chain_threads(S)`` threads (at most 1024; more states walk tiles).
I per frame = the loop body's static instruction count from ``sass_report.py`` without its inner loop (one pass
with one tile: 559 for float on sm_90) plus the inner loop's body (487) per further tile. These static counts
include the rare paths, so the estimate is an upper bound of the issue work (by perhaps 10-15 %). On the path: the
rows' generic loads (2 shared-memory round trips), 6 warp reductions, one barrier per frame.

cyctc, third generation (``cyctc_chain<T, K>``, being built): K consecutive states per thread in registers;
neighbours by warp shuffles (``collectives``, about 3 a frame, on the path); a chain of S states takes
ceil(S / 32K) warps, one warp needs no block barrier, several warps exchange their boundary states through shared
memory with one __syncthreads per frame; ``chains per block`` chains share a block (a block of about
``warps_per_block`` warps); the next frame's probabilities are prefetched (no memory latency on the path);
S > 1024 K walks tiles (rows in global memory: an L2 round trip per tile). I = instructions per state x K. The
inputs (K, instructions per state, warps per block, registers) are parameters, taken from ``sass_report.py`` where
ctc.cu has a ``cyctc_chain<float, K>`` and otherwise assumed (K = 8, 16 instructions per state, 64 registers): the
model says which.

PyTorch native (aten/src/ATen/native/cuda/LossCTC.cu, described in our words): ``F.ctc_loss`` on log_softmax output.
The forward (alpha) kernel gives each example a row of a 2-D block: the x dimension covers the extended states,
rounded up to a power of two >= S and capped at 1024 threads (longer label sequences loop over state tiles), the y
dimension packs as many examples as fit in 1024 threads, and the grid's y dimension covers the rest of the batch. It
walks the frames with a __syncthreads between frames; in each frame a thread reads the previous frame's log-alpha of
its state and of its one or two predecessors from a (B, T, S) global tensor, reads the label of its state (and the
one two states back, for the skip test) and the frame's log-probability of that label from global memory, and
combines the predecessors in log space (the maximum, then exp of each difference, a sum, a log: three exps and one
log per state), writing log-alpha back to global memory. The issue's SASS count of that step is about 111
instructions per state and frame (we take 111 and 4 MUFU). The backward kernel computes log-beta the same way,
after the forward (the two kernels run one after the other). The gradient has two variants chosen by a size rule
(as we recall it, roughly 2 T + 2.4 B + 0.2 C > 450 picks the "large" one): the large one exponentiates the
log-probabilities into the gradient tensor, subtracts the blanks' occupancies through a logsumexp over every other
state of alpha + beta (tensor operations), scales by the incoming gradient, then a kernel with a thread per (example,
label position) walks the frames and subtracts each non-blank state's occupancy with atomic adds; the small one
has a thread per (frame, example) that log-adds alpha + beta over all states into its gradient row and then turns
the row into the gradient, class by class. Padded frames are zeroed by one more kernel; log_softmax's forward and
backward and a few bookkeeping operations (the loss's reduction, its backward, fills) surround it. The log-alpha
reads are L2 hits (the previous frame, written by the block); the log-probability gather is an L2 hit when the
(T, B, C) tensor fits in L2 (50 MB) and an HBM access otherwise; both wait on the path of every state tile.

All constants are in ``H200`` below; these are estimates to compare designs, not predictions to the microsecond.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_gpu import GPU_SHAPES  # noqa: E402

SASS_JSON = os.path.join(HERE, "results", "sass_gen2_2026-12-04.json")

H200 = dict(
    name="H200 SXM (estimate)",
    sm_count=132,
    clock_ghz=1.98,
    hbm_tb_s=4.8,             # peak HBM3e bandwidth
    hbm_efficiency=0.85,      # share of the peak a streaming kernel reaches
    l2_bytes=50 * 2 ** 20,    # L2 cache
    sm_bytes_per_clock=64,    # global-memory bytes one SM moves per clock: caps kernels with few blocks
    schedulers_per_sm=4,      # warp schedulers: one warp-instruction per clock each
    lanes_per_sm=128,         # FP32 / INT32 lanes
    sfu_per_sm=16,            # MUFU lanes: a warp-wide MUFU occupies a scheduler's 4 SFU lanes for 8 clocks
    regs_per_sm=65536,        # 32-bit registers
    smem_per_sm=228 * 1024,   # shared memory per SM (up to 227 KiB per block)
    max_warps_per_sm=64,
    max_blocks_per_sm=32,
    alu_latency=4,            # cycles of a dependent FP32 / INT32 instruction
    shfl_latency=24,          # a shuffle or warp reduction on the dependent path
    shared_latency=30,        # shared-memory load
    l2_latency=260,           # L2 hit
    hbm_latency=600,          # L2 miss to HBM
    barrier_cycles=40,        # __syncthreads once every warp has arrived
    launch_gap_us=1.5,        # device-side gap between dependent kernels
    host_us_per_launch=5.0,   # host cost of one kernel launch (CuPy RawKernel / PyTorch op)
    host_us_per_cupy_op=3.0,  # CuPy's own host cost of one device operation the glue asks for (a memory-pool
                              # allocation, an asynchronous host-to-device copy) beyond the stand-in's: an estimate
    host_us_torch=60.0,       # PyTorch dispatcher + autograd per call beyond the per-op launches
)
# cyctc's Python glue per call is not a constant here: measure_glue() times it on this machine (see there)

# PyTorch's alpha / beta step per state and frame (issue 20: SASS of the native alpha kernel)
TORCH_INSTR_PER_STATE = 111
TORCH_MUFU_PER_STATE = 4      # three exps and a log
TORCH_REGISTERS = 40          # (estimate; the kernel is small)

# third-generation assumptions when ctc.cu has no cyctc_chain<float, K> yet (the lead's design figures)
GEN3_DEFAULTS = dict(K=8, instr_per_state=16.0, registers=64, collectives=3, warps_per_block=8, ilp=None)


# ---------------------------------------------------------------------------------------------------------------
# SASS counts

def load_sass(source="committed"):
    """The sass_report.py report: ``committed`` (benchmarks/results/sass_gen2_2026-12-04.json), ``live`` (compile
    now: needs NVRTC and cuobjdump) or a JSON file. Returns (report dict, description)."""
    if source == "live":
        import sass_report

        be = sass_report.backend()
        rep = sass_report.analyse_source(be.kernel_source("ctc.cu"), be.name_expressions("ctc.cu"), "sm_90",
                                         _backend=be)
        return rep, "live from sass_report.py (sm_90)"
    path = SASS_JSON if source == "committed" else source
    with open(path) as f:
        rep = json.load(f)
    return rep, f"from {os.path.relpath(path, os.path.dirname(HERE))}"


def gen2_counts(report):
    """Per-frame instructions of the second-generation float chain: (one pass with one tile, per further tile,
    registers)."""
    k = next(k for k in report["kernels"] if k["name"] == "cyctc_chain<float>")
    lp = k["loop"]
    inner = sum(d["instructions"] for d in lp["inner_loops"]) / lp["copies"]
    one = lp["instr_per_frame_without_inner_loops"] + lp["back_edge_per_frame"]
    return dict(one_pass=one, per_tile=inner, registers=k["registers"])


def gen3_params(report=None, **override):
    """Third-generation inputs: from a ``cyctc_chain<float, K>`` in ``report`` if there is one, else
    GEN3_DEFAULTS; ``override`` wins. Adds ``source``."""
    p = dict(GEN3_DEFAULTS, source="assumed (K = 8, 16 instructions per state, 64 registers)")
    if report is not None:
        for k in report["kernels"]:
            lp = k.get("loop")
            if k["name"].startswith("cyctc_chain<float,") and lp:
                shfl = lp["per_frame"].get("shfl", 0)
                p.update(K=lp["K"], instr_per_state=lp["instr_per_state"], registers=k["registers"],
                         collectives=max(1, shfl), source=f"measured: {k['name']} in the SASS report")
                break
    for key, v in override.items():
        if v is not None:
            p[key] = v
            if key in ("K", "instr_per_state", "registers"):
                p["source"] = "given on the command line"
    return p


# ---------------------------------------------------------------------------------------------------------------
# Building blocks

def occupancy(threads_per_block, registers, smem_per_block, hw=H200, min_blocks_bound=None):
    """Blocks of one kernel resident per SM (0: it cannot launch)."""
    warps = math.ceil(threads_per_block / 32)
    regs_per_warp = math.ceil(registers * 32 / 256) * 256  # allocated per warp in units of 256 registers
    lim = [hw["max_blocks_per_sm"], hw["max_warps_per_sm"] // warps, hw["regs_per_sm"] // (regs_per_warp * warps)]
    if smem_per_block:
        lim.append(hw["smem_per_sm"] // smem_per_block)
    return max(0, min(lim))


def chain_launch(name, frames, chains, warps_per_chain, chains_per_block, instr, hw=H200, *, registers=64,
                 smem_per_block=0, mufu=0.0, ilp=2.0, collectives=0, memory_on_path=0.0, barrier=True,
                 bytes_moved=0, instr_path=None):
    """One chain kernel: ``chains`` independent chains of ``frames`` steps, each over ``warps_per_chain`` warps,
    ``chains_per_block`` to a block; ``instr`` / ``mufu``: instructions / MUFU a thread executes per frame;
    ``memory_on_path``: cycles of memory round trips on a frame's dependent path; ``instr_path``: the instructions
    of the busiest thread when ``instr`` is an average over threads of which some idle (default ``instr``).
    Returns the launch dict."""
    threads = warps_per_chain * chains_per_block * 32
    if threads > 1024:
        raise ValueError(f"{name}: {threads} threads in a block")
    blocks = math.ceil(chains / chains_per_block)
    per_sm = occupancy(threads, registers, smem_per_block, hw)
    if per_sm < 1:
        raise ValueError(f"{name}: a block of {threads} threads, {registers} registers, {smem_per_block} B shared "
                         "does not fit an SM")
    waves = math.ceil(blocks / (hw["sm_count"] * per_sm))
    resident = min(per_sm, math.ceil(blocks / hw["sm_count"]))  # blocks on the busiest SM in a wave
    warps_per_sched = math.ceil(resident * warps_per_chain * chains_per_block / hw["schedulers_per_sm"])
    sfu_clocks = 32 / (hw["sfu_per_sm"] / hw["schedulers_per_sm"])
    issue = warps_per_sched * max(instr, sfu_clocks * mufu)
    latency = ((instr if instr_path is None else instr_path) * hw["alu_latency"] / ilp + collectives * hw["shfl_latency"] + memory_on_path
               + (hw["barrier_cycles"] if barrier else 0))
    frame = max(issue, latency)
    hz = hw["clock_ghz"] * 1e9
    t_chain = waves * frames * frame / hz * 1e6
    sms = min(blocks, hw["sm_count"])
    t_mem = bytes_moved / min(hw["hbm_tb_s"] * 1e12 * hw["hbm_efficiency"], sms * hw["sm_bytes_per_clock"] * hz) * 1e6
    bound = "issue" if issue >= latency else "latency"
    if t_mem > t_chain:
        bound = "memory"
    return dict(kernel=name, grid=(blocks, 1, 1), block=(threads, 1, 1), kind="chain", frames=frames,
                warps_per_chain=warps_per_chain, chains_per_block=chains_per_block, blocks_per_sm=per_sm,
                waves=waves, instr_per_frame=instr, issue_cycles=issue, latency_cycles=latency, frame_cycles=frame,
                bytes=bytes_moved, est_us=max(t_chain, t_mem) + hw["launch_gap_us"], bound=bound)


def stream_launch(name, blocks, threads, bytes_moved, instr_per_thread=0.0, hw=H200):
    """A bandwidth kernel: bytes over min(HBM, SMs in use x 64 B/clock), or its instruction issue (the larger)."""
    hz = hw["clock_ghz"] * 1e9
    sms = min(max(1, blocks), hw["sm_count"])
    t_mem = bytes_moved / min(hw["hbm_tb_s"] * 1e12 * hw["hbm_efficiency"], sms * hw["sm_bytes_per_clock"] * hz) * 1e6
    warps = blocks * math.ceil(threads / 32)
    t_issue = warps * instr_per_thread / (sms * hw["schedulers_per_sm"] * hz) * 1e6
    bound = "memory" if t_mem >= t_issue else "issue"
    return dict(kernel=name, grid=(blocks, 1, 1), block=(threads, 1, 1), kind="stream", bytes=bytes_moved,
                est_us=max(t_mem, t_issue) + hw["launch_gap_us"], bound=bound)


def _rows_and_grad(B, T, C, Lmax, hw):
    """cyctc's rows and gradient kernels (as today, one warp per (b, t) row), from the launch plan."""
    from cyctc.cuda import _backend

    out = []
    for ln in _backend.launch_plan_summary(B, T, C, Lmax, dtype="float32", with_grad=True):
        if ln["kernel"].startswith("cyctc_chain"):
            continue
        blocks, threads = math.prod(ln["grid"]), math.prod(ln["block"])
        # per thread: its share of the row's FP32 work and transcendentals (MUFU at 8 clocks a warp)
        per_thread = (ln["fp32_ops"] + 8 * ln["transcendentals"]) / (blocks * threads)
        out.append(stream_launch(ln["kernel"], blocks, threads, ln["bytes_read"] + ln["bytes_written"], per_thread,
                                 hw))
    return out


def _chain_bytes(B, T, Lmax):
    from cyctc.cuda import _backend

    S = 2 * Lmax + 1
    # per direction: the probability rows read (their NaN padding included), the state rows written for the gradient
    # (float)
    return 2 * B * T * (_backend.prob_width(Lmax, "float32") * 4 + S * 4 + ((S + 31) // 32) * 4)


# ---------------------------------------------------------------------------------------------------------------
# The designs

def cyctc_gen2(B, T, C, Lmax, counts, hw=H200):
    """Second generation: today's plan (grid (B, 2), chain_threads(S) threads) and its SASS counts."""
    from cyctc.cuda import _backend

    S = 2 * Lmax + 1
    threads = max(32, min(1024, -(-S // 32) * 32))  # gen-2's plan: one state per thread, up to 1024, tiles beyond
    tiles = math.ceil(S / threads)
    instr = counts["one_pass"] + (tiles - 1) * counts["per_tile"]
    # on the path: the rows' loads through generic pointers from shared memory (2 round trips), and for the tiles
    # after the first (not prefetched) the probability load from L2
    mem = 2 * hw["shared_latency"] * tiles + (tiles - 1) * hw["l2_latency"]
    smem = 4 * (4 * S + 8 * -(-S // 32))  # gen-2's rows and segment data in shared memory (768 B static)
    smem = smem if smem <= _backend.SHARED_LIMIT - 768 else 0
    chain = chain_launch("cyctc_chain<float>", T, 2 * B, threads // 32, 1, instr, hw,
                         registers=counts["registers"], smem_per_block=smem + 768,
                         ilp=2.0, collectives=6 * tiles, memory_on_path=mem, barrier=True,
                         bytes_moved=_chain_bytes(B, T, Lmax))
    return _with_rows_and_grad(chain, B, T, C, Lmax, hw)


def cyctc_gen3(B, T, C, Lmax, params, hw=H200):
    """Third generation (ctc.cu cyctc_chain<T, K>, _backend.chain_geometry): K states per thread; a chain of at most
    32 K states is one warp and several share a block; a longer one has a block of up to CHAIN_THREADS_MAX threads,
    tiles beyond."""
    from cyctc.cuda import _backend

    S = 2 * Lmax + 1
    K = int(params["K"])
    blocks = math.ceil(S / K)
    if blocks <= 32:
        warps, tiles = 1, 1
        cpb = max(1, min(int(params["warps_per_block"]), 2 * B))
    else:
        nthr = min(_backend.CHAIN_THREADS_MAX, math.ceil(blocks / 32) * 32)
        warps, tiles, cpb = nthr // 32, math.ceil(blocks / nthr), 1
    instr = params["instr_per_state"] * K * tiles
    ilp = params.get("ilp") or min(float(K), 4.0)  # K independent states per thread hide the ALU latency
    mem = (tiles - 1) * hw["l2_latency"] + (2 * hw["shared_latency"] if warps > 1 else 0)
    smem = 2 * 2 * 32 * 4 * cpb * warps  # boundary states of each warp, two buffers (small)
    chain = chain_launch(f"cyctc_chain<float, {K}>", T, 2 * B, warps, cpb, instr, hw,
                         registers=int(params["registers"]), smem_per_block=smem, ilp=ilp,
                         collectives=params["collectives"] * tiles, memory_on_path=mem,
                         barrier=warps > 1 or tiles > 1, bytes_moved=_chain_bytes(B, T, Lmax))
    return _with_rows_and_grad(chain, B, T, C, Lmax, hw)


def _with_rows_and_grad(chain, B, T, C, Lmax, hw):
    rows_grad = _rows_and_grad(B, T, C, Lmax, hw)
    return [rows_grad[0], chain] + rows_grad[1:]


def torch_is_large(B, T, C):
    """PyTorch's choice of gradient variant (as we recall the rule)."""
    return 2 * T + (24 * B) // 10 + (2 * C) // 10 > 450


def torch_native(B, T, C, Lmax, hw=H200):
    """PyTorch's native path: log_softmax, alpha, beta, the gradient variant, log_softmax backward, bookkeeping."""
    S = 2 * Lmax + 1
    N = B * T * C
    isz = 4
    tx = 1024
    while tx // 2 >= S:
        tx //= 2
    ty = max(1, min(1024 // tx, B))
    tiles = math.ceil(S / tx)
    active = S / (tiles * tx)  # share of the x threads with a state (the others only test their index)
    instr = tiles * (active * TORCH_INSTR_PER_STATE + (1 - active) * 10)
    lp_latency = hw["l2_latency"] if N * isz <= hw["l2_bytes"] else hw["hbm_latency"]
    chain_bytes = B * T * S * isz * 2 + B * T * min(C * isz, S * 32)  # write + reread alpha, the gathered log-probs
    out = [stream_launch("log_softmax fwd", B * T, 128, 2 * N * isz, 4 * C / 128 * 8, hw)]
    for kname in ("ctc_loss_log_alpha (alpha)", "ctc_loss_backward_log_beta (beta)"):
        # a block holds ty examples (its "chain" here: they share its barrier), the grid covers the batch
        out.append(chain_launch(kname, T, math.ceil(B / ty), math.ceil(tx * ty / 32), 1, instr, hw, registers=TORCH_REGISTERS,
                                mufu=tiles * active * TORCH_MUFU_PER_STATE, ilp=2.0, collectives=0,
                                memory_on_path=tiles * max(hw["l2_latency"], lp_latency), barrier=True,
                                bytes_moved=chain_bytes, instr_path=tiles * TORCH_INSTR_PER_STATE))
    if torch_is_large(B, T, C):
        elem = max(1, N // 512)
        out += [stream_launch("exp(log_probs) -> grad", elem, 128, 2 * N * isz, 0, hw),
                stream_launch("blank logsumexp (alpha+beta) + sub", max(1, B * T * (Lmax + 1) // 512), 128,
                              2 * B * T * (Lmax + 1) * isz * 2 + 3 * B * T * isz, 0, hw),
                stream_launch("grad *= grad_out", elem, 128, 2 * N * isz, 0, hw),
                # a thread per (example, label position) walks the frames: atomics into the gradient
                chain_launch("collect_nonblank (atomics)", T, B * math.ceil(math.ceil(Lmax / 32) / 32),
                             min(32, math.ceil(Lmax / 32)), 1, 60, hw,
                             registers=TORCH_REGISTERS, mufu=2, ilp=2.0, memory_on_path=hw["l2_latency"],
                             barrier=False, bytes_moved=B * T * Lmax * isz * 5)]
    else:
        # a thread per (frame, example): log-add over the S states (reads alpha, beta), then the C classes
        threads = B * T
        per_thread = S * 40 + C * 20
        out.append(stream_launch("collect (thread per frame)", max(1, threads // 128), 128,
                                 2 * B * T * S * isz + 3 * N * isz, per_thread, hw))
    out += [stream_launch("zero padded frames", max(1, B * T // 128), 128, B * T * 8, 0, hw),
            stream_launch("log_softmax bwd", B * T, 128, 3 * N * isz, 3 * C / 128 * 8, hw)]
    for _ in range(5):  # target offsets, fills, the reduction and its backward
        out.append(dict(kernel="bookkeeping", grid=(1, 1, 1), block=(128, 1, 1), kind="small", bytes=0,
                        est_us=hw["launch_gap_us"], bound="launch"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# cyctc's host time per call, measured

GLUE_METHOD = ("measured: cyctc.ctc_loss(labels, x (T, B, C), label_length, logit_length, return_grad=True) with "
               "host labels and lengths (bench_gpu.py's cyctc column) on tests/fake_cupy.py (numpy stand-in, "
               "allocations a cached lookup, kernels stubbed to no-ops), best of repeats, on this machine")


class _GluePatch:
    """Installs tests/fake_cupy.py as ``cupy`` and stubs the kernels for the glue measurement; undone on exit."""

    def __enter__(self):
        tests = os.path.join(os.path.dirname(HERE), "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        import fake_cupy

        from cyctc.cuda import _backend

        self.saved = [(sys.modules, k, sys.modules.get(k, _GluePatch)) for k in ("cupy", "cupyx")]
        self.attrs = [(_backend, "get_function", _backend.get_function), (fake_cupy, "empty", fake_cupy.empty)]
        fake_cupy.install(self)
        kernels, made = {}, {}

        def get_function(device_id, source, name):  # compiled once, cached, as _backend.get_function
            k = kernels.get(name)
            if k is None:
                k = kernels[name] = fake_cupy.Kernel(name)
            return k

        def empty(shape, dtype=np.float64, order="C"):
            # counted, and as cheap as a lookup: CuPy's own cost per operation is the model's estimate, not this
            fake_cupy._op()
            key = (shape, dtype)
            a = made.get(key)
            if a is None:
                a = made[key] = fake_cupy.ndarray(np.empty(shape, dtype))
            return a
        _backend.get_function = get_function
        fake_cupy.empty = empty
        self.fake, self.kernels = fake_cupy, kernels
        return self

    def setitem(self, d, k, v):  # fake_cupy.install's monkeypatch protocol
        d[k] = v

    def __exit__(self, *exc):
        for obj, name, v in self.attrs:
            setattr(obj, name, v)
        for d, k, v in self.saved:
            if v is _GluePatch:
                d.pop(k, None)
            else:
                d[k] = v
        return False


def measure_glue(shapes, repeats=5, calls=40):
    """cyctc's host time per call, per shape, MEASURED (GLUE_METHOD): {name: dict(us, ops, h2d, syncs, launches,
    method)}. ``us`` is the Python time of one call with CuPy replaced by tests/fake_cupy.py (its operations cost
    about a numpy call; allocations are O(1), as from CuPy's memory pool) and the kernels by no-ops; ``ops`` /
    ``h2d`` / ``syncs`` are the device operations, host-to-device copies and syncs the call asks CuPy for,
    ``launches`` the kernels it launches. The model adds CuPy's own cost per operation and per launch."""
    import time

    import cyctc

    out = {}
    with _GluePatch() as g:
        fake = g.fake
        for name, (B, T, C, L) in shapes:
            rng = np.random.default_rng(0)
            x = fake.ndarray(np.empty((T, B, C), np.float32))  # contents unread: the kernels are stubbed
            labels = rng.integers(1, C, (B, L)).astype(np.int32)
            ll, tl = np.full(B, L, np.int32), np.full(B, T, np.int32)

            def call():
                return cyctc.ctc_loss(labels, x, ll, tl, blank_index=0, return_grad=True)
            call()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(calls):
                    call()
                best = min(best, (time.perf_counter() - t0) / calls)
            fake.reset()
            for k in g.kernels.values():
                k.calls.clear()
            call()
            out[name] = dict(us=best * 1e6, launches=sum(len(k.calls) for k in g.kernels.values()),
                             method=GLUE_METHOD, **fake.COUNTS)
    return out


def cyctc_host_us(glue, hw=H200):
    """cyctc's host floor per call before the launches: the measured glue plus CuPy's cost per operation it asks
    for (``total`` adds ``host_us_per_launch`` per launch)."""
    return glue["us"] + hw["host_us_per_cupy_op"] * (glue["ops"] + glue["h2d"])


def total(launches, host_us, hw=H200):
    device = sum(ln["est_us"] for ln in launches)
    host = host_us + hw["host_us_per_launch"] * len(launches)
    return dict(launches=len(launches), device_us=device, host_us=host, est_us=max(device, host),
                per_launch=launches)


def model(shapes, gen2=None, gen3=None, hw=H200, glue=None):
    """Per shape: estimates for ``gen2`` (counts from :func:`gen2_counts`; None: skipped), ``gen3`` (parameters
    from :func:`gen3_params`; None: skipped) and PyTorch native, and the ratios torch / cyctc. ``glue``: cyctc's
    measured host time per shape (:func:`measure_glue`; None: measured now)."""
    shapes = list(shapes)
    if glue is None and (gen2 is not None or gen3 is not None):
        glue = measure_glue(shapes)
    out = []
    for name, (B, T, C, L) in shapes:
        r = dict(shape=name, B=B, T=T, C=C, L=L, designs={})
        r["designs"]["torch"] = total(torch_native(B, T, C, L, hw), hw["host_us_torch"], hw)
        if glue is not None:
            r["glue"] = glue[name]
        if gen2 is not None:
            r["designs"]["gen2"] = total(cyctc_gen2(B, T, C, L, gen2, hw), cyctc_host_us(glue[name], hw), hw)
        if gen3 is not None:
            r["designs"]["gen3"] = total(cyctc_gen3(B, T, C, L, gen3, hw), cyctc_host_us(glue[name], hw), hw)
        t = r["designs"]["torch"]["est_us"]
        r["ratio"] = {d: t / e["est_us"] for d, e in r["designs"].items() if d != "torch"}
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Output

def _ms(us):
    return f"{us / 1e3:.3f}"


def format_table(results):
    designs = [d for d in ("gen2", "gen3") if d in results[0]["designs"]]
    head = ["shape (B, T, C, L)"] + [f"cyctc {d} ms" for d in designs] + ["torch native ms"] + \
        [f"torch / {d}" for d in designs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        d = r["designs"]
        star = lambda e: "*" if e["host_us"] >= e["device_us"] else ""  # noqa: E731
        cells = [f"{r['shape']} ({r['B']}, {r['T']}, {r['C']}, {r['L']})"]
        cells += [_ms(d[x]["est_us"]) + star(d[x]) for x in designs]
        cells += [_ms(d["torch"]["est_us"]) + star(d["torch"])]
        cells += [f"{r['ratio'][x]:.2f}x" for x in designs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_launches(results):
    lines = []
    for r in results:
        for design, e in r["designs"].items():
            lines.append(f"{r['shape']} [{design}] device {_ms(e['device_us'])} ms, host {_ms(e['host_us'])} ms")
            for ln in e["per_launch"]:
                if ln["kind"] == "small":
                    continue
                extra = ""
                if ln["kind"] == "chain":
                    extra = (f" {ln['warps_per_chain']} warps/chain x {ln['chains_per_block']}/block, "
                             f"{ln['blocks_per_sm']} blocks/SM, {ln['waves']} wave(s), {ln['instr_per_frame']:.0f} "
                             f"instr/frame: issue {ln['issue_cycles']:.0f} / latency {ln['latency_cycles']:.0f} "
                             "cycles a frame")
                lines.append(f"    {ln['kernel']:<38} grid {ln['grid'][0]:>6} x {ln['block'][0]:>4}  "
                             f"{ln['bytes'] / 1e6:9.1f} MB  {_ms(ln['est_us']):>8} ms ({ln['bound']}){extra}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", help="shape names or name=B,T,C,L (default: the GPU benchmark grid)")
    ap.add_argument("--sass", default="committed",
                    help="SASS counts: committed (benchmarks/results/sass_gen2_2026-12-04.json), live (run "
                         "sass_report.py now: NVRTC + cuobjdump) or a sass_report.py JSON file")
    ap.add_argument("--k", type=int, help="third generation: states per thread (default: measured, else 8)")
    ap.add_argument("--instr-per-state", type=float,
                    help="third generation: instructions per state per frame (default: measured, else 16)")
    ap.add_argument("--registers", type=int, help="third generation: registers per thread (default: measured, "
                                                  "else 64)")
    ap.add_argument("--warps-per-block", type=int, help="third generation: warps per block that chains share "
                                                        "(default 8)")
    ap.add_argument("--collectives", type=float, help="third generation: shuffles on a frame's path (default 3)")
    ap.add_argument("--json", help="write the per-launch model to this file")
    ap.add_argument("--launches", action="store_true", help="also print every launch with its bound")
    args = ap.parse_args(argv)
    from bench_gpu import parse_shapes

    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(str(e))
    try:
        report, where = load_sass(args.sass)
    except Exception as e:
        print(f"gpu_model: error: no SASS counts ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    gen2 = gen2_counts(report) if any(k["name"] == "cyctc_chain<float>" for k in report["kernels"]) else None
    if gen2 is None and args.sass != "committed":  # ctc.cu has moved on: gen-2's figures stay in the committed file
        gen2 = gen2_counts(load_sass("committed")[0])
    gen3 = gen3_params(report, K=args.k, instr_per_state=args.instr_per_state, registers=args.registers,
                       warps_per_block=args.warps_per_block, collectives=args.collectives)
    results = model(shapes, gen2, gen3)
    hw = H200
    print(f"ESTIMATES (no device has measured these): float32 loss + gradient on an {hw['name']}: "
          f"{hw['sm_count']} SMs at {hw['clock_ghz']} GHz, HBM {hw['hbm_tb_s']} TB/s x {hw['hbm_efficiency']}")
    print(f"SASS counts {where}; gen2: {gen2['one_pass']:.0f} instructions a frame for one tile + "
          f"{gen2['per_tile']:.0f} per further tile, {gen2['registers']} registers; gen3: K = {gen3['K']}, "
          f"{gen3['instr_per_state']:g} instructions per state ({gen3['source']}), {gen3['registers']} registers, "
          f"{gen3['collectives']:g} shuffles on the path, chains sharing blocks of up to {gen3['warps_per_block']} "
          "warps")
    print(format_table(results))
    print(f"*: host-bound (the host floor: cyctc's glue as measured below + {hw['host_us_per_cupy_op']:g} us per CuPy "
          f"operation, or {hw['host_us_torch']:.0f} us PyTorch; + {hw['host_us_per_launch']:.0f} us per launch). "
          "torch / x > 1: x is faster.")
    print(f"cyctc glue per call, {GLUE_METHOD}:")
    for r in results:
        gl = r["glue"]
        print(f"    {r['shape']:<12} {gl['us']:6.1f} us, {gl['ops']} CuPy operations, {gl['h2d']} host-to-device "
              f"copies, {gl['syncs']} syncs, {gl['launches']} launches: {cyctc_host_us(gl, hw):.0f} us + "
              f"{hw['host_us_per_launch']:g} us per launch")
    if args.launches:
        print()
        print(format_launches(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(hardware=hw, sass=where, gen2=gen2, gen3=gen3, results=results), f, indent=1,
                      default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
