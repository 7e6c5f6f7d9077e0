"""Long inputs (the long-inputs issue, item 0): untrained-model, flat and trained-model logits stay on the scaled
path at lengths where one exponent per row cannot hold them, and the results match an independent float64
log-space forward-backward; block boundaries of the per-block exponents (every 8 labels) are exact."""
import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp

import cyctc
from cyctc import _cpu

LOGSPACE = 4  # CYCTC_LOGSPACE: the kernel handed the sequence to the log-space fallback
C = 32


def family(kind, T, L, seed, dtype=np.float32):
    """Logits (1, T, C) and labels (1, L) of one of the families of benchmarks/bench_long.py."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, C, (1, L)).astype(np.int32)
    if kind == "uniform":
        x = rng.uniform(-1.0, 1.0, (1, T, C))
    else:
        x = rng.standard_normal((1, T, C))
    if kind == "peaked":  # a synthetic trained model: +8 on a random monotone alignment of the labels
        path = np.zeros(T, np.int64)
        starts = np.sort(rng.choice(np.arange(0, T - 2, 2), L, replace=False))
        for k, s in enumerate(starts):
            path[s: s + 1 + int(rng.integers(0, 2))] = labels[0, k]
        x[0, np.arange(T), path] += 8.0
    return x.astype(dtype), labels


def run(x, labels, grad, threads=2):
    """The backend entry point with the kernel's per-sequence flags: (loss (B,), grad or None, flags (B,))."""
    B, T, _ = x.shape
    flags = np.zeros(B, np.int32)
    g = np.empty_like(x) if grad else None
    ll = np.full(B, labels.shape[1], np.int32)
    tl = np.full(B, T, np.int32)
    loss = _cpu.ctc_loss_grad(x, labels, ll, tl, 0, True, g, None, threads, flags)
    return loss, g, flags


def reference(x, labels, blank=0):
    """-log p and d/d logits of one sequence (x (T, C), labels (L,)): a float64 log-space forward-backward over
    whole rows, written from the definition (no shared code with cyctc or tests/ctc_reference.py's loops)."""
    logp = log_softmax(np.asarray(x, np.float64), axis=1)
    T = logp.shape[0]
    ext = np.full(2 * len(labels) + 1, blank, np.int64)
    ext[1::2] = labels
    S = ext.size
    skip = np.zeros(S, bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    la = np.full((T, S), -np.inf)
    la[0, :2] = logp[0, ext[:2]]
    for t in range(1, T):
        a = la[t - 1]
        v = a.copy()
        v[1:] = np.logaddexp(v[1:], a[:-1])
        v[2:] = np.where(skip[2:], np.logaddexp(v[2:], a[:-2]), v[2:])
        la[t] = v + logp[t, ext]
    lb = np.full((T, S), -np.inf)
    lb[T - 1, S - 2:] = 0.0
    for t in range(T - 2, -1, -1):
        e = lb[t + 1] + logp[t + 1, ext]
        v = e.copy()
        v[:-1] = np.logaddexp(v[:-1], e[1:])
        v[:-2] = np.where(skip[2:], np.logaddexp(v[:-2], e[2:]), v[:-2])
        lb[t] = v
    logP = logsumexp(la[T - 1, S - 2:])
    post = np.exp(la + lb - logP)
    occ = np.zeros_like(logp)
    for c in np.unique(ext):
        occ[:, c] = post[:, ext == c].sum(axis=1)
    return -logP, np.exp(logp) - occ


@pytest.mark.parametrize("kind", ["random", "uniform", "peaked"])
@pytest.mark.parametrize("T,L,seeds", [(3000, 600, range(6)), (6000, 1200, range(2)), (12000, 2400, range(1))])
def test_long_families_stay_on_the_scaled_path(kind, T, L, seeds):
    """Beyond ~3000 frames one exponent per row lost the posterior's states for untrained models (2 of 12 seeds at
    (3000, 600), every seed at (6000, 1200) went to log space). With one exponent per block no seed does, loss-only
    or with the gradient, and both calls give the same loss bits."""
    for seed in seeds:
        x, lab = family(kind, T, L, seed)
        loss, _, flags = run(x, lab, grad=False)
        assert not flags[0] & LOGSPACE, (kind, T, L, seed)
        gloss, g, gflags = run(x, lab, grad=True)
        assert not gflags[0] & LOGSPACE, (kind, T, L, seed)
        assert np.array_equal(loss, gloss)
        assert np.isfinite(loss[0]) and np.all(np.isfinite(g))


@pytest.mark.parametrize("kind", ["random", "uniform", "peaked"])
def test_long_inputs_exact_against_float64_log_space(kind):
    """(1, 4000, 32, 800) float64: the loss to 1e-12 relative and every gradient entry to 1e-10 of the reference
    (one exponent per row could not hold the random family here)."""
    x, lab = family(kind, 4000, 800, 11, np.float64)
    loss, g, flags = run(x, lab, grad=True)
    assert not flags[0] & LOGSPACE
    want, wgrad = reference(x[0], lab[0])
    assert abs(loss[0] - want) <= 1e-12 * want
    np.testing.assert_allclose(g[0], wgrad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("L", [7, 8, 9, 15, 16, 17, 23, 24, 25, 63, 64, 65])
@pytest.mark.parametrize("repeats", [False, True])
def test_block_boundaries_exact(L, repeats):
    """Label counts around multiples of 8 (the block of the per-block exponents), with and without repeated
    neighbours (which forbid the skip that crosses a boundary), each of several lengths and magnitudes, loss and
    gradient against the reference; 2 threads give the bits of 1."""
    rng = np.random.default_rng(L + 100 * repeats)
    for scale, T in ((1.0, 3 * L + 5), (6.0, 2 * L + 3), (0.3, 8 * L)):
        x = (scale * rng.standard_normal((2, T, 6))).astype(np.float64)
        lab = rng.integers(1, 6, (2, L)).astype(np.int32)
        if repeats:
            lab[:, 1::2] = lab[:, 0:-1:2][:, : lab[:, 1::2].shape[1]]
        loss, g, flags = run(x, lab, grad=True)
        loss1, g1, _ = run(x, lab, grad=True, threads=1)
        assert np.array_equal(loss, loss1) and np.array_equal(g, g1)
        for b in range(2):
            want, wgrad = reference(x[b], lab[b])
            if np.isinf(want):
                assert np.isinf(loss[b])
                continue
            assert abs(loss[b] - want) <= 1e-11 * max(1.0, want), (L, repeats, scale, b)
            np.testing.assert_allclose(g[b], wgrad, rtol=0, atol=1e-10)


def test_long_public_call_matches_backend():
    """The public function on a long random input (time-major, as tf.nn.ctc_loss takes it) gives the backend's
    numbers: nothing on the way adds a fallback or a copy that changes them."""
    x, lab = family("random", 6000, 1200, 3)
    loss, g, flags = run(x, lab, grad=True)
    got, ggot = cyctc.ctc_loss(lab, np.ascontiguousarray(x.swapaxes(0, 1)), [1200], [6000], return_grad=True,
                               reduction="none", num_threads=2)
    assert np.array_equal(got, loss.astype(np.float32))
    assert np.array_equal(ggot.swapaxes(0, 1), g)


# ---- bounded memory (the long-inputs issue, item 1) -----------------------------------------------------------

def run_k(x, labels, k=0, limit=0, merge=True, blank=0, threads=2, lengths=None):
    """The backend with a forced checkpoint interval k (> 1) or a budget in bytes: (loss, grad, flags)."""
    B, T, _ = x.shape
    g = np.empty_like(x)
    flags = np.zeros(B, np.int32)
    ll = np.full(B, labels.shape[1], np.int32) if lengths is None else np.asarray(lengths[0], np.int32)
    tl = np.full(B, T, np.int32) if lengths is None else np.asarray(lengths[1], np.int32)
    loss = _cpu.ctc_loss_grad(x, labels, ll, tl, blank, merge, g, None, threads, flags, -1, limit, k)
    return loss, g, flags


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("merge", [True, False])
def test_checkpoints_give_the_same_bits(dtype, merge):
    """Gradient rows kept every k frames and the others computed again give the bits of every row stored, for
    every k, frame counts around the meeting and the checkpoints (T = 1, 2, 3, k, k + 1, ...), varied lengths in
    one batch, labels of more than 64 classes (the path through posterior rows), and confident frames."""
    rng = np.random.default_rng(7 + merge)
    for T, L, C_ in ((1, 1, 5), (2, 1, 5), (3, 2, 5), (9, 3, 7), (10, 4, 7), (64, 20, 9), (301, 70, 90)):
        x = (rng.standard_normal((3, T, C_)) * rng.choice([1.0, 4.0])).astype(dtype)
        lab = rng.integers(1, C_, (3, L)).astype(np.int32)
        lengths = (np.array([L, max(L - 1, 0), L // 2]), np.array([T, max(T - 1, 0), max(T // 2, L // 2 + 1)]))
        lengths = (lengths[0], np.minimum(lengths[1], T))
        base = run_k(x, lab, merge=merge, lengths=lengths)
        for k in (2, 3, 4, 7, 16, T + 5):
            got = run_k(x, lab, k=k, merge=merge, lengths=lengths)
            assert np.array_equal(base[0], got[0], equal_nan=True), (T, L, k)
            assert np.array_equal(base[1], got[1], equal_nan=True), (T, L, k)


def test_checkpoints_with_the_log_space_path():
    """A sequence that goes to log space after stage 2 began writes its gradient rows itself: the same bits with
    checkpoints, and the reference's numbers."""
    from test_underflow import ISSUE_LOGITS
    x = np.stack([ISSUE_LOGITS, 40.0 * np.random.default_rng(3).standard_normal(ISSUE_LOGITS.shape)])
    lab = np.array([[3, 1], [2, 1]], np.int32)
    lengths = (np.array([1, 2]), np.array([x.shape[1]] * 2))
    base = run_k(x, lab, lengths=lengths)
    assert base[2][0] & LOGSPACE
    for k in (2, 3, 5):
        got = run_k(x, lab, k=k, lengths=lengths)
        assert np.array_equal(base[0], got[0]) and np.array_equal(base[1], got[1])
    want, wgrad = reference(x[0], [3])
    assert base[0][0] == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(base[1][0], wgrad, atol=1e-12)


def test_memory_limit_same_results_and_minimum():
    """ctc_loss with budgets from ample down to the minimum it names: every budget gives the same loss and gradient
    bits (groups of examples, checkpoints); one byte less than that minimum raises MemoryError naming it, and
    loss-only calls run in far less."""
    x, lab = family("random", 2000, 300, 5)
    x = np.concatenate([x, x[:, ::-1], 2 * x])
    lab = np.concatenate([lab, lab[:, ::-1], lab])
    args = (lab, x, [300] * 3, [2000] * 3, False)
    base = cyctc.ctc_loss(*args, return_grad=True, reduction="none", num_threads=2)
    budgets = [1 << 30, 8 << 20, 3 << 20]
    with pytest.raises(MemoryError, match="minimum") as e:
        cyctc.ctc_loss(*args, return_grad=True, memory_limit=1000, num_threads=2)
    minimum = int(str(e.value).split("needs, ")[1].split(" bytes")[0])
    assert 1000 < minimum < 3 << 20
    budgets.append(minimum)
    for budget in budgets:
        got = cyctc.ctc_loss(*args, return_grad=True, reduction="none", num_threads=2, memory_limit=budget)
        assert np.array_equal(base[0], got[0]) and np.array_equal(base[1], got[1]), budget
    with pytest.raises(MemoryError, match=str(minimum)):
        cyctc.ctc_loss(*args, return_grad=True, num_threads=2, memory_limit=minimum - 1)
    loss = cyctc.ctc_loss(*args, reduction="none", num_threads=2, memory_limit=minimum // 4)
    assert np.array_equal(loss, base[0])


def test_memory_limit_bounds_the_traced_work_space():
    """The work space a gradient call allocates through Python's allocators (tracemalloc sees PyMem_RawMalloc: the
    rows and checkpoints) stays under the budget, outputs aside, while every row stored would need 4x more."""
    import tracemalloc
    x, lab = family("random", 3000, 600, 1)
    budget = 8 << 20
    full = 8 * 3001 * _cpu_row_width(600)
    assert full > 3 * budget
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        loss, grad = cyctc.ctc_loss(lab, x, [600], [3000], False, return_grad=True, reduction="none",
                                    num_threads=2, memory_limit=budget)
        peak = tracemalloc.get_traced_memory()[1] - before - grad.nbytes - loss.nbytes
    finally:
        tracemalloc.stop()
    assert peak <= budget, peak


def _cpu_row_width(L):
    """doubles of one stored row (2L + 1 states padded to blocks of 16, and one exponent a block)"""
    nb = L // 8 + 1
    return 2 * nb * 8 + 1 + nb


@pytest.mark.parametrize("func", ["ctc_loss", "ctc_loss_v1", "ctc_batch_cost"])
def test_memory_limit_argument_and_environment(func, monkeypatch):
    """memory_limit is validated by name in every loss function; CYCTC_MEMORY_LIMIT (bytes or 512M / 2G) is the
    default; a bad value in the environment is named; show_config prints the budget in force."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 400, 6)).astype(np.float32)
    lab = np.array([[1, 2, 3], [3, 4, 1]])

    def call(**kw):
        if func == "ctc_loss":
            return cyctc.ctc_loss(lab, x, [3, 3], None, False, return_grad=True, **kw)
        if func == "ctc_loss_v1":
            import scipy.sparse
            return cyctc.ctc_loss_v1(scipy.sparse.csr_matrix(lab), x, [400, 400], time_major=False, return_grad=True,
                                     **kw)
        probs = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
        return cyctc.ctc_batch_cost(lab, probs, np.array([[400], [400]]), np.array([[3], [3]]), return_grad=True,
                                    **kw)

    base = call()
    for bad, err in ((0, ValueError), (-1, ValueError), (True, TypeError), ("1G", TypeError), (2.0, TypeError)):
        with pytest.raises(err, match="memory_limit"):
            call(memory_limit=bad)
    with pytest.raises(MemoryError, match="minimum"):
        call(memory_limit=64)
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "64")
    with pytest.raises(MemoryError, match="CYCTC_MEMORY_LIMIT"):
        call()
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "2M")
    got = call()
    assert np.array_equal(got[0], base[0]) and np.array_equal(got[1], base[1])
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="CYCTC_MEMORY_LIMIT"):
        call()
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "1.5G")
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cyctc.show_config()
    assert f"memory_limit: {3 << 29} bytes" in out.getvalue() and "CYCTC_MEMORY_LIMIT" in out.getvalue()


@pytest.mark.parametrize("k", [0, 3])
def test_many_distinct_classes_exact(k):
    """Labels of more distinct classes than the kernel deduplicates (64) go through a row of state posteriors per
    frame: exact against the reference, with every row stored and with checkpoints (the same bits)."""
    rng = np.random.default_rng(11)
    T, L, C_ = 260, 120, 200
    x = rng.standard_normal((2, T, C_))
    lab = np.stack([rng.permutation(np.arange(1, C_))[:L], rng.integers(1, C_, L)]).astype(np.int32)
    loss, g, flags = run_k(x, lab, k=k)
    assert not flags.any()
    for b in range(2):
        want, wgrad = reference(x[b], lab[b])
        assert loss[b] == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(g[b], wgrad, rtol=0, atol=1e-11)
    if k:
        base = run_k(x, lab)
        assert np.array_equal(base[0], loss) and np.array_equal(base[1], g)


@pytest.mark.parametrize("time_major", [False, True])
def test_memmap_logits_read_in_place(tmp_path, time_major):
    """Logits in a np.memmap (larger-than-RAM inputs) are read where they lie by the loss-only call: the call's
    traced allocations (the frame normalisers, 16 bytes a frame, and O(L) rows) stay far below the array's size,
    and the loss is that of the same array in memory."""
    import tracemalloc
    T, C_, L = 100000, 32, 300
    x, lab = family("random", T, L, 4)
    shape = (T, 1, C_) if time_major else (1, T, C_)
    mm = np.lib.format.open_memmap(str(tmp_path / "logits.npy"), mode="w+", dtype=np.float32, shape=shape)
    mm[...] = x.swapaxes(0, 1) if time_major else x
    mm.flush()
    del mm
    logits = np.load(str(tmp_path / "logits.npy"), mmap_mode="r")
    want = cyctc.ctc_loss(lab, np.array(logits), [L], [T], time_major, reduction="none", num_threads=2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        got = cyctc.ctc_loss(lab, logits, [L], [T], time_major, reduction="none", num_threads=2)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, want)
    assert peak < logits.nbytes / 4, (peak, logits.nbytes)


def test_memory_limit_counts_the_log_space_rows():
    """An example that needs the log-space fallback (logits far apart) allocates 24 bytes a state-frame of rows:
    within memory_limit, or a MemoryError that names memory_limit; with room, the same bits as unbounded."""
    rng = np.random.default_rng(2)
    T, L, C_ = 2000, 100, 20
    x = 60 * rng.standard_normal((1, T, C_))
    lab = rng.integers(1, C_, (1, L))
    assert run_k(x, lab.astype(np.int32))[2][0] & LOGSPACE
    base = cyctc.ctc_loss(lab, x, [L], [T], False, return_grad=True, reduction="none", num_threads=2)
    with pytest.raises(MemoryError, match="log-space.*memory_limit"):
        cyctc.ctc_loss(lab, x, [L], [T], False, return_grad=True, num_threads=2, memory_limit=16 << 20)
    got = cyctc.ctc_loss(lab, x, [L], [T], False, return_grad=True, reduction="none", num_threads=2,
                         memory_limit=40 << 20)
    assert np.array_equal(got[0], base[0]) and np.array_equal(got[1], base[1])
