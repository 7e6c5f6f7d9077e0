"""The chain alignment's posteriors in two halves (src/decode.c, "two halves"): the frames split at a fixed frame, the
first half solved forward first and the second backward first, on two threads when a recording gets two (and the
budget gives each half rows of its own), else one after the other. Whatever the thread count and the plan, the
posteriors (and so the confidences), the band's widening and the status must be the same bits; and they must be the
posteriors of the independent reference (chain_reference.py)."""
import os
import sys

import numpy as np
import pytest

import cyctc
from cyctc import _decode

import chain_reference as cref
from test_chain_speed import GAP, budgets, chain, planted, utterance_tokens

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _segment_synth import make_recording  # noqa: E402

FACTORS = (1.0, 1.5, 4.0, 10.0, 1000.0)  # x the minimum budget: deep shared plans up to one pass with own rows


def recording_tokens(utts):
    toks = [GAP]
    for u in utts:
        toks += [int(v) for v in u] + [GAP]
    return toks


@pytest.fixture
def band():
    old = _decode._chain_band()[0]
    yield lambda w=None: _decode._chain_band(w)
    _decode._chain_band(old)


def same_bits(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.mark.parametrize("speech_gaps", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recording_posteriors_same_bits_for_every_thread_count_and_budget(speech_gaps, seed):
    lp, utts, _ = make_recording(3000 + 377 * seed, speech_gaps=speech_gaps, seed=seed)
    lp = lp.astype(np.float64)
    toks = recording_tokens(utts)
    T, C = lp.shape
    need = -_decode.chain_work_bytes(T, C, len(toks), True, 0.0)
    base = chain(lp, toks, memory_limit=1 << 31, threads=1)
    leaks = _decode._chain_leaks()
    assert base[3][0] == 0 and np.isfinite(base[2][0, :T]).all()
    assert 0 < leaks[0] < 1e-11 and 0 < leaks[1] < 1e-11  # something leaves the band: the sums are tested
    plans = set()
    for f in FACTORS:
        lim = int(need * f)
        for threads in (1, 2):
            got = chain(lp, toks, memory_limit=lim, threads=threads)
            plans.add(_decode._chain_fb_plan())
            same_bits(got, base)
            same_bits(_decode._chain_leaks(), leaks)  # each frame once, in frame order, halves in a fixed order
    # the budgets reached both layouts: halves sharing their deeper rows (deep plans) and halves with their own
    assert any(par == 0 and D >= 2 for D, par in plans), plans
    assert any(par == 1 and D >= 1 for D, par in plans), plans
    assert (0, 1) in plans, plans


@pytest.mark.parametrize("speech_gaps", [False, True])
def test_segment_confidences_same_bits_with_one_and_two_threads(speech_gaps):
    for seed in (4, 5, 6):
        lp, utts, _ = make_recording(7000, speech_gaps=speech_gaps, seed=seed)
        results = []
        for limit in (2 << 20, 16 << 20, None):  # checkpointed (shared rows, then own rows), and the default
            for threads in (1, 2):
                r = cyctc.ctc_segment(lp, utts, num_threads=threads, memory_limit=limit)
                assert np.isfinite(r.confidence).all()
                results.append(r)
        one = results[0]
        for r in results[1:]:
            np.testing.assert_array_equal(r.start, one.start)
            np.testing.assert_array_equal(r.end, one.end)
            assert np.asarray(r.confidence).tobytes() == np.asarray(one.confidence).tobytes()
            for a, b in zip(r.label_confidence, one.label_confidence):
                assert a.tobytes() == b.tobytes()
            assert r.log_prob == one.log_prob


@pytest.mark.parametrize("threads", [1, 2])
def test_halves_match_the_reference(threads):
    """Posteriors against the independent reference, on problems with gaps, repeats and ties, at every layout."""
    for T, C, n_utts, length, penalty, ties in ((900, 7, 3, 80, 0.0, True), (900, 9, 4, 60, 0.5, False)):
        rng = np.random.default_rng(T + C + threads)
        toks = utterance_tokens(rng, C, n_utts, length)
        lp = planted(rng, T, C, toks, ties)
        ref = cref.posteriors(lp, toks, 0, penalty)
        need = -_decode.chain_work_bytes(T, C, len(toks), True, 0.0)
        for f in FACTORS:
            path, _, post, status = chain(lp, toks, memory_limit=int(need * f), penalty=penalty, threads=threads)
            assert status[0] == 0
            np.testing.assert_allclose(post[0, :T], ref[np.arange(T), path[0, :T]], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 8, 33])
def test_short_inputs_around_the_split(T):
    """The halves' meeting frame (T - 1) // 2 at its smallest: empty first half, halves of one frame."""
    rng = np.random.default_rng(T)
    C = 5
    toks = [GAP, 1, 2, GAP] if T >= 2 else [GAP]
    lp = np.log(rng.dirichlet(np.ones(C), size=T))
    ref = cref.posteriors(lp, toks, 0, 0.0)
    base = None
    for lim in budgets(T, C, len(toks), True):
        for threads in (1, 2):
            got = chain(lp, toks, memory_limit=lim, threads=threads)
            assert got[3][0] == 0
            path, post = got[0][0, :T], got[2][0, :T]
            np.testing.assert_allclose(post, ref[np.arange(T), path], rtol=1e-10, atol=1e-13)
            if base is None:
                base = got
            same_bits(got, base)


def test_widening_decided_the_same_with_two_threads(band):
    """A tiny first band leaks in both directions and in both halves: the widening steps, and so the bits, must not
    depend on which half (or thread) stops first."""
    rng = np.random.default_rng(9)
    T, C = 1600, 6
    toks = utterance_tokens(rng, C, 4, 90)
    lp = planted(rng, T, C, toks, False)
    ref = cref.posteriors(lp, toks, 0, 0.0)
    for init in (1, 4, 40):
        band(init)
        runs = []
        for lim in budgets(T, C, len(toks), True):
            for threads in (1, 2):
                runs.append((chain(lp, toks, memory_limit=lim, threads=threads), band()[1], _decode._chain_leaks()))
        widened = runs[0][1]
        assert widened > init
        for got, last, leaks in runs:
            assert last == widened
            same_bits(got, runs[0][0])
            same_bits(leaks, runs[0][2])
        path, post = runs[0][0][0][0, :T], runs[0][0][2][0, :T]
        np.testing.assert_allclose(post, ref[np.arange(T), path], rtol=1e-10, atol=1e-13)


def test_near_flat_input_widened_to_the_whole_row_same_with_two_threads(band):
    """A near-flat input over a long chain: the band widens to the whole row (where no leak stops a half), the same
    bits for both counts."""
    T, C = 2500, 4
    rng = np.random.default_rng(10)
    toks = utterance_tokens(rng, C, 3, 200)
    lp = np.log(rng.dirichlet(np.ones(C) * 50, size=T))
    one = chain(lp, toks, threads=1)
    assert one[3][0] == 0 and band()[1] >= 2 * len(toks) + 1
    two = chain(lp, toks, threads=2)
    same_bits(one, two)


def test_work_bytes_cover_the_halves():
    """The budget is honoured: every plan's bytes stay within it, and the minimum is O(log T) rows."""
    S = 2 * 20000 + 1
    row = 8 * S
    need = -_decode.chain_work_bytes(180000, 32, 20000, True, 0.0)
    assert need < 40 * row
    for lim in (need, need * 1.3, need * 3, 64 << 20, 256 << 20, 1 << 30):
        assert 0 < _decode.chain_work_bytes(180000, 32, 20000, True, float(lim)) <= lim


def test_no_probability_reported_lost_the_same_with_two_threads():
    """A label whose every frame scores exp(-800) (zero in linear space): no path has a probability, the posteriors
    are lost (NaN, status CYCTC_DECODE_POSTERIOR_LOST), for both thread counts and every budget."""
    T, C = 40, 3
    lp = np.zeros((T, C))
    lp[:, 1] = -800.0
    toks = [GAP, 1, GAP, 2, GAP]
    base = chain(lp, toks, threads=1)
    assert base[3][0] != 0 and np.isnan(base[2][0, :T]).all() and base[0][0, 0] >= 0  # the path is still found
    for lim in budgets(T, C, len(toks), True):
        for threads in (1, 2):
            same_bits(chain(lp, toks, memory_limit=lim, threads=threads), base)
