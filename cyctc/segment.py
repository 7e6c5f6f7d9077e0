"""Long-audio segmentation: find each utterance of a transcript in a long recording, with confidence, and write the
result as Kaldi ``segments`` and CTM.

Shapes: T frames, C classes (blank included), N utterances, L_i labels of utterance i.

The graph (one chain, the same kernel as :func:`cyctc.ctc_align`): the utterances in order, each as CTC (blank,
l1, blank, ..., lL, blank), with an *untranscribed* state before the first, between every two and after the last.
An untranscribed state has a self-loop and may take any number of frames, zero included; each frame it takes
scores the frame's best log-probability over all classes (the blank included) minus ``untranscribed_penalty``.
So audio the text does not contain (silence, music, other speech) costs nothing beyond the penalty, and each
utterance lands where its labels fit best, in order. The result is the best path over the whole recording: exact,
never windowed.
"""
from typing import List, NamedTuple
import warnings

import numpy as np

from . import _decode_args as args
from .align import _INFEASIBLE, _NONFINITE, _OK, _POSTERIOR_LOST, GAP, run_chain
from ._memory import resolve_memory_limit
from ._threads import resolve_num_threads

__all__ = ["SegmentResult", "ctc_segment", "segments_lines", "ctm_lines"]


class SegmentResult(NamedTuple):
    """Where each utterance of one recording lies (:func:`ctc_segment`).

    start, end : int64 (N,)
        The first frame of the utterance's first label, and one past the last frame of its last label.
    confidence : float64 (N,)
        The smallest ``label_confidence`` of the utterance, in [0, 1].
    label_start, label_end : list of N int64 (L_i,) arrays
        The frames of each label: ``[label_start[i][j], label_end[i][j])``.
    label_confidence : list of N float64 (L_i,) arrays
        For each label, the posterior probability that the recording is emitting that label at the frame (of
        those the best path gives it) where it is most certain: ``max_t P(state of label j at frame t | audio)``,
        over all paths of the graph weighted by their probability.
    log_prob : float
        The best path's score (untranscribed frames as documented in the module).
    feasible : bool
        False when no path exists (fewer frames than the labels need, or zero-probability frames everywhere), or
        the recording holds NaN (then ``log_prob`` is NaN): frames are -1 and confidences NaN.
    """

    start: np.ndarray
    end: np.ndarray
    confidence: np.ndarray
    label_start: List[np.ndarray]
    label_end: List[np.ndarray]
    label_confidence: List[np.ndarray]
    log_prob: float
    feasible: bool


def _is_transcript(u):
    """True when ``u`` looks like one transcript (a sequence of label sequences) rather than one utterance."""
    if isinstance(u, np.ndarray):
        return u.dtype == object or u.ndim == 2
    if not isinstance(u, (list, tuple)):
        return False
    return len(u) == 0 or all(isinstance(v, (list, tuple, np.ndarray)) for v in u)


def _utterances(utts, C, blank, name):
    """A list of int64 label arrays, each non-empty, classes in [0, C) and never the blank."""
    if isinstance(utts, np.ndarray) and utts.dtype != object and utts.ndim == 2:
        utts = list(utts)
    if not isinstance(utts, (list, tuple)) and not (isinstance(utts, np.ndarray) and utts.dtype == object):
        raise TypeError(f"{name} must be a list of utterances (each a sequence of label classes), got "
                        f"{type(utts).__name__}")
    out = []
    for i, u in enumerate(utts):
        try:
            a = np.asarray(args.host(u))
        except (ValueError, TypeError):
            raise ValueError(f"{name}[{i}] must be a one-dimensional sequence of integers, got {u!r}") from None
        if a.ndim != 1:
            raise ValueError(f"{name}[{i}] must be a one-dimensional sequence of integers, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"{name}[{i}] is empty: an utterance needs at least one label to be found")
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name}[{i}] must hold integers, got dtype {a.dtype}")
        bad = np.flatnonzero((a < 0) | (a >= C))
        if bad.size:
            raise ValueError(f"{name}[{i}][{bad[0]}] = {a[bad[0]]} is outside the classes [0, {C})")
        bad = np.flatnonzero(a == blank)
        if bad.size:
            raise ValueError(f"{name}[{i}][{bad[0]}] equals the blank class {blank}")
        out.append(a.astype(np.int64))
    return out


def ctc_segment(log_probs, utterances, blank_index=0, *, input_length=None, time_major=False, normalize=False,
                num_threads=None, memory_limit=None, untranscribed_penalty=0.0):
    """Find each utterance of a transcript in a long recording: exact, with confidence, within a memory budget.

    Parameters
    ----------
    log_probs : float16/32/64 (T, C) or (1, T, C) for one recording; (B, T, C) for B recordings
        Per-frame log-probabilities (``normalize=True``: logits, log-softmax applied first). ``time_major``:
        (T, B, C). A float32/float64 array (an ``np.memmap`` too) is read in place, not copied.
    utterances : list of N label sequences (one recording), or a list of B such lists (several)
        The transcript in order, each utterance a non-empty list or 1-D int array of classes in [0, C), never the
        blank. Audio before, between and after them may be untranscribed.
    blank_index : int
        The blank class; negative counts from C.
    input_length : int (B,) or None, keyword-only
        Valid frames of each recording (several recordings of different lengths); None: all T.
    time_major, normalize : bool, keyword-only
    num_threads : int or None, keyword-only
        Recordings are aligned in parallel (a single recording takes two threads in its Viterbi's first pass and
        in its posteriors' two halves); None: all usable cores. The result never depends on it.
    memory_limit : int or None, keyword-only
        Bytes of work space for the call (None: ``CYCTC_MEMORY_LIMIT``, else 1 GiB), shared by the recordings in
        flight. The Viterbi and the posteriors keep checkpoint rows and recompute between them; results are the
        same for every budget. Below the minimum: ``MemoryError`` naming it.
    untranscribed_penalty : float >= 0, keyword-only
        What each untranscribed frame costs below the frame's best class (default 0: text and untranscribed audio
        compete on the labels alone).

    Returns
    -------
    SegmentResult, or a list of B of them when several recordings are given
        See :class:`SegmentResult`. Several recordings are recognised by ``log_probs`` being (B, T, C) with
        ``utterances`` a list of B transcripts (a list of lists of sequences); (1, T, C) with a list of label
        sequences is one recording.

    Notes
    -----
    Work space per recording in flight: the Viterbi's back-pointers (T * S bytes) and the posteriors' forward rows
    (T rows of 8 * S bytes, S = 2 * (L + N) + 1 states, L labels in all) are both checkpointed, about sqrt(T) rows
    each (an hour at 50 frames/s with S = 36000 takes about 240 MB), fewer when ``memory_limit`` requires. The two
    phases run one after the other; the budget bounds each.
    """
    tm = args.as_flag(time_major, "time_major")
    x_in = args.host(log_probs)
    if args.is_sparse(x_in):
        raise TypeError(f"log_probs must be a dense array of floats, got {type(x_in).__name__}")
    ndim = x_in.ndim if isinstance(x_in, np.ndarray) else None
    if ndim is None:
        try:
            x_in = np.asarray(x_in)
        except Exception as e:
            raise TypeError(f"log_probs must be an array of floats: {e}") from None
        ndim = x_in.ndim
    if x_in.dtype.kind != "f":  # (before the rank: None or a list of strings is the wrong kind of thing)
        raise TypeError(f"log_probs must hold floating-point values (float16/32/64), got dtype {x_in.dtype}")
    if ndim == 2:
        x_in = x_in[None] if not tm else x_in[:, None]
    elif ndim != 3:
        raise ValueError(f"log_probs must have shape (T, C), (1, T, C) or (B, T, C), got {tuple(x_in.shape)}")
    x, _ = args.float_frames(x_in, "log_probs", tm)
    B, T, C = x.shape
    blank = args.blank_class(blank_index, C, default=0)
    batched = ndim == 3 and (B != 1 or (isinstance(utterances, (list, tuple)) and len(utterances) == 1 and
                                        _is_transcript(utterances[0])))
    if batched:
        if not isinstance(utterances, (list, tuple)) or len(utterances) != B:
            raise ValueError(f"utterances must be a list of {B} transcripts (one per recording in log_probs), got "
                             f"{len(utterances) if isinstance(utterances, (list, tuple)) else type(utterances).__name__}")
        transcripts = [_utterances(u, C, blank, f"utterances[{b}]") for b, u in enumerate(utterances)]
    else:
        transcripts = [_utterances(utterances, C, blank, "utterances")]
    length = args.lengths(input_length, "input_length", B, T)
    normalize = args.as_flag(normalize, "normalize")
    gap_penalty = args.penalty(untranscribed_penalty)
    resolve_num_threads(num_threads)
    resolve_memory_limit(memory_limit)
    if B == 0:  # no recordings (an empty batch): nothing to align
        return []

    # tokens: GAP u1 GAP u2 ... GAP uN GAP; token k is state 2k + 1
    n = np.array([sum(len(u) + 1 for u in tr) + 1 for tr in transcripts], dtype=np.int64)
    tokens = np.full((B, max(int(n.max()), 1)), GAP, dtype=np.int32)
    label_tokens = []
    for b, tr in enumerate(transcripts):
        pos, idx = 1, []
        for u in tr:
            tokens[b, pos:pos + len(u)] = u
            idx.append(np.arange(pos, pos + len(u)))
            pos += len(u) + 1
        label_tokens.append(idx)
    path, log_prob, post, status = run_chain("ctc_segment", x, length, tokens, n, blank, normalize, gap_penalty,
                                             True, memory_limit, num_threads)
    if (status == _POSTERIOR_LOST).any():
        warnings.warn("ctc_segment: the posteriors of some recording span more than a double's range (confidence "
                      "NaN there); the boundaries are exact", RuntimeWarning, stacklevel=2)
    results = [_result(path[b, :length[b]], post[b, :length[b]], label_tokens[b], float(log_prob[b]), int(status[b]))
               for b in range(B)]
    return results if batched else results[0]


def _result(path, post, label_tokens, log_prob, status):
    N = len(label_tokens)
    if status not in (_OK, _POSTERIOR_LOST):
        neg = np.full(N, -1, dtype=np.int64)
        return SegmentResult(neg, neg.copy(), np.full(N, np.nan), [np.full(len(k), -1, np.int64) for k in label_tokens],
                             [np.full(len(k), -1, np.int64) for k in label_tokens],
                             [np.full(len(k), np.nan) for k in label_tokens], log_prob, False)
    if N == 0:
        e = np.zeros(0, dtype=np.int64)
        return SegmentResult(e, e.copy(), np.zeros(0), [], [], [], log_prob, True)
    states = 2 * np.concatenate(label_tokens) + 1
    # the path's states never decrease, and every label state is visited: its frames are one run
    ls = np.searchsorted(path, states, side="left").astype(np.int64)
    le = np.searchsorted(path, states, side="right").astype(np.int64)
    on_label = np.where((path % 2 == 1) & np.isin(path, states), post, -np.inf)
    lc = np.maximum.reduceat(on_label, ls) if path.size else np.zeros(0)
    lc = np.clip(lc, 0.0, 1.0) if status == _OK else np.full(states.size, np.nan)
    cuts = np.cumsum([0] + [len(k) for k in label_tokens])
    conf = np.minimum.reduceat(lc, cuts[:-1])
    split = lambda a: [a[cuts[i]:cuts[i + 1]] for i in range(N)]  # noqa: E731
    return SegmentResult(ls[cuts[:-1]], le[cuts[1:] - 1], conf, split(ls), split(le), split(lc), log_prob, True)


# ------------------------------------------------------------------------------------------------------ outputs
def _check_ids(ids, n, name):
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{name} must name each of the {n} utterances, got {len(ids)}")
    for i in ids:
        if not i or any(c.isspace() for c in i):
            raise ValueError(f"{name}: {i!r} is not a valid id (non-empty, no whitespace)")
    return ids


def frame_shift_problem(frame_shift, name="frame_shift"):
    """Why ``frame_shift`` cannot be written as times (a message naming ``name``), or None when it can: a finite
    number of seconds, at least 1e-6 (times are written with at most 6 decimals: a smaller shift would print
    every time as 0)."""
    if isinstance(frame_shift, bool) or not isinstance(frame_shift, (int, float, np.integer, np.floating)):
        return f"{name} must be a number of seconds > 0, got {frame_shift!r}"
    if not (np.isfinite(frame_shift) and frame_shift > 0):
        return f"{name} must be a finite number of seconds > 0, got {frame_shift!r}"
    if frame_shift < 1e-6:
        return f"{name} must be at least 1e-6 seconds (times are written with 6 decimals), got {frame_shift!r}"
    return None


def time_format(frame_shift):
    """The format of times: enough decimals to show multiples of frame_shift exactly (2 to 6)."""
    why = frame_shift_problem(frame_shift)
    if why is not None:
        raise ValueError(why)
    decimals = f"{frame_shift:.6f}".rstrip("0").split(".")[1]
    return f"{{:.{min(max(len(decimals), 2), 6)}f}}"


def segments_lines(result, utterance_ids, recording_id, frame_shift=0.01):
    """Kaldi ``segments`` lines ``utt-id recording-id start end`` (seconds = frames * frame_shift) of one
    :class:`SegmentResult`; an infeasible result gives no lines."""
    fmt = time_format(frame_shift)
    ids = _check_ids(utterance_ids, len(result.start), "utterance_ids")
    (rec,) = _check_ids([recording_id], 1, "recording_id")
    if not result.feasible:
        return []
    return [f"{u} {rec} {fmt.format(s * frame_shift)} {fmt.format(e * frame_shift)}"
            for u, s, e in zip(ids, result.start.tolist(), result.end.tolist())]


def ctm_lines(result, utterance_ids, utterances, frame_shift=0.01, symbols=None, channel=1, recording_times=False):
    """CTM lines ``utt channel start duration label confidence``, one per label, of one :class:`SegmentResult`.

    Times are seconds from the start of the utterance's segment (as Kaldi's CTMs of segmented data; Kaldi's
    ``utils/convert_ctm.pl`` turns them into recording times with the ``segments`` file), or from the start of the
    recording with ``recording_times=True``. ``symbols``: a mapping class -> name for the label column (default:
    the class number). ``confidence`` is the label's :attr:`SegmentResult.label_confidence`.
    """
    fmt = time_format(frame_shift)
    ids = _check_ids(utterance_ids, len(result.start), "utterance_ids")
    if len(utterances) != len(ids):
        raise ValueError(f"utterances must hold the {len(ids)} utterances of the result, got {len(utterances)}")
    if not result.feasible:
        return []
    out = []
    for i, u in enumerate(ids):
        labels = np.asarray(utterances[i]).tolist()
        ls, le, lc = result.label_start[i], result.label_end[i], result.label_confidence[i]
        if len(labels) != len(ls):
            raise ValueError(f"utterances[{i}] has {len(labels)} labels, the result {len(ls)}")
        origin = 0 if recording_times else int(result.start[i])
        for lab, s, e, c in zip(labels, ls.tolist(), le.tolist(), lc.tolist()):
            name = symbols.get(lab, str(lab)) if symbols is not None else str(lab)
            out.append(f"{u} {channel} {fmt.format((s - origin) * frame_shift)} "
                       f"{fmt.format((e - s) * frame_shift)} {name} {c:.4f}")
    return out
