"""The chain alignment's fast paths (issue 19): the tiled first Viterbi pass, the windowed recomputation of
segments whose end state is known, and the posteriors' certified band. Each is checked against the independent
references of chain_reference.py (or against the unrestricted computation), on problems large enough to reach
every path: several chunks of states per tile (S > 1024), few frames per tile (many classes), deep checkpoint
plans (the smallest budgets), exact ties (integer scores), and bands that must widen (flat inputs, a tiny first
band)."""
import os
import sys

import numpy as np
import pytest

import cyctc
from cyctc import _decode
from cyctc.align import run_chain

import chain_reference as cref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _segment_synth import make_recording  # noqa: E402

GAP = -1


def chain(lp, toks, posteriors=True, memory_limit=None, penalty=0.0, threads=1):
    x = np.asarray(lp, dtype=np.float64)[None]
    t = np.array(toks, dtype=np.int32)[None]
    return run_chain("test", x, np.array([lp.shape[0]], np.int32), t, np.array([len(toks)]), 0, False, penalty,
                     posteriors, memory_limit, threads)


def utterance_tokens(rng, C, n_utts, length):
    """Tokens of a recording: gaps around n_utts utterances of about `length` labels (equal neighbours sometimes)."""
    toks = [GAP]
    for _ in range(n_utts):
        lab = rng.integers(1, C, size=int(rng.integers(max(1, length // 2), length + 1)))
        for j in range(1, len(lab), 7):
            lab[j] = lab[j - 1]  # equal neighbours: a blank frame between them
        toks += [int(v) for v in lab] + [GAP]
    return toks


def planted(rng, T, C, toks, tie_scores):
    """Log-probabilities with the tokens' labels planted in order (so that the alignment is feasible and follows
    them), integer scores (many exact ties) when tie_scores."""
    labels = [v for v in toks if v != GAP]
    need = len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))
    assert need <= T
    if tie_scores:
        lp = -rng.integers(1, 6, size=(T, C)).astype(np.float64)
    else:
        lp = np.log(rng.dirichlet(np.ones(C), size=T))
    t = int(rng.integers(0, T - need + 1)) // 2
    extra = T - need - t
    slack = extra / max(1, len(labels))
    prev = None
    for v in labels:
        if v == prev:
            lp[t, 0] = 0.0 if not tie_scores else -1.0
            t += 1
        lp[t, v] += 3.0
        step = int(extra > 0 and rng.random() < slack)
        extra -= step
        t += 1 + step
        prev = v
    return lp


def budgets(T, C, n, posteriors):
    need = -_decode.chain_work_bytes(T, C, n, posteriors, 0.0)
    return [int(need), int(need * 1.7), int(need * 6), 1 << 31]


CASES = [  # T, C, utterances, labels per utterance, penalty, integer scores
    (2600, 7, 5, 220, 0.0, True),
    (2600, 7, 5, 220, 0.7, False),
    (1400, 2100, 4, 240, 0.0, False),  # 15 frames per tile
    (160, 34000, 2, 40, 0.3, True),  # one frame per tile
]


@pytest.mark.parametrize("T, C, n_utts, length, penalty, ties", CASES)
def test_viterbi_equals_reference_for_every_budget(T, C, n_utts, length, penalty, ties):
    rng = np.random.default_rng(T + C)
    toks = utterance_tokens(rng, C, n_utts, length)
    lp = planted(rng, T, C, toks, ties)
    ref_path, ref_score = cref.viterbi(lp, toks, 0, penalty)
    assert ref_path is not None
    results = []
    for lim in budgets(T, C, len(toks), False):
        path, logp, _, status = chain(lp, toks, posteriors=False, memory_limit=lim, penalty=penalty)
        assert status[0] == 0
        np.testing.assert_array_equal(path[0, :T], ref_path, err_msg=f"budget {lim}")
        assert logp[0] == pytest.approx(ref_score, rel=1e-12, abs=1e-9)
        results.append((path.tobytes(), logp.tobytes()))
    assert len(set(results)) == 1  # the same bits for every plan


def test_viterbi_adversarial_ties_small():
    """Small problems (a single chunk), many ties and gaps, every budget, against the reference."""
    rng = np.random.default_rng(19)
    for trial in range(40):
        T, C = int(rng.integers(2, 90)), int(rng.integers(2, 6))
        toks = utterance_tokens(rng, C, int(rng.integers(1, 4)), int(rng.integers(1, 8)))
        if trial % 4 == 0:
            toks = toks[1:]
        lp = -rng.integers(0, 3, size=(T, C)).astype(np.float64)
        ref_path, ref_score = cref.viterbi(lp, toks, 0, 0.0 if trial % 2 else 1.0)
        for lim in budgets(T, C, len(toks), False):
            path, logp, _, status = chain(lp, toks, posteriors=False, memory_limit=lim,
                                          penalty=0.0 if trial % 2 else 1.0)
            if ref_path is None:
                assert status[0] == 1
                continue
            assert status[0] == 0
            np.testing.assert_array_equal(path[0, :T], ref_path)
            assert logp[0] == pytest.approx(ref_score, rel=1e-12, abs=1e-12)


@pytest.fixture
def band():
    """The posteriors' first band half-width, restored after the test."""
    old = _decode._chain_band()[0]
    yield lambda w=None: _decode._chain_band(w)
    _decode._chain_band(old)


def test_band_widens_from_a_tiny_band(band):
    rng = np.random.default_rng(7)
    T, C = 700, 6
    toks = utterance_tokens(rng, C, 3, 60)
    lp = planted(rng, T, C, toks, False)
    ref = cref.posteriors(lp, toks, 0, 0.0)
    for init in (1, 4, 40):
        band(init)
        for lim in budgets(T, C, len(toks), True):
            path, _, post, status = chain(lp, toks, memory_limit=lim)
            assert status[0] == 0
            assert band()[1] > init  # it had to widen
            np.testing.assert_allclose(post[0, :T], ref[np.arange(T), path[0, :T]], rtol=1e-10, atol=1e-13)


def test_band_widens_on_a_flat_input(band):
    """Every class equally likely: the posterior mass spreads over far more than 512 states."""
    T, C = 1500, 5
    rng = np.random.default_rng(8)
    toks = utterance_tokens(rng, C, 4, 250)
    S = 2 * len(toks) + 1
    assert S > 2 * 512
    lp = np.full((T, C), -np.log(C))
    ref = cref.posteriors(lp, toks, 0, 0.0)
    path, _, post, status = chain(lp, toks, memory_limit=budgets(T, C, len(toks), True)[1])
    assert status[0] == 0
    assert band()[1] > 512
    np.testing.assert_allclose(post[0, :T], ref[np.arange(T), path[0, :T]], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("speech_gaps", [False, True])
def test_band_confidences_equal_full_width(band, speech_gaps):
    """The synthetic recordings: the band (+-512, not widened) gives the confidences of the whole-row recursion."""
    lp, utts, _ = make_recording(6000, speech_gaps=speech_gaps, seed=3)
    band(1 << 30)  # the whole row from the start
    full = cyctc.ctc_segment(lp, utts, num_threads=1, memory_limit=4 << 20)
    assert band()[1] >= 1 << 30
    band(512)
    got = cyctc.ctc_segment(lp, utts, num_threads=1, memory_limit=4 << 20)
    assert band()[1] == 512
    np.testing.assert_array_equal(got.start, full.start)
    np.testing.assert_array_equal(got.end, full.end)
    np.testing.assert_allclose(got.confidence, full.confidence, rtol=1e-10, atol=0)
    for a, b in zip(got.label_confidence, full.label_confidence):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)


def test_band_posteriors_equal_reference_on_a_recording(band):
    lp, utts, _ = make_recording(1500, seed=5)
    toks = [GAP]
    for u in utts:
        toks += [int(v) for v in u] + [GAP]
    lp64 = lp.astype(np.float64)
    ref = cref.posteriors(lp64, toks, 0, 0.0)
    band(8)
    path, _, post, status = chain(lp64, toks, memory_limit=budgets(1500, lp.shape[1], len(toks), True)[0])
    assert status[0] == 0
    T = lp.shape[0]
    np.testing.assert_allclose(post[0, :T], ref[np.arange(T), path[0, :T]], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("T, C, n_utts, length, penalty, ties", CASES[:3])
def test_two_threads_give_the_same_bits(T, C, n_utts, length, penalty, ties):
    """One recording, num_threads 2: the tiled first pass runs its chunks on two threads (when OpenMP is there)."""
    rng = np.random.default_rng(T + C + 1)
    toks = utterance_tokens(rng, C, n_utts, length)
    lp = planted(rng, T, C, toks, ties)
    for lim in budgets(T, C, len(toks), True)[:3]:
        one = chain(lp, toks, memory_limit=lim, penalty=penalty, threads=1)
        two = chain(lp, toks, memory_limit=lim, penalty=penalty, threads=2)
        assert one[3][0] == 0
        for a, b in zip(one, two):
            assert a.tobytes() == b.tobytes()


def test_two_threads_segment_a_recording():
    lp, utts, _ = make_recording(8000, speech_gaps=True, seed=11)
    one = cyctc.ctc_segment(lp, utts, num_threads=1, memory_limit=8 << 20)
    two = cyctc.ctc_segment(lp, utts, num_threads=2, memory_limit=8 << 20)
    np.testing.assert_array_equal(one.start, two.start)
    np.testing.assert_array_equal(one.end, two.end)
    assert np.asarray(one.confidence).tobytes() == np.asarray(two.confidence).tobytes()
