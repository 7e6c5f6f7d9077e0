"""CuPy glue for the CUDA kernels shipped beside this file (``ctc.cu``, ``greedy.cu``).

Three layers, kept apart so that the tests can prove the kernels without a GPU:

* :func:`launch_config` / :func:`greedy_launch_config` -- pure Python (no CuPy needed): from the shapes, dtype and
  strides they decide the workspace buffers, and for every kernel launch its grid, block, dynamic shared memory and
  argument list. The CuPy path below and the CPU emulation driver (``tests/cuda_emu``) both execute these plans.
* :func:`get_function` -- the one loader: reads a ``.cu`` file from the package, compiles it with NVRTC through
  ``cupy.RawModule`` for one dtype (templates instantiated through ``name_expressions``), once per (device, file,
  dtype), and caches the kernels.
* :func:`loss_and_grad` (what ``cyctc.loss.compute`` calls), :func:`ctc_loss_grad` (the counterpart of
  ``cyctc._cpu.ctc_loss_grad``) and :func:`greedy_decode` -- the backend entries: check devices, allocate on the input's
  device and launch on CuPy's current stream. Nothing is copied to the host.

Importing this module never imports CuPy; :func:`available` and :func:`reason` probe it once, for ``show_config``.
Shapes: B batch, T frames, C classes, L label length, S = 2 * Lmax + 1 extended states.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import math
import operator
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy

__all__ = [
    "Launch", "Plan", "launch_config", "greedy_launch_config", "kernel_source", "name_expressions", "SOURCES",
    "NVRTC_OPTIONS", "nvrtc_options", "load_nvrtc", "get_function", "available", "reason", "ctc_loss_grad",
    "loss_and_grad", "greedy_decode", "launch_plan_summary", "OLD_DESIGN", "STATIC_SHARED", "SHARED_LIMIT",
    "table_dynamic_shared_limit", "dynamic_shared_limit", "kernel_attributes", "chain_dynamic_shared_limit",
    "chain_geometry", "CHAIN_K", "CHAINS_PER_BLOCK", "CHAIN_THREADS_MAX", "CHAIN_THREADS_TILED", "PROB_PAD",
    "prob_width", "row_values",
]

# kernel name expressions per source file; "{T}" is replaced by the C type of the input dtype
SOURCES = {
    "ctc.cu": ("cyctc_rows<{T}>", "cyctc_chain<{T}, {K}, false>", "cyctc_chain<{T}, {K}, true>", "cyctc_grad<{T}>"),
    "greedy.cu": ("cyctc_greedy_argmax<{T}>", "cyctc_greedy_collapse"),
}
CTYPES = {"float32": "float", "float64": "double"}
# cyctc_chain's states per thread (its second template argument): a block of K chain states in registers, with one
# binary exponent: 8 float32 / 4 float64 values (ptxas: ~105-140 registers, no spills, within what the launch bounds
# allow). The same K for every plan, so that every plan (tiled, budgeted) computes the same bits.
CHAIN_K = {"float32": 8, "float64": 4}
# NaN columns on each side of a probability row's labels (ctc.cu Num<T>::pad, at least K / 2): a chain thread loads
# its block's K / 2 label probabilities with no test, those past the labels from this padding
PROB_PAD = {"float32": 4, "float64": 2}
CHAINS_PER_BLOCK = 4   # chains of at most 32 K states: one warp each, this many to a block
CHAIN_THREADS_MAX = 512  # longer chains: a block each, at most this many threads (tiles beyond)
CHAIN_THREADS_TILED = 384  # tiled chains (cyctc_chain<T, K, true>: its launch bound)
# Options given to cupy.RawModule. CuPy appends "-ftz=true", "-arch=..." and "--device-as-default-execution-space"
# itself (nvrtc_options() spells the full list out for the NVRTC tests).
NVRTC_OPTIONS = ("--std=c++17",)
SHARED_LIMIT = 48 * 1024  # shared memory (static + dynamic) any CUDA launch may use without an opt-in attribute
# Static shared memory (the kernel's own __shared__ variables) of cyctc_chain, the one kernel that asks for dynamic
# shared memory, as ptxas reports it ("N bytes smem"; the same for sm_80 to sm_120). On a device the glue reads the
# compiled kernel's own attributes instead (chain_dynamic_shared_limit); this table is the bound for plans made
# without one (the emulation, the cost model). tests/test_shared_memory.py compiles ctc.cu with NVRTC and checks
# the table against ptxas's report for every architecture.
STATIC_SHARED = {"float32": 544, "float64": 928}

_ROW_BLOCK = 256       # row kernels (rows, gradient, argmax): 8 warps per block, one warp per (b, t) row


def nvrtc_options(arch: str) -> Tuple[str, ...]:
    """The NVRTC options CuPy uses for our RawModules, with ``arch`` e.g. ``"compute_80"`` or ``"sm_90"``."""
    return NVRTC_OPTIONS + ("-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")


def name_expressions(source: str, dtype: Optional[str] = None) -> Tuple[str, ...]:
    """Kernel name expressions of ``source`` for ``dtype`` (``None``: for every supported dtype)."""
    dtypes = list(CTYPES) if dtype is None else [_dtype_name(dtype)]
    out = []
    for d in dtypes:
        for expr in SOURCES[source]:
            name = expr.format(T=CTYPES[d], K=CHAIN_K[d])
            if name not in out:
                out.append(name)
    return tuple(out)


def kernel_source(source: str) -> str:
    """Text of the packaged kernel file ``source`` (one of :data:`SOURCES`)."""
    if source not in SOURCES:
        raise ValueError(f"unknown kernel file {source!r}")
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), source), encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------------------------
# Launch plans (pure Python)

@dataclass(frozen=True)
class Launch:
    """One kernel launch. ``args``: tuple of ``("buf", name)``, ``("i32", v)``, ``("i64", v)``, ``("f64", v)`` or
    ``("null", 0)`` (a null pointer)."""

    source: str
    kernel: str
    grid: Tuple[int, int, int]
    block: Tuple[int, int, int]
    shared_bytes: int
    args: Tuple[Tuple[str, object], ...]


@dataclass(frozen=True)
class Plan:
    """Workspaces to allocate (``(name, dtype, count)``, contents undefined) and the launches, in order.

    Buffers named in launches but not in ``workspaces`` are the caller's inputs and outputs (see the functions that
    build plans for their names).
    """

    workspaces: Tuple[Tuple[str, str, int], ...]
    launches: Tuple[Launch, ...]


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)  # dtype, type or str
    if not isinstance(name, str):
        name = str(name)
    if name not in CTYPES:
        raise TypeError(f"logits must be float32 or float64 for the CUDA backend, got {name}")
    return name


def _round_warp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, (n + 31) // 32 * 32))


def _rows_grid(rows: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    block = _round_warp(32 * rows, 32, _ROW_BLOCK)
    per_block = block // 32
    return ((rows + per_block - 1) // per_block, 1, 1), (block, 1, 1)


def _strides(strides) -> Tuple[int, int]:
    sb, st = (int(s) for s in strides)
    return sb, st


def launch_config(B: int, T: int, C: int, Lmax: int, dtype, x_strides: Sequence[int], *, blank: int,
                  merge_repeated: bool, grad_strides: Optional[Sequence[int]] = None,
                  dynamic_shared_limit: Optional[int] = None, memory_limit: Optional[int] = None) -> Plan:
    """Plan the CTC loss (and gradient) launches for one batch.

    Parameters
    ----------
    B, T, C, Lmax : int
        Batch size, frames of the logits view, classes, and the padded label width (``labels.shape[1] >= 1``).
    dtype : str or dtype
        ``float32`` or ``float64``: the dtype of ``x`` (and ``grad``).
    x_strides : (int, int)
        Batch and frame strides of the (B, T, C) logits view, **in elements** (the class stride is 1).
    blank : int
        Blank class in [0, C).
    merge_repeated : bool
        False selects TF1's ``ctc_merge_repeated=False`` alignment model.
    grad_strides : (int, int) or None
        Batch and frame strides of the (B, T, C) gradient view in elements; None plans a loss-only call.
    dynamic_shared_limit : int or None
        Bytes of dynamic shared memory the cyctc_chain launch may ask for: on a device, what the compiled kernel's
        attributes allow (:func:`chain_dynamic_shared_limit`); None: :func:`table_dynamic_shared_limit` (48 KiB less
        the kernel's static shared memory as ptxas reports it). Only chains longer than one warp use dynamic shared
        memory (:func:`chain_shared_bytes`: a boundary slot per warp and tile); labels whose slots do not fit are
        refused with a ValueError.

    memory_limit : int or None
        Bytes the plan's workspaces may take on the device (None: no limit). A plan over it becomes a budget plan
        (:func:`budget_plan`): no probability buffer (the chains compute probabilities from the logits), and with
        a gradient, checkpoints every k frames and the rows of one segment of k frames at a time. Below the least
        a budget plan needs: MemoryError naming it.

    Returns
    -------
    Plan
        Inputs the launches name: ``x``, ``labels`` (int32 (B, Lmax) C-contiguous), ``label_length``,
        ``logit_length`` (int32 (B,)), ``grad_scale`` (float64 (B,)) and ``grad`` (when planned); output ``loss``
        (float64 (B,)); workspaces ``rinfo``, ``prob``, ``arows``, ``brows``, ``alo``, ``blo``, ``aexp``, ``bexp``,
        ``fmt``, ``work``, ``wexp``, ``lmap``.
        Launches: ``cyctc_rows`` (one warp per row), ``cyctc_chain`` (B * ndir chains, ndir = 2 with a gradient:
        forward and backward chains concurrently; :func:`chain_geometry`), ``cyctc_grad`` (one warp per row,
        gradient only).
    """
    dtype = _dtype_name(dtype)
    B, T, C, Lmax = int(B), int(T), int(C), int(Lmax)
    if Lmax < 1 or C < 1 or B < 0 or T < 0:
        raise ValueError(f"bad shapes B={B} T={T} C={C} Lmax={Lmax}")
    if dynamic_shared_limit is None:
        dynamic_shared_limit = table_dynamic_shared_limit(dtype)
    elif int(dynamic_shared_limit) < 0:
        raise ValueError(f"dynamic_shared_limit must be >= 0 bytes, got {dynamic_shared_limit}")
    S = 2 * Lmax + 1
    shared = chain_shared_bytes(S, dtype)
    if shared > int(dynamic_shared_limit):
        raise ValueError(f"labels of {Lmax} are too long for the CUDA backend's shared memory ({shared} bytes of "
                         f"boundary slots, {int(dynamic_shared_limit)} available)")
    args = (B, T, C, Lmax, dtype, x_strides, blank, merge_repeated, grad_strides)
    plan = _plan(*args, budget_k=None)
    if memory_limit is None or plan_bytes(plan) <= int(memory_limit):
        return plan
    return budget_plan(*args, memory_limit=int(memory_limit))


def plan_bytes(plan: "Plan") -> int:
    """Bytes of device memory a plan's workspaces take."""
    return sum(n * (4 if dt in ("float32", "int32") else 8) for _, dt, n in plan.workspaces)


def budget_plan(B, T, C, Lmax, dtype, x_strides, blank, merge_repeated, grad_strides, *, memory_limit):
    """The plan of :func:`launch_config` within ``memory_limit`` bytes of workspaces: the tiled chain kernel
    computes the probabilities from the logits (no (B, T, prob_width(Lmax)) buffer); with a gradient, a first pass keeps
    each chain's state every k frames, and then each segment of k frames is recomputed from its checkpoints and its
    gradient rows written (the largest k of a few around sqrt(T), where the memory is least, that fits). Same bits as the unlimited plan (the
    same kernel arithmetic, the same state blocks). Raises MemoryError naming the least a budget plan needs."""
    dtype = _dtype_name(dtype)
    want_grad = grad_strides is not None
    best = None
    # the largest k that fits (fewest launches; the frames recomputed are T whatever k)
    for k in (sorted({max(1, min(T, int(round(math.sqrt(T) * f)))) for f in (0.25, 0.5, 0.7, 1, 1.4, 2, 4)} | {T},
                     reverse=True) if want_grad and T > 0 else [0]):
        plan = _plan(B, T, C, Lmax, dtype, x_strides, blank, merge_repeated, grad_strides, budget_k=k)
        need = plan_bytes(plan)
        if best is None or need < best[0]:
            best = (need, plan)
        if need <= memory_limit:
            return plan
    raise MemoryError(f"memory_limit={memory_limit} bytes is below the {best[0]} bytes of device work space this "
                      f"CUDA call needs at the least (B={B}, T={T}, Lmax={Lmax}, {dtype})")


def _plan(B, T, C, Lmax, dtype, x_strides, blank, merge_repeated, grad_strides, *, budget_k):
    """The launches and workspaces: unlimited (budget_k None), or a budget plan (budget_k 0: loss only, no
    probability buffer; k > 0: with a gradient, checkpoints every k frames and segments of k frames)."""
    T_ = CTYPES[dtype]
    sxb, sxt = _strides(x_strides)
    want_grad = grad_strides is not None
    S = 2 * Lmax + 1
    ndir = 2 if want_grad else 1
    K, cpb, nthr, ntile = chain_geometry(S, dtype)
    budget = budget_k is not None
    tiled = ntile > 1 or budget
    if budget and cpb == 1 and nthr > CHAIN_THREADS_TILED:  # the tiled kernel's launch bound: more tiles
        nthr = CHAIN_THREADS_TILED
    shared = 0 if cpb > 1 else 2 * -(-(-(-S // K)) // nthr) * (nthr // 32) * (2 * _isz(dtype) + 8)
    nseg = (S + K - 1) // K
    nchain = ndir * B
    k = budget_k or 0
    seg = k if k > 0 else T  # frames whose rows a launch keeps
    nslot = -(-T // k) if k > 0 else 0
    ck_exps = nseg  # a checkpoint: the values and exponent of every state block
    workspaces = (
        ("rinfo", dtype, max(1, 2 * B * T)),
        ("prob", dtype, 1 if budget else max(1, B * T * prob_width(Lmax, dtype))),
        # gradient rows: K - 1 leading values, then rows of S + K - 1 (a chain thread writes its K states whole)
        ("arows", dtype, row_values(B * seg, S, K) if want_grad else 1),
        ("brows", dtype, row_values(B * seg, S, K) if want_grad else 1),
        # low parts of the log-space fallback's rows (float32 only; written only for examples that fall back; a
        # budget plan keeps none: such examples are recomputed by the glue without the budget)
        ("alo", dtype, max(1, B * T * S) if want_grad and dtype == "float32" and not budget else 1),
        ("blo", dtype, max(1, B * T * S) if want_grad and dtype == "float32" and not budget else 1),
        # exponents of the stored rows' state blocks (K states each, in chain order)
        ("aexp", "int32", max(1, B * seg * nseg) if want_grad else 1),
        ("bexp", "int32", max(1, B * seg * nseg) if want_grad else 1),
        ("fmt", "int32", max(1, 2 * B)),
        ("work", dtype, max(1, nchain * _chain_work_n(S, K, nthr))),
        ("wexp", "int32", max(1, nchain * _chain_wexp_n(S, K, nthr))),
        ("lmap", "int32", max(1, 2 * B * Lmax) if want_grad else 1),
        ("ckpt", dtype, max(1, nchain * nslot * ck_exps * K)),
        ("ckpt_e", "int32", max(1, nchain * nslot * ck_exps)),
    )
    launches = []
    if B == 0:
        return Plan(workspaces, ())
    common = (("buf", "x"), ("i64", sxb), ("i64", sxt), ("buf", "labels"), ("i32", Lmax), ("buf", "label_length"),
              ("buf", "logit_length"), ("i32", int(blank)))
    if T > 0:
        grid, block = _rows_grid(B * T)
        launches.append(Launch("ctc.cu", f"cyctc_rows<{T_}>", grid, block, 0, common + (
            ("i32", B), ("i32", T), ("i32", C), ("buf", "rinfo"), ("null", 0) if budget else ("buf", "prob"))))
    grid = ((nchain + cpb - 1) // cpb, 1, 1)
    name = f"cyctc_chain<{T_}, {K}, {'true' if tiled else 'false'}>"
    block = (cpb * nthr if cpb > 1 else nthr, 1, 1)

    def chain(ck_k, t0, t1):
        return Launch("ctc.cu", name, grid, block, shared, common + (
            ("i32", int(bool(merge_repeated))), ("buf", "rinfo"), ("null", 0) if budget else ("buf", "prob"), ("i32", B),
            ("i32", T), ("i32", ndir), ("i32", cpb), ("buf", "arows"), ("buf", "brows"), ("buf", "alo"),
            ("buf", "blo"), ("buf", "aexp"), ("buf", "bexp"), ("buf", "fmt"), ("buf", "work"), ("buf", "wexp"),
            ("buf", "lmap"), ("i32", int(want_grad)), ("buf", "loss"), ("buf", "ckpt"), ("buf", "ckpt_e"),
            ("i32", ck_k), ("i32", t0), ("i32", t1)))

    def grad(t0, nt):
        sgb, sgt = _strides(grad_strides)
        g, bl = _rows_grid(B * nt)
        return Launch("ctc.cu", f"cyctc_grad<{T_}>", g, bl, 0, common + (
            ("buf", "rinfo"), ("buf", "arows"), ("buf", "brows"), ("buf", "alo"), ("buf", "blo"), ("buf", "aexp"),
            ("buf", "bexp"), ("buf", "fmt"), ("i32", K), ("i32", B), ("i32", T),
            ("i32", C), ("buf", "lmap"), ("buf", "loss"), ("buf", "grad_scale"), ("buf", "grad"), ("i64", sgb),
            ("i64", sgt), ("i32", t0), ("i32", nt)))

    if k > 0:  # first pass (checkpoints), then per segment: its rows, its gradient
        launches.append(chain(k, 0, -1))
        for t0 in range(0, T, k):
            launches.append(chain(k, t0, min(T, t0 + k)))
            launches.append(grad(t0, min(T, t0 + k) - t0))
    else:
        launches.append(chain(0, 0, -1))
        if want_grad and T > 0:
            launches.append(grad(0, T))
    return Plan(workspaces, tuple(launches))


def prob_width(Lmax: int, dtype="float32") -> int:
    """Columns of a probability row (ctc.cu prob_width): the blank, :data:`PROB_PAD` of NaN, Lmax labels, and
    :data:`PROB_PAD` of NaN again."""
    return Lmax + 1 + 2 * PROB_PAD[_dtype_name(dtype)]


def row_values(nrows: int, S: int, K: int) -> int:
    """Values of a gradient-row buffer (``arows`` / ``brows``) of ``nrows`` rows of ``S`` states: ``K - 1`` leading
    values, then rows of ``S + K - 1`` (ctc.cu: each chain thread stores its block of K states whole, the states
    past the example's end into that slack)."""
    return max(1, K - 1 + nrows * (S + K - 1))


def chain_geometry(S: int, dtype="float32") -> Tuple[int, int, int, int]:
    """(K, cpb, nthr, ntile) of cyctc_chain for chains of S extended states: K states per thread; a chain of at most
    32 K states is one warp and ``cpb`` (:data:`CHAINS_PER_BLOCK`) of them share a block; a longer one has a block
    of ``nthr`` threads (a multiple of 32, at most :data:`CHAIN_THREADS_MAX`), over ``ntile`` tiles of nthr K
    states (ctc.cu chain_tiles)."""
    dtype = _dtype_name(dtype)
    K = CHAIN_K[dtype]
    blocks = (S + K - 1) // K
    if blocks <= 32:
        return K, CHAINS_PER_BLOCK, 32, 1
    if blocks <= CHAIN_THREADS_MAX:
        return K, 1, _round_warp(blocks, 32, CHAIN_THREADS_MAX), 1
    return K, 1, CHAIN_THREADS_TILED, (blocks + CHAIN_THREADS_TILED - 1) // CHAIN_THREADS_TILED


def chain_threads(S: int, dtype="float32") -> int:
    """Threads of one chain (32 for a one-warp chain)."""
    return chain_geometry(S, dtype)[2]


def _chain_work_n(S: int, K: int, nthr: int) -> int:
    nt = -(-(-(-S // K)) // nthr)
    return 4 * S + (2 * nt * nthr * K if nt > 1 else 0)


def _chain_wexp_n(S: int, K: int, nthr: int) -> int:
    nt = -(-(-(-S // K)) // nthr)
    return 2 * nt * nthr if nt > 1 else 1


def _chain_work(S: int, dtype="float32") -> int:
    """Values one chain keeps in ``work`` (ctc.cu chain_work): four rows of S for the log-space fallback, and when
    tiled the main and shadow values of every tile."""
    K, _, nthr, nt = chain_geometry(S, dtype)
    return 4 * S + (2 * nt * nthr * K if nt > 1 else 0)


def _chain_wexp(S: int, dtype="float32") -> int:
    """Ints one chain keeps in ``wexp`` (ctc.cu chain_wexp): when tiled, the main and shadow exponent of every state
    block."""
    _, _, nthr, nt = chain_geometry(S, dtype)
    return 2 * nt * nthr if nt > 1 else 1


def chain_shared_bytes(S: int, dtype) -> int:
    """Dynamic shared memory of a cyctc_chain block: none for one-warp chains; else per frame parity and warp of
    the chain's tiles a boundary slot (main and shadow value and exponent)."""
    dtype = _dtype_name(dtype)
    _, cpb, nthr, nt = chain_geometry(S, dtype)
    if cpb > 1:
        return 0
    return 2 * nt * (nthr // 32) * (2 * _isz(dtype) + 8)


def _isz(dtype: str) -> int:
    return 4 if dtype == "float32" else 8


def table_dynamic_shared_limit(dtype) -> int:
    """Dynamic shared memory a cyctc_chain launch may take without a device to ask: 48 KiB (the most any launch gets
    without opting in) less the kernel's static shared memory from :data:`STATIC_SHARED`."""
    return SHARED_LIMIT - STATIC_SHARED[_dtype_name(dtype)]


def dynamic_shared_limit(shared_size_bytes: int, max_dynamic_shared_size_bytes: int) -> int:
    """Dynamic shared memory a launch of a compiled kernel may ask for, from its attributes: its own maximum
    (``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES``), and never more than the 48 KiB a launch gets without the
    opt-in attribute less its static shared memory (``CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES``)."""
    return max(0, min(int(max_dynamic_shared_size_bytes), SHARED_LIMIT - int(shared_size_bytes)))


# Operation counts per element used by the cost estimates below (from the kernels' inner loops).
# per state and step: main and shadow rows (2 adds, 2 segment rescalings, a multiply, the flush checks each)
_CHAIN_OPS = 30


def _kernel_costs(name, B, T, C, S, isz, with_grad):
    """Per-launch costs of the kernels in ctc.cu (all examples at full length, scaled recursion, no fallback)."""
    f32 = isz == 4
    rows, L1, nseg = B * T, (S - 1) // 2 + 1, -(-S // chain_geometry(S, "float32" if f32 else "float64")[0])
    ndir = 2 if with_grad else 1

    def ops(n64, n32):
        return dict(fp64_ops=n64 if f32 else n64 + n32, fp32_ops=n32 if f32 else 0)

    if name.startswith("cyctc_rows"):
        W = prob_width(L1 - 1, "float32" if f32 else "float64")  # the probability row, NaN padding included
        return dict(barrier_steps=0, bytes_read=rows * (C + L1) * isz + rows * 8 + B * 8,
                    bytes_written=rows * (2 + W) * isz, transcendentals=rows * (C + L1), **ops(0, rows * (C * 4 + L1 * 3)))
    if name.startswith("cyctc_chain"):
        # multi-warp chains: one barrier step per frame, the non-finite vote before and two for the end decision;
        # one-warp chains: none (warp-synchronous). Forward and backward chains run concurrently.
        # "fallback": what one direction of one example adds when it is recomputed in log space (pairs hi + lo: two
        # exp/log1p per predecessor, ~40 operations per state and frame)
        one_warp = chain_geometry(S, "float32" if f32 else "float64")[1] > 1
        return dict(barrier_steps=0 if one_warp else T + 3, fallback=dict(barrier_steps=0 if one_warp else T,
                                                                           transcendentals=T * S * 5,
                                                   fp32_ops=T * S * 40, fp64_ops=T + 4,
                                                   bytes_read=T * (S + 2) * isz,
                                                   bytes_written=(2 if f32 else 1) * T * S * isz if with_grad else 0),
                    bytes_read=ndir * (rows * S * isz + rows * 2 * isz) + B * 12,
                    bytes_written=(ndir * rows * (S * isz + nseg * 4) + B * 2 * (S // 2) * 4 + 2 * B * 4
                                   if with_grad else 0) + B * 8,
                    transcendentals=B * 2, **ops(ndir * B * 6, ndir * rows * S * _CHAIN_OPS))
    if name.startswith("cyctc_grad"):
        return dict(barrier_steps=0, bytes_read=rows * (C * isz + 2 * S * isz + 2 * nseg * 4 + 2 * isz + 24),
                    bytes_written=rows * C * isz, transcendentals=rows * C, **ops(rows * 3, rows * (C * 3 + S * 10)))
    raise KeyError(name)


def _old_kernel_costs(name, B, T, C, S, isz, with_grad):
    """Per-launch costs of the first-generation kernels (log-space double recursion, FP64 row kernels)."""
    rows = B * T
    if name.startswith("cyctc_row_lse"):
        return dict(barrier_steps=0, bytes_read=rows * C * isz + B * 4, bytes_written=rows * 8,
                    fp64_ops=rows * C * 4, fp32_ops=0, transcendentals=rows * (C + 1))
    if name.startswith("cyctc_alpha_beta"):
        passes = 2 if with_grad else 1
        # forward then backward in one block: 2T barrier steps; per state and frame 2-3 log-adds (exp + log1p)
        return dict(barrier_steps=passes * T + 2,
                    bytes_read=passes * rows * S * (isz + 8) + (rows * S * 8 if with_grad else 0),
                    bytes_written=(2 * rows * S * 8 if with_grad else 0) + B * 8,
                    fp64_ops=passes * rows * S * 10, fp32_ops=0, transcendentals=passes * rows * S * 4)
    if name.startswith("cyctc_grad"):
        return dict(barrier_steps=0, bytes_read=rows * (C * isz + S * 8 + 8), bytes_written=rows * C * isz,
                    fp64_ops=rows * (C + S) * 4, fp32_ops=0, transcendentals=rows * (C + S + 2))
    raise KeyError(name)


def _summary_rows(launches, costs, B, T, C, S, isz, with_grad):
    out = []
    for kernel, grid, block, shared in launches:
        d = {"kernel": kernel, "grid": tuple(grid), "block": tuple(block), "shared_bytes": shared}
        d.update(costs(kernel, B, T, C, S, isz, with_grad))
        out.append(d)
    return out


def launch_plan_summary(B, T, C, Lmax, dtype="float32", with_grad=True, x_strides=None, blank=0,
                        label_lengths=None, logit_lengths=None):
    """One dict per kernel launch of a ``ctc_loss`` call (reduction="none"), in order, from the real plan.

    Keys: ``kernel``, ``grid``, ``block``, ``shared_bytes`` (dynamic), ``barrier_steps`` (barrier-separated steps
    on the critical path of the longest-running block), ``bytes_read`` / ``bytes_written`` (global memory, estimated
    from the plan), ``fp64_ops`` / ``fp32_ops`` (arithmetic operations executed, estimated) and
    ``transcendentals``. Every example is taken at full length (``label_lengths`` / ``logit_lengths`` are accepted
    for the interface and not used yet) and on the scaled recursion. The chain's dict also holds ``fallback``: what
    one direction of one example adds when it leaves the scaled recursion's range and is recomputed in log space
    (float32: peaked logits, labels far below the frame's maximum, random logits over ~1000 frames or more; float64:
    only adversarial inputs), at worst all 2B directions.
    Pure Python (no CuPy): the cost model in ``benchmarks/gpu_model.py`` is built on it.
    """
    dtype = _dtype_name(dtype)
    B, T, C, Lmax = int(B), int(T), int(C), max(1, int(Lmax))
    if x_strides is None:
        x_strides = (T * C, C)
    plan = launch_config(B, T, C, Lmax, dtype, x_strides, blank=blank, merge_repeated=True,
                         grad_strides=x_strides if with_grad else None)
    launches = [(ln.kernel, ln.grid, ln.block, ln.shared_bytes) for ln in plan.launches]
    return _summary_rows(launches, _kernel_costs, B, T, C, 2 * Lmax + 1, _isz(dtype), with_grad)


def OLD_DESIGN(B, T, C, Lmax, dtype="float32", with_grad=True, x_strides=None, blank=0, label_lengths=None,
               logit_lengths=None):
    """The same summary for the first-generation design (commit a5fe765: log-space double recursion, forward then
    backward in one block of at most 512 threads, FP64 row kernels), from its launch rules."""
    dtype = _dtype_name(dtype)
    B, T, C, Lmax = int(B), int(T), int(C), max(1, int(Lmax))
    S, ct = 2 * Lmax + 1, CTYPES[dtype]
    grid, block = _rows_grid(B * T)
    launches = [(f"cyctc_row_lse<{ct}>", grid, block, 0)] if T > 0 else []
    launches.append((f"cyctc_alpha_beta<{ct}>", (B, 1, 1), (_round_warp(S, 32, 512), 1, 1),
                     16 * S if 16 * S + 256 <= SHARED_LIMIT else 0))
    if with_grad and T > 0:
        launches.append((f"cyctc_grad<{ct}>", grid, block, 0))
    return _summary_rows(launches, _old_kernel_costs, B, T, C, S, _isz(dtype), with_grad)


def greedy_launch_config(B: int, T: int, C: int, dtype, x_strides: Sequence[int], *, blank: int,
                         merge_repeated: bool) -> Plan:
    """Plan the greedy decoder launches.

    Inputs named: ``x`` (B, T, C) view (strides in elements), ``logit_length`` int32 (B,). Outputs: ``decoded``
    int32 (B, T) padded with -1, ``decoded_length`` int32 (B,), ``neg_sum_logits`` float64 (B,).
    Workspaces: ``best`` int32 (B, T), ``best_value`` float64 (B, T).
    """
    dtype = _dtype_name(dtype)
    B, T, C = int(B), int(T), int(C)
    sxb, sxt = _strides(x_strides)
    workspaces = (("best", "int32", max(1, B * T)), ("best_value", "float64", max(1, B * T)))
    if B == 0:
        return Plan(workspaces, ())
    launches = []
    if T > 0:
        grid, block = _rows_grid(B * T)
        launches.append(Launch("greedy.cu", f"cyctc_greedy_argmax<{CTYPES[dtype]}>", grid, block, 0, (
            ("buf", "x"), ("i64", sxb), ("i64", sxt), ("buf", "logit_length"), ("i32", B), ("i32", T), ("i32", C),
            ("buf", "best"), ("buf", "best_value"))))
    block = _round_warp(B, 32, 256)
    launches.append(Launch("greedy.cu", "cyctc_greedy_collapse", ((B + block - 1) // block, 1, 1), (block, 1, 1), 0, (
        ("buf", "best"), ("buf", "best_value"), ("buf", "logit_length"), ("i32", B), ("i32", T), ("i32", int(blank)),
        ("i32", int(bool(merge_repeated))), ("buf", "decoded"), ("buf", "decoded_length"),
        ("buf", "neg_sum_logits"))))
    return Plan(workspaces, tuple(launches))


# ---------------------------------------------------------------------------------------------------------------
# NVRTC and CuPy

def _nvrtc_library_candidates():
    """libnvrtc shipped by the nvidia-cuda-nvrtc wheels (CUDA 13: nvidia/cu13/lib, CUDA 12: nvidia/cuda_nvrtc/lib)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    out = []
    for root in roots:
        for sub in ("cu13/lib", "cuda_nvrtc/lib"):
            out += sorted(p for p in glob.glob(os.path.join(root, sub, "libnvrtc.so*")) if ".alt." not in p)
    return out


def load_nvrtc():
    """Return ``cupy.cuda.nvrtc`` with its library loaded (works without a GPU).

    When CuPy cannot find libnvrtc by itself, the copy from the ``nvidia-cuda-nvrtc`` wheel is preloaded.
    """
    from cupy.cuda import nvrtc  # `import cupy.cuda.nvrtc` does not work: it is an attribute

    try:
        nvrtc.getVersion()
        return nvrtc
    except Exception as first:  # library not found: preload the wheel's copy and retry
        for path in _nvrtc_library_candidates():
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                nvrtc.getVersion()
                return nvrtc
            except Exception:
                continue
        raise RuntimeError(f"NVRTC cannot be loaded ({first}); pip install 'nvidia-cuda-nvrtc==13.0.*'") from first


def _cupy():
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _module(device_id: int, source: str, dtype: str):
    cp = _cupy()
    load_nvrtc()
    with cp.cuda.Device(device_id):
        mod = cp.RawModule(code=kernel_source(source), options=NVRTC_OPTIONS,
                           name_expressions=list(name_expressions(source, dtype)))
        mod.compile()
    return mod


@functools.lru_cache(maxsize=None)
def get_function(device_id: int, source: str, kernel: str):
    """The compiled kernel ``kernel`` of ``source`` on device ``device_id`` (compiled once, cached)."""
    dtype = next((d for d, c in CTYPES.items() if f"<{c}>" in kernel or f"<{c}," in kernel), "float32")
    cp = _cupy()
    with cp.cuda.Device(device_id):
        return _module(device_id, source, dtype).get_function(kernel)


def kernel_attributes(fn) -> dict:
    """``shared_size_bytes`` (static shared memory) and ``max_dynamic_shared_size_bytes`` of a compiled kernel (what
    :func:`get_function` returns), read from the driver (the values ``cupy.RawKernel.attributes`` reports)."""
    drv = _cupy().cuda.driver
    return {"shared_size_bytes": drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, fn.ptr),
            "max_dynamic_shared_size_bytes": drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                                                  fn.ptr)}


_SHARED_LIMITS: dict = {}  # compiled kernel (what get_function returned) -> its dynamic shared-memory limit


def chain_dynamic_shared_limit(device_id: int, dtype) -> int:
    """Dynamic shared memory cyctc_chain may ask for on device ``device_id``, from the compiled kernel's own
    attributes (:func:`dynamic_shared_limit`; read from the driver once per compiled kernel); compiles the kernel
    if it is not cached yet."""
    d = _dtype_name(dtype)
    # both instantiations (one-tile and tiled chains) declare the same __shared__ variables
    fn = get_function(device_id, "ctc.cu", f"cyctc_chain<{CTYPES[d]}, {CHAIN_K[d]}, false>")
    limit = _SHARED_LIMITS.get(fn)
    if limit is None:
        a = kernel_attributes(fn)
        limit = _SHARED_LIMITS[fn] = dynamic_shared_limit(a["shared_size_bytes"], a["max_dynamic_shared_size_bytes"])
    return limit


@functools.lru_cache(maxsize=1)
def reason() -> str:
    """Why the CUDA backend is off, or ``"ok"``."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        return f"cupy is not importable ({type(e).__name__}: {e}); pip install 'cyctc[cuda]'"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no usable CUDA device ({type(e).__name__}: {e})"
    if n < 1:
        return "no CUDA device"
    return "ok"


def available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return reason() == "ok"


def is_cupy_array(a) -> bool:
    """True for a ``cupy.ndarray`` (without importing CuPy when it is not loaded yet)."""
    return type(a).__module__.startswith("cupy") and hasattr(a, "device") and hasattr(a, "data")


def _device_array(cp, a, dtype, name, device, *, contiguous=True):
    """``a`` as a CuPy array of ``dtype`` on ``device``; host arrays (small: labels, lengths) are copied over."""
    if is_cupy_array(a):
        if a.device.id != device.id:
            raise ValueError(f"{name} is on CUDA device {a.device.id} but logits are on device {device.id}")
        if a.dtype == dtype and (not contiguous or a.flags.c_contiguous):  # as cyctc._args uploads them
            return a
        a = a.astype(dtype, copy=False)
    else:
        a = cp.asarray(a, dtype=dtype)
    return cp.ascontiguousarray(a) if contiguous else a


def _element_strides(a, name):
    item = a.itemsize
    if a.strides[-1] != item:
        raise ValueError(f"{name} must have a contiguous last (class) axis")
    if any(s % item for s in a.strides[:2]):
        raise ValueError(f"{name} strides must be multiples of its item size")
    return a.strides[0] // item, a.strides[1] // item


def _run(cp, plan: Plan, device, bufs: dict):
    for name, dt, n in plan.workspaces:
        bufs[name] = cp.empty(n, dtype=dt)
    conv = {"i32": cp.int32, "i64": cp.int64, "f64": cp.float64, "null": lambda v: numpy.uint64(0)}  # null pointer
    for launch in plan.launches:
        fn = get_function(device.id, launch.source, launch.kernel)
        args = tuple(bufs[v] if k == "buf" else conv[k](v) for k, v in launch.args)
        fn(launch.grid, launch.block, args, shared_mem=launch.shared_bytes)


_WS_ALIGN = 256  # bytes: every workspace of a CTC plan starts at this alignment inside the call's one allocation
_SCALARS = {"i32": numpy.int32, "i64": numpy.int64, "f64": numpy.float64}


_USER_BUFS = ("x", "labels", "label_length", "logit_length", "loss", "grad_scale", "grad")  # the caller's buffers


@dataclass(frozen=True)
class _Prepared:
    """A CTC launch plan made ready for the glue, cached per call signature (:func:`_prepared`): the workspaces as
    byte offsets into one allocation of ``slab_bytes`` (``offsets``: name -> (offset, dtype, count)), and per launch
    (source, kernel, grid, block, shared bytes, args) with args ``("buf", name)`` (a caller's array), ``("ws",
    offset)`` (a workspace: passed as its device address) or ``("val", scalar)`` (already of its C type).

    What a launch takes, ready-made: a call's arguments are drawn from one list, ``consts`` (every scalar, of its C
    type) + the caller's buffers in ``_USER_BUFS`` order + the workspaces' addresses (``ws_offsets``, uint64, plus
    the allocation's address), and ``calls`` holds per launch (source, kernel, grid, block, shared bytes, an
    ``operator.itemgetter`` that picks its arguments from that list, in order)."""
    plan: Plan
    slab_bytes: int
    offsets: dict
    launches: tuple
    consts: tuple
    ws_offsets: numpy.ndarray
    calls: tuple
    budget_grad: bool = False  # a budget plan with a gradient (is_budget_grad_plan): the lean path declines it


@functools.lru_cache(maxsize=256)
def _prepared(B, T, C, Lmax, dtype, sx, blank, merge_repeated, sg, shared_limit, memory_limit) -> _Prepared:
    plan = launch_config(B, T, C, Lmax, dtype, sx, blank=blank, merge_repeated=merge_repeated, grad_strides=sg,
                         dynamic_shared_limit=shared_limit, memory_limit=memory_limit)
    offsets, end = {}, 0
    for name, dt, n in plan.workspaces:
        offsets[name] = (end, dt, n)
        end += -(-max(1, n) * numpy.dtype(dt).itemsize // _WS_ALIGN) * _WS_ALIGN
    launches = []
    for ln in plan.launches:
        args = tuple(("ws", offsets[v][0]) if k == "buf" and v in offsets else ("buf", v) if k == "buf"
                     else ("val", numpy.uint64(0)) if k == "null" else ("val", _SCALARS[k](v)) for k, v in ln.args)
        launches.append((ln.source, ln.kernel, ln.grid, ln.block, ln.shared_bytes, args))
    consts, ws_order = [], list(dict.fromkeys(off for _, _, _, _, _, args in launches for k, off in args if k == "ws"))
    calls = []
    for src, kern, grid, block, shm, args in launches:
        idx = []
        for k, v in args:
            if k == "val":
                idx.append(len(consts))
                consts.append(v)
            elif k == "buf":
                idx.append(-len(_USER_BUFS) + _USER_BUFS.index(v))  # placed after consts: fixed below
            else:
                idx.append(-1000 - ws_order.index(v))
        calls.append((src, kern, grid, block, shm, idx))
    nc = len(consts)
    fixed = tuple((src, kern, grid, block, shm, operator.itemgetter(*[
        i if i >= 0 else nc + len(_USER_BUFS) + i if i > -1000 else nc + len(_USER_BUFS) + (-1000 - i)
        for i in idx])) for src, kern, grid, block, shm, idx in calls)
    return _Prepared(plan, max(end, _WS_ALIGN), offsets, tuple(launches), tuple(consts),
                     numpy.array(ws_order, dtype=numpy.uint64), fixed, is_budget_grad_plan(plan))


def _workspace(slab, prep: _Prepared, name):
    """The workspace ``name`` of a prepared plan as an array (a view of the call's allocation ``slab``)."""
    off, dt, n = prep.offsets[name]
    return slab[off:off + n * numpy.dtype(dt).itemsize].view(dt)


def _run_prepared(cp, prep: _Prepared, device, bufs):
    """Launch a prepared plan: one allocation holds every workspace (returned: keep it while its views are used).
    ``bufs``: the caller's arrays (or device addresses, uint64) by name (a dict), or as a list in ``_USER_BUFS``
    order."""
    slab = cp.empty(prep.slab_bytes, dtype=numpy.uint8)
    if isinstance(bufs, dict):
        bufs = [bufs.get(n) for n in _USER_BUFS]
    pool = [*prep.consts, *bufs, *(prep.ws_offsets + numpy.uint64(slab.data.ptr))]
    dev = device.id
    for source, kernel, grid, block, shared, pick in prep.calls:
        get_function(dev, source, kernel)(grid, block, pick(pool), shared_mem=shared)
    return slab


def ctc_loss_grad(x, labels, label_length, logit_length, blank, merge_repeated, grad=None, grad_scale=None,
                  memory_limit=None):
    """CTC loss (and gradient) on the GPU; the CUDA counterpart of ``cyctc._cpu.ctc_loss_grad``.

    Parameters
    ----------
    x : cupy.ndarray, (B, T, C), float32 or float64
        Logits view with a contiguous class axis (any batch/frame strides, e.g. a time-major swapaxes view).
    labels : (B, Lmax) int, label_length, logit_length : (B,) int
        CuPy arrays on x's device, or host arrays (copied over; they are small).
    blank : int
        Blank class in [0, C).
    merge_repeated : bool
        False: TF1's ``ctc_merge_repeated=False`` model (label states have no self-loop).
    grad : cupy.ndarray (B, T, C) of x's dtype, or None
        Written completely (contiguous class axis, any other strides): grad_scale[b] * (softmax - occupancy) on
        valid frames, exactly 0 on frames t >= logit_length[b] and for examples without any alignment.
    grad_scale : (B,) float64 or None
        Per-example gradient multiplier (None: 1).
    memory_limit : int or None
        Bytes of device work space (None: unlimited): over it, a budget plan (:func:`budget_plan`). With a gradient,
        examples the budget plan's first pass could not finish on the scaled path (fmt 2: log space needed) are
        recomputed without the budget when that fits it, else MemoryError; finding them costs one device-to-host
        copy of ``fmt`` (budget plans with a gradient only).

    Returns
    -------
    cupy.ndarray, (B,), float64
        -log p(labels | x); +inf where no alignment exists; NaN where a valid frame holds a non-finite logit.
    """
    cp = _cupy()
    if x.ndim != 3:
        raise ValueError(f"logits must be a (B, T, C) view, got shape {x.shape}")
    B, T, C = x.shape
    device = x.device
    with device:
        sx = _element_strides(x, "logits")
        labels = _device_array(cp, labels, cp.int32, "labels", device)
        if labels.ndim != 2 or labels.shape[0] != B or labels.shape[1] < 1:
            raise ValueError(f"labels must be (B, Lmax>=1) with B={B}, got {labels.shape}")
        bufs = {
            "x": x, "labels": labels,
            "label_length": _device_array(cp, label_length, cp.int32, "label_length", device),
            "logit_length": _device_array(cp, logit_length, cp.int32, "logit_length", device),
            "loss": cp.empty(B, dtype=cp.float64),
        }
        sg = None
        if grad is not None:
            if not is_cupy_array(grad) or grad.device.id != device.id:
                raise ValueError(f"grad must be a CuPy array on device {device.id}")
            if grad.shape != x.shape or grad.dtype != x.dtype:
                raise ValueError(f"grad must be {x.dtype} of shape {x.shape}, got {grad.dtype} {grad.shape}")
            sg = _element_strides(grad, "grad")
            bufs["grad"] = grad
            bufs["grad_scale"] = (cp.ones(B, dtype=cp.float64) if grad_scale is None
                                  else _device_array(cp, grad_scale, cp.float64, "grad_scale", device))
        prep = _prepared(B, T, C, labels.shape[1], _dtype_name(x.dtype), sx, int(blank), bool(merge_repeated), sg,
                         chain_dynamic_shared_limit(device.id, x.dtype),
                         None if memory_limit is None else int(memory_limit))
        plan = prep.plan
        slab = _run_prepared(cp, prep, device, bufs)
        if grad is not None and is_budget_grad_plan(plan):
            fmt = _workspace(slab, prep, "fmt")
            redo = numpy.flatnonzero((cp.asnumpy(fmt[:2 * B]).reshape(2, B) == 2).any(axis=0))
            if redo.size:  # log space needed: those examples again, without checkpoints, if that fits the budget
                idx = cp.asarray(redo)
                sub = launch_config(len(redo), T, C, labels.shape[1], x.dtype, (T * C, C), blank=blank,
                                    merge_repeated=merge_repeated, grad_strides=(T * C, C))
                if plan_bytes(sub) + 2 * len(redo) * T * C * x.itemsize > memory_limit:
                    raise MemoryError(f"memory_limit={memory_limit} bytes: {len(redo)} example(s) need the log-space "
                                      f"fallback, whose rows ({plan_bytes(sub)} bytes) do not fit")
                sub_grad = cp.empty((len(redo), T, C), dtype=x.dtype)
                sub_loss = ctc_loss_grad(cp.ascontiguousarray(x[idx]), labels[idx], bufs["label_length"][idx],
                                         bufs["logit_length"][idx], blank, merge_repeated, sub_grad,
                                         bufs["grad_scale"][idx])
                bufs["loss"][idx] = sub_loss
                grad[idx] = sub_grad
        return bufs["loss"]


def is_budget_grad_plan(plan: "Plan") -> bool:
    """A budget plan with a gradient (its first chain launch keeps checkpoints: ckpt_k > 0)."""
    return any(ln.kernel.startswith("cyctc_chain") and ln.args[-3][1] > 0 for ln in plan.launches)


def loss_and_grad(a, merge_repeated, want_grad, grad_scale, memory_limit=None):
    """Entry used by ``cyctc.loss.compute`` for CuPy logits (normalised arguments ``a``, see ``cyctc._args``).

    Returns (loss, grad): CuPy float64 (B,) losses and, when ``want_grad``, a new CuPy gradient in the layout of the
    user's logits ((T, B, C) when ``a.time_major``) and the dtype of ``a.x``, on the logits' device; else None.
    ``a.labels`` / lengths may be host arrays (they are copied over: a few KiB); ``grad_scale`` float64 (B,) or None;
    ``memory_limit``: bytes of device work space (see :func:`ctc_loss_grad`).
    """
    cp = _cupy()
    x = a.x
    grad = grad_view = None
    with x.device:
        if want_grad:
            shape = (a.T, a.B, a.C) if a.time_major else (a.B, a.T, a.C)
            grad = cp.empty(shape, dtype=x.dtype)
            grad_view = grad.swapaxes(0, 1) if a.time_major else grad
        loss = ctc_loss_grad(x, a.labels, a.label_length, a.logit_length, a.blank, merge_repeated, grad_view,
                             grad_scale, memory_limit)
    return loss, grad


_lean_cpu = []  # cyctc._cpu once lean_loss has run (imported lazily: this module loads without the extension)
_LEAN_DTYPES = {numpy.dtype(numpy.float32): "float32", numpy.dtype(numpy.float64): "float64"}
_INT32_MAX = 2 ** 31 - 1


def lean_loss(x, labels, label_length, logit_length, time_major, blank_index, want_grad, memory_limit):
    """The common CuPy call of ``cyctc.ctc_loss`` (reduction "none", merged repeats), or None to take the full path.

    Accepted: ``x`` a CuPy float32/float64 (T, B, C) (``time_major``) or (B, T, C) array the kernels read as it is
    (contiguous class axis, whole-element non-negative strides; what ``_args.kernel_view`` keeps), B, T, C >= 1
    within ``_args.check_size``'s limits; ``blank_index`` None or an int in [-C, C); host labels and lengths as
    ``_cpu.pack_device_args`` accepts them; a plan that is not a budget plan with a gradient. Anything else, any
    error included, answers None: the full path (``_args.normalize_loss_args`` and :func:`ctc_loss_grad`) decides and
    names the problem. This raises nothing of its own.

    The work: one host buffer (losses, gradient scales of 1, labels, lengths: ``pack_device_args``) uploaded in one
    copy, the cached prepared plan (:func:`_prepared`, the full path's), the gradient and one workspace allocation,
    the launches. Returns (loss in x's dtype (B,), grad like x or None), what the full path returns.
    """
    if not _lean_cpu:
        from .. import _cpu

        _lean_cpu.append(_cpu)
    cpu = _lean_cpu[0]
    try:  # an object of CuPy's modules that is not an ndarray (a sparse matrix, say) is the full path's to refuse
        xdt, shape, strides = x.dtype, x.shape, x.strides
        dtype = _LEAN_DTYPES.get(xdt)
    except Exception:
        return None
    if dtype is None or len(shape) != 3:
        return None
    if time_major:
        T, B, C = shape
        st, sb, sc = strides
    else:
        B, T, C = shape
        sb, st, sc = strides
    item = xdt.itemsize
    if (B < 1 or T < 1 or C < 1 or B > _INT32_MAX or T > _INT32_MAX or C > _INT32_MAX or B * T * C > cpu.MAX_ELEMENTS
            or (C > 1 and sc != item) or sb % item or st % item or sc % item or sb < 0 or st < 0):
        return None
    if blank_index is None:
        blank = 0
    elif type(blank_index) is int and -C <= blank_index < C:
        blank = blank_index + C if blank_index < 0 else blank_index
    else:
        return None
    packed = cpu.pack_device_args(labels, label_length, logit_length, B, T, C, blank)
    if packed is None:
        return None
    buf, Lmax = packed
    device = x.device
    sg = ((C, B * C) if time_major else (T * C, C)) if want_grad else None
    try:  # an error here is the full path's to raise (the same call of the same function)
        prep = _prepared(B, T, C, Lmax, dtype, (sb // item, st // item), blank, True, sg,
                         chain_dynamic_shared_limit(device.id, dtype), memory_limit)
    except Exception:
        return None
    if prep.budget_grad:
        return None
    cp = _cupy()
    with device:
        dev = cp.asarray(buf)  # the one host-to-device copy (asynchronous)
        base = dev.data.ptr
        o = base + 16 * B
        grad = cp.empty(shape, dtype=xdt) if want_grad else None
        # in _USER_BUFS order: x, labels, label_length, logit_length, loss, grad_scale, grad
        _run_prepared(cp, prep, device, [x, numpy.uint64(o), numpy.uint64(o + 4 * B * Lmax),
                                         numpy.uint64(o + 4 * B * (Lmax + 1)), numpy.uint64(base),
                                         numpy.uint64(base + 8 * B), grad])
        loss = dev[:8 * B].view(numpy.float64)
        if dtype == "float32":
            loss = loss.astype(numpy.float32)
    return loss, grad


def greedy_decode(x, logit_length, blank, merge_repeated=True):
    """Greedy (best path) CTC decoding on the GPU.

    Parameters
    ----------
    x : cupy.ndarray, (B, T, C), float32 or float64, contiguous class axis
    logit_length : (B,) int (CuPy on x's device, or host)
    blank : int in [0, C)
    merge_repeated : bool

    Returns
    -------
    decoded : cupy.ndarray (B, T) int32, padded with -1
    decoded_length : cupy.ndarray (B,) int32
    neg_sum_logits : cupy.ndarray (B,) float64, ``-sum_t max_c x[b, t, c]`` over the valid frames
    """
    cp = _cupy()
    B, T, C = x.shape
    device = x.device
    with device:
        sx = _element_strides(x, "logits")
        bufs = {
            "x": x, "logit_length": _device_array(cp, logit_length, cp.int32, "logit_length", device),
            "decoded": cp.empty((B, T), dtype=cp.int32), "decoded_length": cp.empty(B, dtype=cp.int32),
            "neg_sum_logits": cp.empty(B, dtype=cp.float64),
        }
        plan = greedy_launch_config(B, T, C, x.dtype, sx, blank=blank, merge_repeated=merge_repeated)
        _run(cp, plan, device, bufs)
        return bufs["decoded"], bufs["decoded_length"], bufs["neg_sum_logits"]
