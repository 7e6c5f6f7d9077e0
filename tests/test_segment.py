"""Long-audio alignment: the chain kernel (ctc_align with partial transcripts and wildcards, ctc_segment) against
independent references (brute force over frame labelings, a numpy max-product Viterbi and log-space
forward-backward), identical results for every memory budget, boundaries and confidence on synthetic recordings,
the outputs and bad inputs."""
import itertools
import os
import re
import sys
import tracemalloc

import numpy as np
import pytest
from scipy.special import log_softmax

import cyctc
from cyctc import _decode, ctc_align, ctc_segment
from cyctc.align import run_chain
from cyctc.segment import SegmentResult, ctm_lines, segments_lines

import chain_reference as cref
import decode_reference as dref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _segment_synth import make_recording  # noqa: E402

GAP = -1


def tokens_of(labels, partial=False, gaps_at=()):
    """Tokens of ctc_align(partial, wildcard at positions ``gaps_at``)."""
    toks = []
    for j, v in enumerate(labels):
        if j in gaps_at and (not toks or toks[-1] != GAP):
            toks.append(GAP)
        toks.append(int(v))
    if partial:
        toks = [GAP] + toks + [GAP]
    return [v for i, v in enumerate(toks) if not (v == GAP and i and toks[i - 1] == GAP)]


def state_classes(states, tokens, blank):
    return [blank if s % 2 == 0 else (-2 if tokens[s // 2] == GAP else tokens[s // 2]) for s in states]


# ------------------------------------------------------------------------------------------- references checked
def brute_force(lp, tokens, blank, penalty):
    """(best score, best labeling) over every frame labeling (a class, or 'U' untranscribed) of the tokens' pattern:
    each label a run of its class, blanks between (at least one between equal labels unless a gap frame is), a gap
    token any number of untranscribed frames with blanks around."""
    T, C = lp.shape
    ch = lambda c: chr(ord("a") + c)  # noqa: E731
    b = re.escape(ch(blank))
    junction = f"{b}*(?:U+{b}*)?"
    pat, prev = "", None
    pending_gap = False
    pat = ""
    for tok in tokens:
        if tok == GAP:
            pending_gap = True
            continue
        if prev is None:
            pat += junction if pending_gap else f"{b}*"
        elif pending_gap:
            pat += f"(?:{b}+|{b}*U+{b}*)" if tok == prev else junction
        else:
            pat += f"{b}+" if tok == prev else f"{b}*"
        pat += re.escape(ch(tok)) + "+"
        prev, pending_gap = tok, False
    pat += junction if (pending_gap or prev is None and tokens) else f"{b}*"
    rx = re.compile(pat)
    best, arg, second = -np.inf, None, -np.inf
    gap_score = lp.max(axis=1) - penalty
    for lab in itertools.product(list(range(C)) + ["U"], repeat=T):
        if not rx.fullmatch("".join("U" if v == "U" else ch(v) for v in lab)):
            continue
        sc = sum(gap_score[t] if v == "U" else lp[t, v] for t, v in enumerate(lab))
        if sc > best:
            best, arg, second = sc, lab, best
        elif sc > second:
            second = sc
    return best, arg, second


def test_reference_viterbi_is_ctc_without_gaps():
    rng = np.random.default_rng(1)
    for _ in range(30):
        T, C = int(rng.integers(1, 6)), 3
        L = int(rng.integers(0, 3))
        labels = rng.integers(1, C, size=L)
        lp = log_softmax(rng.normal(size=(T, C)) * 2, axis=1)
        best, arg = dref.best_alignment(lp, labels, 0)
        path, score = cref.viterbi(lp, list(labels), 0)
        if arg is None:
            assert path is None
        else:
            assert state_classes(path, list(labels), 0) == list(arg)
            np.testing.assert_allclose(score, best, rtol=1e-12)


def test_reference_viterbi_matches_brute_force_with_gaps():
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(60):
        T, C = int(rng.integers(1, 6)), 3
        L = int(rng.integers(0, 3))
        labels = rng.integers(1, C, size=L)
        toks = tokens_of(labels, partial=bool(rng.integers(2)), gaps_at={int(rng.integers(0, 3))})
        lp = log_softmax(rng.normal(size=(T, C)) * 2, axis=1)
        best, arg, second = brute_force(lp, toks, 0, 0.3)
        path, score = cref.viterbi(lp, toks, 0, 0.3)
        if arg is None:
            assert path is None
            continue
        checked += 1
        np.testing.assert_allclose(score, best, rtol=1e-12)
        if second < best - 1e-9:  # an untranscribed frame scores the best class minus the penalty: ties happen
            got = ["U" if c == -2 else c for c in state_classes(path, toks, 0)]
            assert got == list(arg), (toks, lp)
    assert checked > 30


# ----------------------------------------------------------------------------------------- the kernel, exactly
def random_problem(rng, T, C, L, blank=0):
    labels = rng.choice([c for c in range(C) if c != blank], size=L)
    if L >= 2 and rng.random() < 0.3:
        labels[1] = labels[0]
    lp = log_softmax(rng.normal(size=(T, C)) * 2, axis=1)
    return lp, labels


@pytest.mark.parametrize("partial", [False, True])
def test_align_with_gaps_equals_reference(partial):
    rng = np.random.default_rng(3)
    for trial in range(25):
        T, C, L = int(rng.integers(1, 40)), 5, int(rng.integers(0, 8))
        lp, labels = random_problem(rng, T, C, L)
        lab = labels.copy()
        gaps = set()
        if L >= 2 and trial % 2:
            gaps = {int(rng.integers(1, L))}
            lab = np.insert(labels, sorted(gaps)[0], -1)
        toks = tokens_of(labels, partial, gaps)
        path, score = cref.viterbi(lp, toks, 0, 0.25)
        res = ctc_align(lp[None], [lab], wildcard=-1 if gaps else None, partial=partial, untranscribed_penalty=0.25)
        if path is None:
            assert not res.feasible[0]
            continue
        assert res.feasible[0]
        assert res.path[0].tolist() == state_classes(path, toks, 0)
        np.testing.assert_allclose(res.log_prob[0], score, rtol=1e-12, atol=1e-12)


def chain(lp, toks, posteriors=True, memory_limit=None, penalty=0.0, threads=1):
    x = np.asarray(lp, dtype=np.float64)[None]
    t = np.array(toks if toks else [0], dtype=np.int32)[None]
    return run_chain("test", x, np.array([lp.shape[0]], np.int32), t, np.array([len(toks)]), 0, False, penalty,
                     posteriors, memory_limit, threads)


def test_posteriors_equal_log_space_reference():
    rng = np.random.default_rng(4)
    for trial in range(20):
        T, C, L = int(rng.integers(2, 50)), 6, int(rng.integers(1, 8))
        lp, labels = random_problem(rng, T, C, L)
        toks = tokens_of(labels, partial=trial % 2 == 0, gaps_at={int(rng.integers(0, L))} if trial % 3 == 0 else ())
        path, logp, post, status = chain(lp, toks, penalty=0.5 * (trial % 2))
        if status[0] == 1:
            continue
        assert status[0] == 0
        ref = cref.posteriors(lp, toks, 0, 0.5 * (trial % 2))
        np.testing.assert_allclose(post[0, :T], ref[np.arange(T), path[0, :T]], rtol=1e-9, atol=1e-12)


def test_every_budget_gives_the_same_bits():
    """Budgets from the minimum (many levels of checkpoints, leaves of one frame) up to one pass."""
    rng = np.random.default_rng(5)
    for T, L in [(1, 0), (2, 1), (37, 5), (120, 12), (257, 30)]:
        lp, labels = random_problem(rng, T, 6, L)
        toks = tokens_of(labels, partial=True, gaps_at={L // 2} if L > 2 else ())
        base = chain(lp, toks, memory_limit=1 << 30)
        need = -_decode.chain_work_bytes(T, 6, len(toks), True, 0.0)
        for lim in sorted({int(need), int(need) + 1, int(need * 1.3), int(need * 2), int(need * 5), int(need * 20),
                           int(need * 100)}):
            got = chain(lp, toks, memory_limit=lim)
            for a, b in zip(got, base):
                assert a.tobytes() == b.tobytes(), (T, L, lim)
            assert 0 < _decode.chain_work_bytes(T, 6, len(toks), True, float(lim)) <= lim
        with pytest.raises(MemoryError, match=f"minimum work space this call needs, {int(np.ceil(need))} bytes"):
            chain(lp, toks, memory_limit=int(need) - 1)


def test_plans_stay_within_the_budget_and_reach_deep_levels():
    # T = 180000 frames, S = 100001 states: one pass would be 18 GB of back-pointers
    one_pass = 180000 * 100001
    for post in (False, True):
        need = -_decode.chain_work_bytes(180000, 32, 50000, post, 0.0)
        for lim in (need, need * 1.5, 64 << 20, 256 << 20, 1 << 30):
            if lim >= need:
                used = _decode.chain_work_bytes(180000, 32, 50000, post, float(lim))
                assert 0 < used <= lim
        assert need < 40 * 8 * 100001  # O(log T) rows at the minimum
    assert _decode.chain_work_bytes(180000, 32, 50000, False, float(1 << 30)) < one_pass / 50


def test_ctc_align_memory_limit_identical_and_threads_counted():
    rng = np.random.default_rng(6)
    B, T, C = 6, 300, 8
    lp = log_softmax(rng.normal(size=(B, T, C)), axis=2)
    labels = rng.integers(1, C, size=(B, 40))
    base = ctc_align(lp, labels, num_threads=1)
    need = -_decode.chain_work_bytes(T, C, 40, False, 0.0)
    for lim, nt in ((int(need), 1), (int(need * 1.5), 2), (int(need * 2.5), 3), (None, 2)):
        res = ctc_align(lp, labels, memory_limit=lim, num_threads=nt)
        assert res.path.tobytes() == base.path.tobytes() and res.log_prob.tobytes() == base.log_prob.tobytes()
    with pytest.raises(MemoryError, match="memory_limit of 100 bytes"):
        ctc_align(lp, labels, memory_limit=100)
    with pytest.raises(ValueError, match="memory_limit"):
        ctc_align(lp, labels, memory_limit=0)
    with pytest.raises(TypeError, match="memory_limit"):
        ctc_align(lp, labels, memory_limit=1.5)


def test_memory_limit_from_environment(monkeypatch):
    rng = np.random.default_rng(7)
    lp = log_softmax(rng.normal(size=(1, 200, 5)), axis=2)
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "1K")
    with pytest.raises(MemoryError, match="CYCTC_MEMORY_LIMIT"):
        ctc_align(lp, [[1, 2, 3]])
    monkeypatch.setenv("CYCTC_MEMORY_LIMIT", "1M")
    assert ctc_align(lp, [[1, 2, 3]]).feasible[0]


def test_memmap_is_read_in_place(tmp_path):
    rng = np.random.default_rng(8)
    T, C = 20000, 64
    mm = np.lib.format.open_memmap(tmp_path / "lp.npy", mode="w+", dtype=np.float32, shape=(1, T, C))
    mm[:] = log_softmax(rng.normal(size=(1, T, C)), axis=2)
    mm.flush()
    ro = np.load(tmp_path / "lp.npy", mmap_mode="r")
    labels = [rng.integers(1, C, size=500)]
    ref = ctc_align(np.array(ro), labels)
    tracemalloc.start()
    res = ctc_align(ro, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < ro.nbytes / 4  # the outputs (paths: about 0.4 MB), never a copy of the 5 MB input
    assert res.path.tobytes() == ref.path.tobytes()


# ------------------------------------------------------------------------------------------------ partial texts
def test_partial_transcript_skips_untranscribed_ends():
    lp, utts, truth = make_recording(1500, speech_gaps=True, seed=3)
    k = len(utts) // 2
    res = ctc_align(lp[None], [utts[k]], partial=True)
    segs = res.segments(0)
    assert [s[2] for s in segs] == utts[k].tolist()
    assert abs(segs[0][0] - truth["start"][k]) <= 2 and abs(segs[-1][1] - truth["end"][k]) <= 2
    assert (res.path[0, :truth["start"][k] - 5] == -2).mean() > 0.5  # the audio before is untranscribed
    plain = ctc_align(lp[None], [utts[k]])
    assert plain.log_prob[0] < res.log_prob[0] - 100  # without partial, the text is stretched over everything


def test_wildcard_matches_a_stretch_inside():
    lp, utts, truth = make_recording(1500, speech_gaps=True, seed=4)
    lab = np.concatenate([utts[0], [-1], utts[2]])
    res = ctc_align(lp[None], [lab], partial=True, wildcard=-1)
    segs = res.segments(0)
    assert [s[2] for s in segs] == utts[0].tolist() + utts[2].tolist()
    first2 = segs[len(utts[0])][0]
    assert abs(first2 - truth["start"][2]) <= 2
    with pytest.raises(ValueError, match="wildcard"):
        ctc_align(lp[None], [lab], wildcard=3)


# -------------------------------------------------------------------------------------------------- ctc_segment
@pytest.mark.parametrize("speech_gaps", [False, True])
def test_segment_boundaries_on_synthetic_recordings(speech_gaps):
    n_ok = n = 0
    for seed in range(3):
        lp, utts, truth = make_recording(4000, speech_gaps=speech_gaps, seed=seed)
        res = ctc_segment(lp, utts)
        assert isinstance(res, SegmentResult) and res.feasible
        n += len(utts)
        n_ok += int(np.sum((np.abs(res.start - truth["start"]) <= 2) & (np.abs(res.end - truth["end"]) <= 2)))
        for i in range(len(utts)):
            assert res.label_start[i][0] == res.start[i] and res.label_end[i][-1] == res.end[i]
            assert np.all(res.label_start[i] < res.label_end[i])
            assert np.all(np.abs(res.label_start[i] - truth["label_start"][i]) <= 2)
        assert res.confidence.min() > 0.5
    assert n_ok >= 0.99 * n


@pytest.mark.parametrize("speech_gaps", [False, True])
def test_confidence_separates_wrong_texts(speech_gaps):
    rng = np.random.default_rng(9)
    for seed in range(3):
        lp, utts, truth = make_recording(4000, speech_gaps=speech_gaps, seed=10 + seed)
        true_conf = ctc_segment(lp, utts).confidence
        bad = [u.copy() for u in utts]
        wrong = list(range(1, len(utts), 4))
        for i in wrong:
            bad[i] = rng.integers(1, 32, size=len(utts[i]))
        conf = ctc_segment(lp, bad).confidence
        assert conf[wrong].max() < true_conf.min(), (conf[wrong], true_conf.min())
        assert conf[wrong].max() < 0.5


def test_segment_budgets_and_batches_agree():
    lp, utts, _ = make_recording(1200, seed=5)
    lp2, utts2, _ = make_recording(900, seed=6)
    base = ctc_segment(lp, utts)
    need = -_decode.chain_work_bytes(1200, 32, sum(len(u) + 1 for u in utts) + 1, True, 0.0)
    for lim in (int(need), int(need * 3)):
        got = ctc_segment(lp, utts, memory_limit=lim)
        assert got.start.tobytes() == base.start.tobytes() and got.confidence.tobytes() == base.confidence.tobytes()
    x = np.zeros((2, 1200, 32), np.float32)
    x[0], x[1, :900] = lp, lp2
    both = ctc_segment(x, [utts, utts2], input_length=[1200, 900], num_threads=2)
    single2 = ctc_segment(lp2, utts2)
    assert isinstance(both, list) and len(both) == 2
    for a, b in ((both[0], base), (both[1], single2)):
        assert a.start.tolist() == b.start.tolist() and a.end.tolist() == b.end.tolist()
        assert a.confidence.tobytes() == b.confidence.tobytes()
    one = ctc_segment(lp[None], utts)  # (1, T, C) with one transcript: one recording
    assert isinstance(one, SegmentResult) and one.start.tolist() == base.start.tolist()
    tm = ctc_segment(np.ascontiguousarray(x.swapaxes(0, 1)), [utts, utts2], input_length=[1200, 900], time_major=True)
    assert [r.start.tolist() for r in tm] == [r.start.tolist() for r in both]


def test_segment_infeasible_and_nan():
    lp = log_softmax(np.random.default_rng(1).normal(size=(10, 5)), axis=1)
    res = ctc_segment(lp, [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3]])
    assert not res.feasible and np.all(res.start == -1) and np.isnan(res.confidence).all()
    lp[3, 2] = np.nan
    res = ctc_segment(lp, [[1]])
    assert not res.feasible and np.isnan(res.log_prob)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(utterances=[[1, 2], []]), ValueError, r"utterances\[1\] is empty"),
    (dict(utterances=[[1, 0]]), ValueError, r"utterances\[0\]\[1\] equals the blank"),
    (dict(utterances=[[1, 9]]), ValueError, r"utterances\[0\]\[1\] = 9 is outside"),
    (dict(utterances=[[1.5]]), TypeError, r"utterances\[0\] must hold integers"),
    (dict(utterances=5), TypeError, "utterances must be a list"),
    (dict(log_probs=np.zeros((2, 3, 4, 5))), ValueError, "log_probs must have shape"),
    (dict(log_probs=np.zeros((20, 5), int)), TypeError, "log_probs"),
    (dict(untranscribed_penalty=-1), ValueError, "untranscribed_penalty"),
    (dict(untranscribed_penalty="x"), TypeError, "untranscribed_penalty"),
    (dict(memory_limit=-5), ValueError, "memory_limit"),
    (dict(blank_index=7), ValueError, "blank_index"),
    (dict(num_threads=0), ValueError, "num_threads"),
])
def test_segment_bad_inputs(kw, exc, match):
    call = dict(log_probs=np.log(np.full((20, 5), 0.2)), utterances=[[1, 2], [3]])
    call.update(kw)
    with pytest.raises(exc, match=match):
        ctc_segment(**call)


def test_segment_batch_needs_one_transcript_per_recording():
    with pytest.raises(ValueError, match="list of 2 transcripts"):
        ctc_segment(np.zeros((2, 10, 4)), [[[1]], [[1]], [[1]]])


# ------------------------------------------------------------------------------------------------------ outputs
def test_segments_and_ctm_lines():
    r = SegmentResult(np.array([3, 10]), np.array([7, 12]), np.array([0.9, 0.5]),
                      [np.array([3, 5]), np.array([10])], [np.array([4, 7]), np.array([12])],
                      [np.array([0.95, 0.9]), np.array([0.5])], -3.0, True)
    assert segments_lines(r, ["a", "b"], "rec", 0.02) == ["a rec 0.06 0.14", "b rec 0.20 0.24"]
    assert ctm_lines(r, ["a", "b"], [[4, 5], [6]], 0.02, symbols={4: "x"}) == [
        "a 1 0.00 0.02 x 0.9500", "a 1 0.04 0.04 5 0.9000", "b 1 0.00 0.04 6 0.5000"]
    assert ctm_lines(r, ["a", "b"], [[4, 5], [6]], 0.02, recording_times=True)[2] == "b 1 0.20 0.04 6 0.5000"
    with pytest.raises(ValueError, match="utterance_ids"):
        segments_lines(r, ["a"], "rec")
    with pytest.raises(ValueError, match="not a valid id"):
        segments_lines(r, ["a", "b c"], "rec")
    with pytest.raises(ValueError, match="frame_shift"):
        segments_lines(r, ["a", "b"], "rec", 0)
    for bad in (np.inf, np.nan, 1e-9, "0.01", True):  # 1e-9 once wrote every time as 0.00
        with pytest.raises(ValueError, match="frame_shift"):
            segments_lines(r, ["a", "b"], "rec", bad)
        with pytest.raises(ValueError, match="frame_shift"):
            ctm_lines(r, ["a", "b"], [[4, 5], [6]], bad)
    assert segments_lines(r, ["a", "b"], "rec", np.float32(0.5))[0] == "a rec 1.50 3.50"
    assert segments_lines(r._replace(feasible=False), ["a", "b"], "rec") == []


def test_public_name():
    assert cyctc.ctc_segment is ctc_segment and "ctc_segment" in cyctc.__all__
