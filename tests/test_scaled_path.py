"""The scaled (linear-space) recursion is the path ordinary inputs take, and it is exact.

Every other test compares results only, and the log-space fallback gives the same results more slowly, so a
scaled path that wrongly handed sequences over to log space would pass them all. Here the kernel's per-sequence
flags say which path ran: ordinary random logits must never need the fallback, in loss-only calls or in gradient
calls (where stage 2 writes the gradient rows itself and checks every frame's mass against P), and the results
must still equal the exact log-space reference.
"""
import numpy as np
import pytest

import cyctc
from cyctc import _args, _cpu
from ctc_reference import ctc_logspace

LOGSPACE = 4  # CYCTC_LOGSPACE


def _run(labels, x, ll, tl, grad, blank=0, scale=None, cache_room=-1):
    a = _args.normalize_loss_args(labels, x, ll, tl, True, None, blank)
    flags = np.full(a.B, -1, dtype=np.int32)
    g = None
    if grad:
        g = np.empty((a.T, a.B, a.C), dtype=a.x.dtype)
    gs = (np.ones(a.B) if scale is None else scale) if grad else None
    loss = _cpu.ctc_loss_grad(a.x, a.labels, a.label_length, a.logit_length, a.blank, True,
                              g.swapaxes(0, 1) if grad else None, gs, 2, flags, cache_room)
    return loss, g, flags


# (B, T, C, Lmax, logit scale): the benchmark's kinds of problem, smaller; repeats are frequent with small C
SHAPES = [(6, 50, 20, 10, 1.0), (8, 32, 80, 10, 3.0), (3, 200, 29, 60, 2.0), (3, 120, 1000, 40, 1.0),
          (2, 240, 29, 70, 1.5), (16, 30, 6, 8, 4.0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_ordinary_inputs_stay_scaled_and_exact(shape, dtype):
    B, T, C, L, sigma = shape
    rng = np.random.default_rng(B * T + C)
    x = (sigma * rng.standard_normal((T, B, C))).astype(dtype)
    ll = rng.integers(L // 2, L + 1, size=B).astype(np.int32)
    tl = rng.integers(int(0.8 * T), T + 1, size=B).astype(np.int32)
    labels = rng.integers(1, C, size=(B, L)).astype(np.int32)
    for b in range(B):  # feasible: enough frames for the repeats
        while ll[b] + np.count_nonzero(labels[b, 1:ll[b]] == labels[b, :ll[b] - 1]) > tl[b]:
            labels[b] = rng.integers(1, C, size=L)
    loss, _, flags = _run(labels, x, ll, tl, False)
    assert not np.any(flags & LOGSPACE), flags
    gloss, g, gflags = _run(labels, x, ll, tl, True)
    assert not np.any(gflags & LOGSPACE), gflags
    assert np.array_equal(loss, gloss)
    gtol = 1e-12 if dtype == np.float64 else 2e-6
    for b in range(B):
        rl, rg = ctc_logspace(x[:tl[b], b].astype(np.float64), labels[b, :ll[b]], 0)
        assert loss[b] == pytest.approx(rl, rel=1e-13 if dtype == np.float64 else 1e-6)
        np.testing.assert_allclose(g[:tl[b], b], rg, atol=gtol)
        assert np.all(g[tl[b]:, b] == 0)


def test_gradient_scale_in_stage_two():
    """reduction "mean" scales every column of a row, the ones stage 2 does not touch included."""
    rng = np.random.default_rng(5)
    T, B, C, L = 40, 3, 12, 6
    x = rng.standard_normal((T, B, C))
    labels = rng.integers(1, C, size=(B, L)).astype(np.int32)
    ll = np.array([6, 3, 5], np.int32)
    tl = np.array([40, 33, 38], np.int32)
    scale = np.array([0.5, 2.0, -3.0])
    _, g1, f1 = _run(labels, x, ll, tl, True)
    _, gs, fs = _run(labels, x, ll, tl, True, scale=scale)
    assert not np.any((f1 | fs) & LOGSPACE)
    np.testing.assert_allclose(gs, g1 * scale[None, :, None], rtol=1e-15, atol=0)
    loss, g = cyctc.ctc_loss(labels, x, ll, tl, reduction="mean", return_grad=True)
    np.testing.assert_allclose(g, g1 / (np.maximum(ll, 1) * B)[None, :, None], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sigma", [1.0, 30.0, 3000.0])
def test_probability_cache_changes_no_bit(dtype, sigma):
    """Gradient calls keep frames' class probabilities for stage 2 where the memory bound leaves room; with no
    cache, a cache for every sequence, or the bound's choice, the results are the same bits (confident inputs,
    sigma 3000, take the log-space path after stage 1, which the cache must not hide)."""
    rng = np.random.default_rng(int(sigma))
    T, B, C, L = 60, 7, 9, 12
    x = (sigma * rng.standard_normal((T, B, C))).astype(dtype)
    labels = rng.integers(1, C, size=(B, L)).astype(np.int32)
    ll = rng.integers(0, L + 1, size=B).astype(np.int32)
    tl = np.maximum(rng.integers(T // 2, T + 1, size=B), 2 * ll + 1).astype(np.int32)
    runs = [_run(labels, x, ll, tl, True, cache_room=room) for room in (0, 1e12, -1)]
    for loss, g, flags in runs[1:]:
        assert np.array_equal(loss, runs[0][0], equal_nan=True)
        assert np.array_equal(g, runs[0][1], equal_nan=True)
        assert np.array_equal(flags, runs[0][2])
    if sigma == 3000.0:
        assert np.any(runs[0][2] & LOGSPACE)  # the fallback did run
