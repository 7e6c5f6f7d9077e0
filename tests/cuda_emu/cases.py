"""Reference cases for the CUDA backend tests, in the form the backend takes them, and their checks.

Used by tests/test_cuda_emulation.py (kernels run on the CPU through emu.h) and tests/test_gpu.py (real device).
Every loss case of the reference data that the GPU path supports is turned into the backend's arguments: a
(B, T, C) view of the logits (time-major data stays time-major: the view is strided, exactly what cyctc._args
hands the backends), int32 labels / lengths, the blank, merge_repeated. Semantics checked (cyctc's contract, see
shared/refdata/README.md): exact float64 values (check_*) wherever they exist, TF's values (expected_*) for
ctc_merge_repeated=False; examples without any alignment give loss +inf and a zero gradient (where TF returns its
706.89 penalty, 0 for ignore_longer_outputs_than_inputs, or a softmax gradient).
Keras cases (probabilities) go through the same kernels with x = log(p + eps) and d/dp = (d/dx) / (p + eps).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
KERAS_EPS = 1e-7


def data_dir() -> str:
    """tests/data when it holds the reference cases, else ../shared/refdata beside the repository."""
    local = os.path.join(TESTS, "data")
    if glob.glob(os.path.join(local, "*.npz")):
        return local
    return os.path.join(os.path.dirname(ROOT), "shared", "refdata")


def all_case_files():
    return sorted(glob.glob(os.path.join(data_dir(), "*.npz")))


@dataclass
class LossCase:
    name: str
    raw: np.ndarray          # logits in their stored layout ((T, B, C) when time_major), C-contiguous
    time_major: bool
    labels: np.ndarray       # int32 (B, Lmax), Lmax >= 1
    label_length: np.ndarray  # int32 (B,)
    logit_length: np.ndarray  # int32 (B,)
    blank: int
    merge_repeated: bool
    ref_loss: np.ndarray     # float64 (B,); +inf where no alignment exists
    ref_grad: np.ndarray     # (B, T, C) view; what the kernel must produce (w.r.t. x), or w.r.t. probs (keras)
    loss_rtol: float
    grad_atol: float
    probs: Optional[np.ndarray] = None  # keras: probabilities in the (B, T, C) layout of x

    @property
    def x(self) -> np.ndarray:
        """The (B, T, C) view the backends take."""
        return self.raw.swapaxes(0, 1) if self.time_major else self.raw

    @property
    def dtype(self):
        return self.raw.dtype

    def grad_from_kernel(self, g_x: np.ndarray) -> np.ndarray:
        """Gradient in the reference's terms (keras: w.r.t. probs) from the kernel's (B, T, C) gradient."""
        if self.probs is None:
            return g_x
        return g_x / (self.probs + self.probs.dtype.type(KERAS_EPS))


def required_frames(lab, merge_repeated: bool) -> int:
    lab = list(lab)
    if not merge_repeated:
        return len(lab)
    return len(lab) + sum(1 for a, b in zip(lab, lab[1:]) if a == b)


def _collapse(labels, label_length):
    out = np.zeros_like(labels)
    lengths = np.zeros_like(label_length)
    for b in range(labels.shape[0]):
        seq = [v for i, v in enumerate(labels[b, :label_length[b]]) if i == 0 or v != labels[b, i - 1]]
        out[b, :len(seq)] = seq
        lengths[b] = len(seq)
    return out, lengths


def load_loss_case(path: str) -> Optional[LossCase]:
    """The case at ``path`` as a LossCase, or None when the GPU path has nothing to compute for it."""
    d = np.load(path)
    api = str(d["api"])
    opts = json.loads(str(d["options"]))
    if "expected_error" in d.files or "expected_loss" not in d.files:
        return None  # whole-call errors are the argument layer's business; decoders are elsewhere
    name = os.path.basename(path)
    time_major = bool(d["time_major"])
    dtype = np.dtype(str(d["dtype"]))
    labels = d["labels"].astype(np.int32)
    label_length = d["label_length"].astype(np.int32)
    logit_length = d["logit_length"].astype(np.int32)
    blank = int(d["blank"])
    merge = True
    if api == "tf.compat.v1.nn.ctc_loss":
        merge = bool(opts["ctc_merge_repeated"])
        if opts["preprocess_collapse_repeated"]:
            labels, label_length = _collapse(labels, label_length)
    probs = None
    if api == "tf_keras.backend.ctc_batch_cost":
        probs = d["probs"].astype(dtype)
        raw = np.log(probs + dtype.type(KERAS_EPS)).astype(dtype)  # what ctc_batch_cost feeds the v1 kernel
        time_major = False
    else:
        raw = np.ascontiguousarray(d["logits"].astype(dtype))
    if labels.shape[1] == 0:
        labels = np.zeros((labels.shape[0], 1), np.int32)
    B = labels.shape[0]

    has_check = "check_loss" in d.files
    exp_loss = d["expected_loss"].astype(np.float64)
    exp_grad = d["expected_grad"]
    chk_loss = d["check_loss"].astype(np.float64) if has_check else np.full(B, np.nan)
    chk_grad = d["check_grad"] if has_check else None
    if time_major and probs is None:
        exp_grad = exp_grad.swapaxes(0, 1)
        chk_grad = chk_grad.swapaxes(0, 1) if chk_grad is not None else None

    ref_loss = np.empty(B)
    ref_grad = np.zeros(exp_grad.shape, np.float64)
    use_check = np.zeros(B, bool)
    for b in range(B):
        if logit_length[b] < required_frames(labels[b, :label_length[b]], merge):
            ref_loss[b] = np.inf  # no alignment: cyctc gives +inf and a zero gradient
        elif np.isfinite(chk_loss[b]):
            ref_loss[b], ref_grad[b] = chk_loss[b], chk_grad[b]
            use_check[b] = True
        else:
            assert np.isfinite(exp_loss[b]), f"{name}[{b}]: no finite reference"
            ref_loss[b], ref_grad[b] = exp_loss[b], exp_grad[b]
    if dtype == np.float32:
        # loss 1e-6 relative (1e-4 absolute above 100, see assert_loss_close); gradient 1e-5 absolute
        loss_rtol, grad_atol = 1e-6, 1e-5
    elif use_check[np.isfinite(ref_loss)].all():
        loss_rtol, grad_atol = 1e-10, 1e-10
    else:  # float64 values of TF's sparse / v1 / keras kernels
        loss_rtol, grad_atol = 1e-7, 1e-6
    if probs is not None:
        grad_atol *= float(np.abs(ref_grad).max())
    return LossCase(name, raw, time_major, labels, label_length, logit_length, blank, merge, ref_loss, ref_grad,
                    loss_rtol, grad_atol, probs)


def loss_cases():
    return [c for c in (load_loss_case(p) for p in all_case_files()) if c is not None]


def assert_loss_close(loss, ref, rtol):
    """|loss - ref| <= rtol |ref|, or <= 1e-4 for losses above 100 (float32's accumulated rounding over long inputs)."""
    loss, ref = np.asarray(loss, np.float64), np.asarray(ref, np.float64)
    tol = np.maximum(rtol * np.abs(ref), np.where(np.abs(ref) > 100, 1e-4, 0.0))
    bad = ~(np.abs(loss - ref) <= tol)
    assert not bad.any(), f"losses {loss[bad]} differ from {ref[bad]} by more than {tol[bad]}"


def check_loss_grad(case: LossCase, loss: np.ndarray, grad_x: Optional[np.ndarray]):
    """Assert the backend's loss (float64 (B,)) and (B, T, C) gradient w.r.t. x match the case."""
    loss = np.asarray(loss, np.float64)
    inf = np.isinf(case.ref_loss)
    assert np.all(np.isposinf(loss[inf])), f"infeasible examples must give +inf, got {loss[inf]}"
    assert_loss_close(loss[~inf], case.ref_loss[~inf], case.loss_rtol)
    if grad_x is None:
        return
    assert grad_x.dtype == case.dtype
    assert not np.isnan(grad_x).any(), "gradient entries left unwritten (NaN poison) or NaN"
    for b in range(len(loss)):
        tb = case.logit_length[b]
        assert np.all(grad_x[b, tb:] == 0), f"example {b}: rows t >= logit_length must be exactly 0"
        if inf[b]:
            assert np.all(grad_x[b] == 0), f"example {b}: infeasible example must have a zero gradient"
    g = case.grad_from_kernel(grad_x.astype(np.float64))
    np.testing.assert_allclose(g[~inf], case.ref_grad[~inf], rtol=0, atol=case.grad_atol)
    # each valid frame's gradient w.r.t. the logits sums to 0
    for b in np.flatnonzero(~inf):
        sums = grad_x[b, :case.logit_length[b]].astype(np.float64).sum(axis=-1)
        tol = 1e-5 if case.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(sums, 0, atol=tol * case.x.shape[-1])


@dataclass
class GreedyCase:
    name: str
    raw: np.ndarray
    logit_length: np.ndarray
    blank: int
    merge_repeated: bool
    decoded: np.ndarray          # int64 (B, maxlen) padded with -1 (top path)
    decoded_length: np.ndarray   # (B,)
    neg_sum_logits: np.ndarray   # (B,)

    @property
    def x(self):
        return self.raw.swapaxes(0, 1)  # the decoder data is time-major


def greedy_cases():
    out = []
    for p in all_case_files():
        d = np.load(p)
        if str(d["api"]) != "tf.nn.ctc_greedy_decoder":
            continue
        opts = json.loads(str(d["options"]))
        out.append(GreedyCase(os.path.basename(p), np.ascontiguousarray(d["logits"]),
                              d["logit_length"].astype(np.int32),
                              int(d["blank"]), bool(opts["merge_repeated"]), d["decoded"][0],
                              d["decoded_length"][0], d["neg_sum_logits"][:, 0].astype(np.float64)))
    return out


def check_greedy(case: GreedyCase, decoded, decoded_length, neg_sum):
    np.testing.assert_array_equal(decoded_length, case.decoded_length)
    for b in range(len(decoded_length)):
        n = int(decoded_length[b])
        np.testing.assert_array_equal(decoded[b, :n], case.decoded[b, :n])
        assert np.all(decoded[b, n:] == -1)
    np.testing.assert_allclose(neg_sum, case.neg_sum_logits, rtol=1e-6)


# ---- an independent float64 oracle for random inputs (plain log-space alpha/beta, no tiling, no tricks) ----

def numpy_ctc(x, labels, label_length, logit_length, blank, merge_repeated=True):
    """Loss (B,) and gradient w.r.t. x (B, T, C), float64, with cyctc's semantics (inf + zero grad when infeasible)."""
    x = np.asarray(x, np.float64)
    B, T, C = x.shape
    loss = np.zeros(B)
    grad = np.zeros_like(x)
    for b in range(B):
        tb, L = int(logit_length[b]), int(label_length[b])
        lab = [int(v) for v in labels[b, :L]]
        ext = [blank]
        for v in lab:
            ext += [v, blank]
        S = len(ext)
        if tb == 0:
            loss[b] = 0.0 if L == 0 else np.inf
            continue
        lp = x[b, :tb] - np.logaddexp.reduce(x[b, :tb], axis=-1, keepdims=True)
        e = lp[:, ext]
        stay = np.array([merge_repeated or s % 2 == 0 for s in range(S)])
        skip = np.array([s % 2 == 1 and s >= 3 and (not merge_repeated or ext[s] != ext[s - 2]) for s in range(S)])
        a = np.full((tb, S), -np.inf)
        a[0, :min(2, S)] = e[0, :min(2, S)]
        for t in range(1, tb):
            p = a[t - 1]
            v = np.where(stay, p, -np.inf)
            v[1:] = np.logaddexp(v[1:], p[:-1])
            v[2:] = np.where(skip[2:], np.logaddexp(v[2:], p[:-2]), v[2:])
            a[t] = v + e[t]
        ll = np.logaddexp.reduce(a[-1, -2:]) if S >= 2 else a[-1, 0]
        loss[b] = -ll
        if not np.isfinite(ll):
            loss[b] = np.inf
            continue
        bt = np.full((tb, S), -np.inf)  # beta without the emission of frame t
        bt[-1, -2:] = 0.0 if S >= 2 else 0.0
        if S == 1:
            bt[-1, 0] = 0.0
        for t in range(tb - 2, -1, -1):
            n = bt[t + 1] + e[t + 1]
            v = np.where(stay, n, -np.inf)
            v[:-1] = np.logaddexp(v[:-1], n[1:])
            v[:-2] = np.where(skip[2:], np.logaddexp(v[:-2], n[2:]), v[:-2])
            bt[t] = v
        post = np.exp(a + bt - ll)
        g = np.exp(lp)
        for s in range(S):
            g[:, ext[s]] -= post[:, s]
        grad[b, :tb] = g
    return loss, grad


def random_case(rng, B, T, C, Lmax, *, dtype=np.float64, blank=0, merge_repeated=True, time_major=False, scale=3.0):
    """Random logits / labels (with repeats, zero lengths and some infeasible examples)."""
    raw = (rng.standard_normal((T, B, C) if time_major else (B, T, C)) * scale).astype(dtype)
    classes = [c for c in range(C) if c != blank]
    labels = rng.choice(classes, size=(B, Lmax)).astype(np.int32)
    labels[:, 1::3] = labels[:, 0::3][:, :labels[:, 1::3].shape[1]]  # adjacent repeats
    label_length = rng.integers(0, Lmax + 1, size=B).astype(np.int32)
    logit_length = rng.integers(0, T + 1, size=B).astype(np.int32)
    logit_length[0] = T
    for b in range(B):
        labels[b, label_length[b]:] = 0
    return raw, labels, label_length, logit_length
