"""Property-based tests (hypothesis) of every public function over random shapes, lengths (feasible or not), blank
positions, dtypes (float16/32/64), label formats (dense, scipy.sparse COO/CSR), layouts and thread counts.

The properties: losses are >= 0 or +inf (+inf exactly for infeasible examples) and match a float64 log-space
reference; gradients are finite, 0 beyond logit_length and for infeasible examples, and each valid frame's
gradient sums to 0; results are bit-identical across thread counts, layouts, label formats and padding contents,
and a loss-only call returns the bits of the gradient call. Decoders and alignment satisfy their definitions
(checked against slow references) with the same invariances.

Structure (shapes, lengths, dtype, blank, layout, format, threads) is drawn by hypothesis; the numbers inside the
arrays come from a numpy generator seeded by a drawn integer, which keeps every example cheap.
"""
import os
from typing import NamedTuple

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import log_softmax, logsumexp

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cyctc  # noqa: E402
from ctc_reference import batch_reference  # noqa: E402
import decode_reference as dref  # noqa: E402

# In CI (CI set) the examples are derandomised: the same cases every run, so a red CI is reproducible; locally
# hypothesis explores new cases each run.
_CI = bool(os.environ.get("CI"))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=_CI, database=None if _CI else settings.default.database)
DTYPES = [np.float16, np.float32, np.float64]
THREADS = st.sampled_from([2, 3, -1, None])
# magnitudes of the logits: 0 gives all-equal rows; 100 and 1e4 force the log-space fallback
SCALES = [0.0, 1.0, 5.0, 100.0]


class Problem(NamedTuple):
    x: np.ndarray       # (B, T, C) logits, batch-major, dtype
    labels: np.ndarray  # (B, Lmax) int32, zero-padded
    ll: np.ndarray      # (B,) label lengths
    tl: np.ndarray      # (B,) valid frames
    blank: int
    need: np.ndarray    # (B,) frames an alignment needs (labels + adjacent repeats)
    seed: int


def min_frames(lab, merge=True):
    lab = np.asarray(lab)
    return len(lab) + (int(np.sum(lab[1:] == lab[:-1])) if merge and len(lab) > 1 else 0)


@st.composite
def problems(draw, max_B=4, max_T=9, max_C=6, max_L=5, dtypes=DTYPES, blank=None, scales=SCALES):
    B = draw(st.integers(0, max_B))
    T = draw(st.integers(0, max_T))
    C = draw(st.integers(2, max_C))
    b = draw(st.integers(0, C - 1)) if blank is None else blank(C)
    Lmax = draw(st.integers(0, max_L))
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from(scales))
    few_classes = draw(st.booleans())  # many adjacent repeats
    feasible_bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((B, T, C)) * scale).astype(dtype)
    classes = np.array([c for c in range(C) if c != b])
    if few_classes:
        classes = classes[:1 + (len(classes) > 1)]
    labels = classes[rng.integers(0, len(classes), size=(B, Lmax))].astype(np.int32)
    ll = rng.integers(0, Lmax + 1, size=B).astype(np.int32)
    labels[np.arange(Lmax) >= ll[:, None]] = 0
    need = np.array([min_frames(labels[i, :ll[i]]) for i in range(B)], dtype=np.int64)
    if feasible_bias:  # mostly feasible examples
        tl = np.minimum(np.maximum(need, rng.integers(0, T + 1, size=B)), T)
    else:
        tl = rng.integers(0, T + 1, size=B)
    return Problem(x, labels, ll, tl.astype(np.int32), int(b), need, seed)


def scramble_padding(p, rng, nonfinite=True):
    """Copies of logits and labels whose padding (frames >= tl, labels >= ll) holds garbage."""
    x = p.x.copy()
    lab = p.labels.copy()
    B, T, C = x.shape
    junk = [np.nan, np.inf, -np.inf, 1e4, -7.0] if nonfinite else [1e4, -7.0, 3.0]
    for b in range(B):
        if p.tl[b] < T:
            x[b, p.tl[b]:] = rng.choice(junk, size=(T - p.tl[b], C)).astype(x.dtype)
        lab[b, p.ll[b]:] = rng.integers(-5, 100, size=lab.shape[1] - p.ll[b])
    return x, lab


def to_sparse(p, fmt, rng):
    """The labels as scipy.sparse (B, Lmax + 1) with entries stored in a random order (COO) or as CSR."""
    rows = np.repeat(np.arange(len(p.ll)), p.ll)
    cols = np.concatenate([np.arange(n) for n in p.ll]) if len(p.ll) else np.zeros(0, int)
    vals = p.labels[rows, cols]
    order = rng.permutation(len(rows))
    coo = sp.coo_matrix((vals[order], (rows[order], cols[order])), shape=(len(p.ll), p.labels.shape[1] + 1))
    return coo if fmt == "coo" else coo.tocsr()


def frame_sum_tol(dtype, C):
    return {np.float16: 2e-3 * C, np.float32: 2e-6 * C, np.float64: 1e-13 * C}[np.dtype(dtype).type]


def same(a, b):
    """Bit-identical arrays (NaN == NaN, +0 vs -0 told apart)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------------------------------------ ctc_loss


@SETTINGS
@given(p=problems())
def test_loss_values_and_gradient(p):
    x, lab, ll, tl, blank = p.x, p.labels, p.ll, p.tl, p.blank
    loss, grad = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank, return_grad=True, num_threads=1)
    assert loss.dtype == grad.dtype == x.dtype and grad.shape == x.shape
    feasible = tl >= p.need
    # >= 0, or +inf exactly where no alignment exists
    assert np.all(np.isposinf(loss[~feasible]))
    assert np.all(np.isfinite(loss[feasible])) and np.all(loss[feasible] >= 0)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~feasible] == 0)
    for b in range(len(ll)):
        assert np.all(grad[b, tl[b]:] == 0)
    sums = grad.astype(np.float64).sum(axis=2)
    assert np.all(np.abs(sums) <= frame_sum_tol(x.dtype, x.shape[2])), np.abs(sums).max()
    # against the float64 log-space reference on the same values
    ref_l, ref_g = batch_reference(x.astype(np.float64), lab, ll, tl, blank)
    rtol, atol = {np.float16: (1e-3, 2e-3), np.float32: (2e-6, 2e-6), np.float64: (1e-10, 1e-10)}[x.dtype.type]
    np.testing.assert_allclose(loss.astype(np.float64), ref_l, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad.astype(np.float64), ref_g, rtol=0, atol=atol)


@SETTINGS
@given(p=problems(), nt=THREADS, fmt=st.sampled_from(["coo", "csr"]), neg_blank=st.booleans())
def test_loss_invariances(p, nt, fmt, neg_blank):
    x, lab, ll, tl, blank = p.x, p.labels, p.ll, p.tl, p.blank
    rng = np.random.default_rng(p.seed + 1)
    base_l, base_g = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank, return_grad=True, num_threads=1)
    # thread count
    l, g = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank, return_grad=True, num_threads=nt)
    assert same(l, base_l) and same(g, base_g)
    # loss-only call
    assert same(cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank, num_threads=nt), base_l)
    # time-major view and time-major copy; the gradient comes back time-major
    for xt in (x.swapaxes(0, 1), np.ascontiguousarray(x.swapaxes(0, 1))):
        l, g = cyctc.ctc_loss(lab, xt, ll, tl, True, blank_index=blank, return_grad=True, num_threads=nt)
        assert g.shape == xt.shape
        assert same(l, base_l) and same(np.ascontiguousarray(g.swapaxes(0, 1)), base_g)
    # sparse labels (entries stored out of order)
    l, g = cyctc.ctc_loss(to_sparse(p, fmt, rng), x, None, tl, False, blank_index=blank, return_grad=True,
                          num_threads=nt)
    assert same(l, base_l) and same(g, base_g)
    # padding contents (NaN, inf, huge values beyond the lengths; out-of-range labels beyond label_length)
    xs, labs = scramble_padding(p, rng)
    l, g = cyctc.ctc_loss(labs, xs, ll, tl, False, blank_index=blank, return_grad=True, num_threads=nt)
    assert same(l, base_l) and same(g, base_g)
    # blank counted from the end; unique (validated, never changes the result)
    C = x.shape[2]
    l = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank - C if neg_blank else blank,
                       unique=cyctc.ctc_unique_labels(lab), num_threads=nt)
    assert same(l, base_l)
    # reductions
    s, gs = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank, reduction="sum", return_grad=True,
                           num_threads=nt)
    assert same(gs, base_g)
    if len(ll):
        np.testing.assert_allclose(float(s), base_l.astype(np.float64).sum(), rtol=1e-3)
    z = cyctc.ctc_loss(lab, x, ll, tl, False, blank_index=blank, zero_infinity=True, num_threads=nt)
    assert same(z, np.where(np.isposinf(base_l), 0, base_l).astype(base_l.dtype))


# ------------------------------------------------------------------------------------------------ ctc_loss_v1


def last(C):
    return C - 1


@SETTINGS
@given(p=problems(blank=last), nt=THREADS, merge=st.booleans(), collapse=st.booleans())
def test_loss_v1_properties(p, nt, merge, collapse):
    x, lab, ll, tl = p.x, p.labels, p.ll, p.tl
    xt = x.swapaxes(0, 1)
    too_long = ll > tl
    kw = dict(preprocess_collapse_repeated=collapse, ctc_merge_repeated=merge,
              ignore_longer_outputs_than_inputs=True, label_length=ll, return_grad=True)
    loss, grad = cyctc.ctc_loss_v1(lab, xt, tl, num_threads=1, **kw)
    assert grad.shape == xt.shape
    assert np.all(loss[too_long] == 0) and np.all(grad[:, too_long] == 0)
    assert np.all((loss >= 0) | np.isposinf(loss)) and np.all(np.isfinite(grad))
    # TF's error for labels longer than inputs
    if too_long.any():
        with pytest.raises(ValueError, match="longer"):
            cyctc.ctc_loss_v1(lab, xt, tl, label_length=ll)
    # the same bits: threads, batch-major, sparse labels
    l, g = cyctc.ctc_loss_v1(lab, xt, tl, num_threads=nt, **kw)
    assert same(l, loss) and same(g, grad)
    l, g = cyctc.ctc_loss_v1(lab, x, tl, time_major=False, num_threads=nt, **kw)
    assert same(l, loss) and same(g, grad.swapaxes(0, 1).copy())
    kw_sparse = dict(kw, label_length=None)
    l, g = cyctc.ctc_loss_v1(to_sparse(p, "csr", np.random.default_rng(p.seed)), xt, tl, num_threads=nt,
                             **kw_sparse)
    assert same(l, loss) and same(g, grad)
    # against ctc_loss / the reference
    ok = ~too_long
    lab_used, ll_used = lab.copy(), ll.copy()
    if collapse:
        for b in range(len(ll)):
            merged = dref.merge_runs(lab[b, :ll[b]])
            lab_used[b] = 0
            lab_used[b, :len(merged)] = merged
            ll_used[b] = len(merged)
    if merge:
        l2, g2 = cyctc.ctc_loss(lab_used, xt, ll_used, tl, blank_index=-1, return_grad=True)
        assert same(l2[ok], loss[ok]) and same(g2[:, ok], grad[:, ok])
    else:
        ref_l, ref_g = batch_reference(x.astype(np.float64), lab_used, ll_used, tl, x.shape[2] - 1,
                                       merge_repeated=False)
        rtol = {np.float16: 1e-3, np.float32: 2e-6, np.float64: 1e-10}[x.dtype.type]
        np.testing.assert_allclose(loss[ok].astype(np.float64), ref_l[ok], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(grad.swapaxes(0, 1)[ok].astype(np.float64), ref_g[ok], atol=2 * rtol)


# ------------------------------------------------------------------------------------------------ ctc_batch_cost


@SETTINGS
@given(p=problems(blank=last, dtypes=[np.float32, np.float64]), nt=THREADS)
def test_keras_batch_cost_properties(p, nt):
    x, lab, ll, tl = p.x, p.labels, p.ll, p.tl
    ok = ll <= tl
    lab, ll, tl = lab[ok], ll[ok], tl[ok]  # Keras raises (as TF does) for labels longer than inputs
    y = np.exp(log_softmax(x[ok].astype(np.float64), axis=2)).astype(x.dtype)
    loss, grad = cyctc.ctc_batch_cost(lab, y, tl[:, None], ll[:, None], return_grad=True, num_threads=1)
    assert loss.shape == (len(ll), 1) and loss.dtype == y.dtype and grad.shape == y.shape
    assert np.all((loss >= 0) | np.isposinf(loss)) and np.all(np.isfinite(grad))
    # Keras's rule: TF1's loss on log(y_pred + 1e-7), gradient by the chain rule
    z = np.log(y + y.dtype.type(1e-7))
    lz, gz = cyctc.ctc_loss_v1(lab, z, tl, time_major=False, label_length=ll, return_grad=True)
    assert same(loss[:, 0], lz)
    np.testing.assert_allclose(grad, gz / (y + y.dtype.type(1e-7)), rtol=1e-6)
    # thread counts; (B,) lengths; float labels holding whole numbers
    l, g = cyctc.ctc_batch_cost(lab.astype(np.float32), y, tl, ll, return_grad=True, num_threads=nt)
    assert same(l, loss) and same(g, grad)
    assert same(cyctc.ctc_batch_cost(lab, y, tl, ll, num_threads=nt), loss)


# ------------------------------------------------------------------------------------------------ decoders


@SETTINGS
@given(p=problems(max_T=12), nt=THREADS, merge=st.booleans(), tm=st.booleans())
def test_greedy_decoder_properties(p, nt, merge, tm):
    x, tl, blank = p.x, p.tl, p.blank
    inputs = x.swapaxes(0, 1) if tm else x
    decoded, neg_sum = cyctc.ctc_greedy_decoder(inputs, tl, merge, blank, time_major=tm, num_threads=1)
    d = decoded[0]
    assert neg_sum.shape == (len(tl), 1) and neg_sum.dtype == np.promote_types(x.dtype, np.float32)
    seqs = d.to_list()
    for b in range(len(tl)):
        want, want_sum = dref.greedy(x[b, :tl[b]], blank, merge)
        assert list(seqs[b]) == want
        np.testing.assert_allclose(float(neg_sum[b, 0]), want_sum, rtol=1e-6, atol=1e-6)
        assert len(want) <= tl[b] and blank not in want
    # thread count, other layout, padding frames (NaN, inf beyond sequence_length)
    xs, _ = scramble_padding(p, np.random.default_rng(p.seed))
    for args in ((inputs, tm, nt), (x.swapaxes(0, 1), True, nt), (xs, False, nt)):
        dd, ns = cyctc.ctc_greedy_decoder(args[0], tl, merge, blank, time_major=args[1], num_threads=args[2])
        assert same(dd[0].indices, d.indices) and same(dd[0].values, d.values) and same(ns, neg_sum)


@SETTINGS
@given(p=problems(max_B=3, max_T=8, max_C=5, blank=last, dtypes=[np.float32, np.float64]), nt=THREADS,
       width=st.integers(1, 8), data=st.data())
def test_beam_search_properties(p, nt, width, data):
    x, tl = p.x, p.tl
    C = x.shape[2]
    top = data.draw(st.integers(1, width))
    res = cyctc.ctc_beam_search_decoder(x.swapaxes(0, 1), tl, width, top, num_threads=1)
    lp = res.log_probabilities
    assert lp.shape == (len(tl), top) and lp.dtype == x.dtype and len(res.decoded) == top
    lp64 = lp.astype(np.float64)
    # best first, <= 0 (a probability), missing paths empty with -inf
    prev = lp64[:, :-1]
    assert np.all(lp64[:, 1:] <= prev + np.where(np.isfinite(prev), 1e-12 * (1 + np.abs(prev)), 0))
    assert np.all(lp64 <= 1e-6)
    paths = [dec.to_list() for dec in res.decoded]
    for b in range(len(tl)):
        found = [tuple(paths[k][b]) for k in range(top) if np.isfinite(lp64[b, k])]
        assert len(set(found)) == len(found)  # distinct prefixes (merge_repeated=False)
        for k in range(top):
            seq = paths[k][b]
            assert np.all((seq >= 0) & (seq < C - 1)) and len(seq) <= tl[b]
            if not np.isfinite(lp64[b, k]):
                assert lp64[b, k] == -np.inf and len(seq) == 0
                continue
            # the beam sums some of the labeling's alignments: at most its exact probability
            exact = -float(cyctc.ctc_loss(np.array([list(seq) or [0]]), x[b:b + 1, :tl[b]].astype(np.float64),
                                          [len(seq)], None, False, blank_index=-1)[0])
            assert lp64[b, k] <= exact + 1e-5 * (1 + abs(exact))
    # thread count, batch-major layout, padding frames
    xs, _ = scramble_padding(p, np.random.default_rng(p.seed))
    for inputs, tm in ((x.swapaxes(0, 1), True), (x, False), (xs, False)):
        r = cyctc.ctc_beam_search_decoder(inputs, tl, width, top, time_major=tm, num_threads=nt)
        assert same(r.log_probabilities, lp)
        for k in range(top):
            assert same(r.decoded[k].indices, res.decoded[k].indices)
            assert same(r.decoded[k].values, res.decoded[k].values)


@SETTINGS
@given(p=problems(max_B=3, max_T=8, max_C=5, blank=last, dtypes=DTYPES), nt=THREADS, greedy=st.booleans(),
       width=st.integers(1, 6))
def test_keras_decode_properties(p, nt, greedy, width):
    y = np.exp(log_softmax(p.x.astype(np.float64), axis=2)).astype(p.x.dtype)
    tl = p.tl
    decoded, logp = cyctc.ctc_decode(y, tl, greedy=greedy, beam_width=width, top_paths=1, num_threads=1)
    B, T = y.shape[:2]
    assert len(decoded) == 1 and decoded[0].shape == (B, T) and logp.dtype == np.promote_types(y.dtype, np.float32)
    z = np.log(y + y.dtype.type(1e-7))
    if greedy:
        ref = cyctc.ctc_greedy_decoder(z, tl, True, time_major=False)
        assert same(logp, ref.neg_sum_logits)
    else:
        ref = cyctc.ctc_beam_search_decoder(z, tl, width, 1, merge_repeated=True, time_major=False)
        assert same(logp, ref.log_probabilities)
    want = ref.decoded[0].to_dense(default=-1, maxlen=T)
    assert same(decoded[0], want)
    d2, l2 = cyctc.ctc_decode(y, tl[:, None], greedy=greedy, beam_width=width, num_threads=nt)
    assert same(d2[0], decoded[0]) and same(l2, logp)


# ------------------------------------------------------------------------------------------------ ctc_align


@SETTINGS
@given(p=problems(max_T=10), nt=THREADS, normalize=st.booleans(), tm=st.booleans(),
       fmt=st.sampled_from(["dense", "coo", "csr", "list"]))
def test_align_properties(p, nt, normalize, tm, fmt):
    x, lab, ll, tl, blank = p.x, p.labels, p.ll, p.tl, p.blank
    lp = x if normalize else log_softmax(x.astype(np.float64), axis=2).astype(x.dtype)
    res = cyctc.ctc_align(lp, lab, tl, ll, blank, normalize=normalize, num_threads=1)
    B, T = x.shape[:2]
    assert res.path.shape == (B, T) and res.path.dtype == np.int64
    feasible = tl >= p.need
    assert same(res.feasible, feasible)
    logp = log_softmax(x.astype(np.float64), axis=2) if normalize else lp.astype(np.float64)
    # log of the summed path scores exp(sum_t logp[t, path_t]) over all alignments: -ctc_loss + sum_t lse_t
    loss = cyctc.ctc_loss(lab, logp, ll, tl, False, blank_index=blank)
    lse = logsumexp(logp, axis=2)
    for b in range(B):
        path = res.path[b]
        assert np.all(path[tl[b]:] == -1)
        if not feasible[b]:
            assert np.all(path == -1) and res.log_prob[b] == -np.inf
            continue
        assert dref.collapse(path[:tl[b]], blank) == list(lab[b, :ll[b]])
        assert [s[2] for s in res.segments(b, blank)] == list(lab[b, :ll[b]])
        score = logp[b, np.arange(tl[b]), path[:tl[b]]].sum()
        np.testing.assert_allclose(res.log_prob[b], score, rtol=1e-9, atol=1e-9)
        # the best path is one of the alignments: at most the total probability
        total = -loss[b] + lse[b, :tl[b]].sum()
        assert res.log_prob[b] <= total + 1e-9 * (1 + abs(total))
    # label formats, thread count, other layout, padding contents
    rng = np.random.default_rng(p.seed)
    if fmt == "dense":
        labels2, ll2 = lab, ll
    elif fmt == "list":
        labels2, ll2 = [list(lab[b, :ll[b]]) for b in range(B)], None
    else:
        labels2, ll2 = to_sparse(p, fmt, rng), None
    inputs = lp.swapaxes(0, 1) if tm else lp
    r = cyctc.ctc_align(inputs, labels2, tl, ll2, blank - x.shape[2], time_major=tm, normalize=normalize,
                        num_threads=nt)
    assert same(r.path, res.path) and same(r.log_prob, res.log_prob) and same(r.feasible, res.feasible)
    pp = p._replace(x=lp)
    xs, labs = scramble_padding(pp, rng)
    r = cyctc.ctc_align(xs, labs, tl, ll, blank, normalize=normalize, num_threads=nt)
    assert same(r.path, res.path) and same(r.log_prob, res.log_prob)


# ------------------------------------------------------------------------------------------------ labels helper


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(0, 4), L=st.integers(0, 6), hi=st.integers(1, 5))
def test_unique_labels_contract(seed, B, L, hi):
    lab = np.random.default_rng(seed).integers(0, hi, size=(B, L))
    y, idx = cyctc.ctc_unique_labels(lab)
    assert y.shape == idx.shape == lab.shape and idx.dtype == np.int32
    assert np.array_equal(np.take_along_axis(y, idx.astype(np.intp), axis=1), lab)
    for b in range(B):
        distinct = list(dict.fromkeys(lab[b].tolist()))
        assert y[b, :len(distinct)].tolist() == distinct and np.all(y[b, len(distinct):] == 0)
