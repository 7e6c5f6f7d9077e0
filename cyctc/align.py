"""CTC forced alignment: the best (Viterbi) frame-level path that spells out given labels.

Shapes: B batch, T frames, C classes (blank included), L label length.
"""
from typing import NamedTuple

import numpy as np

from . import _decode
from . import _decode_args as args
from ._memory import budget_error, resolve_memory_limit
from ._threads import resolve_num_threads

__all__ = ["AlignResult", "ctc_align", "ctc_segments"]

# CYCTC_DECODE_* outcome codes of the kernel (src/decode.h)
_OK, _INFEASIBLE, _NONFINITE, _POSTERIOR_LOST, _NOMEM, _BUDGET = 0, 1, 2, 3, -1, -2
GAP = -1  # CYCTC_GAP: the token of an untranscribed stretch
UNTRANSCRIBED = -2  # the class ctc_align reports for a frame spent in an untranscribed stretch


def _work_budget(func, T, n, C, posteriors, memory_limit, num_threads):
    """(bytes of work space per sequence, threads) for sequences of T[b] frames and n[b] tokens.

    The budget covers every sequence in flight at once: each of min(threads, B) in-flight sequences gets an equal
    share. When the largest sequence's smallest work space does not fit a share, fewer sequences run at once (down
    to one, at the whole budget); below that, ``budget_error`` names the minimum.
    """
    limit = resolve_memory_limit(memory_limit)
    B = len(T)
    if B == 0:
        return float(limit), 1
    inflight = max(1, min(num_threads, B))
    while True:
        share = limit // inflight
        worst = 0.0
        for b in range(B):
            w = _decode.chain_work_bytes(int(T[b]), C, int(n[b]), posteriors, float(share))
            if w < 0:
                worst = max(worst, -w)
        if worst == 0.0:
            return float(share), inflight
        if worst > limit:
            raise budget_error(func, int(np.ceil(worst)), limit)
        inflight = max(1, min(inflight - 1, int(limit // worst)))


def run_chain(func, x, length, tokens, n_tokens, blank, normalize, gap_penalty, posteriors, memory_limit,
              num_threads):
    """The kernel over a batch: (state path int32 (B, max(T, 1)), log_prob (B,), posteriors (B, max(T, 1)) or None,
    status int8 (B,)). Arguments already validated; tokens int32 (B, Nmax) with GAP entries, n_tokens (B,)."""
    B, T, C = x.shape
    nt = resolve_num_threads(num_threads)
    n_tokens = np.ascontiguousarray(n_tokens, dtype=np.int64)
    if B and int(n_tokens.max()) >= 2**30:  # states 2n + 1 are int32 in the kernel's paths
        raise ValueError(f"{func}: {int(n_tokens.max())} labels (and untranscribed stretches) in one sequence is too "
                         f"many (at most 2**30 - 1)")
    share, threads = _work_budget(func, length, n_tokens, C, posteriors, memory_limit, nt)
    path = np.full((B, max(T, 1)), -1, dtype=np.int32)
    post = np.full((B, max(T, 1)), np.nan) if posteriors else None
    log_prob = np.empty(B, dtype=np.float64)
    status = np.empty(B, dtype=np.int8)
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    if _decode.chain_align(x, length, tokens, n_tokens, blank, normalize, gap_penalty, share, path, log_prob,
                           post, status, threads, nt if B == 1 else 1):
        raise MemoryError(f"{func}: out of memory for the alignment's work space")
    if (status == _BUDGET).any():  # not expected: the shares above were checked against the same plan
        raise budget_error(func, int(share) + 1, int(share))
    return path, log_prob, post, status


def state_classes(path, tokens, blank):
    """Classes of a batch of state paths: blank for even states, the token's class for labels, UNTRANSCRIBED for
    gaps, -1 where the path is -1."""
    B = path.shape[0]
    table = np.full((B, 2 * tokens.shape[1] + 1), blank, dtype=np.int64)
    table[:, 1::2] = np.where(tokens == GAP, UNTRANSCRIBED, tokens)
    out = np.take_along_axis(table, np.maximum(path, 0).astype(np.intp), axis=1)
    out[path < 0] = -1
    return out


def _gap_tokens(dense, lab_len, start, end):
    """(tokens (B, N), n (B,)): each row's labels (with their GAP wildcards), a GAP first when ``start`` and last
    when ``end``, runs of GAPs merged into one."""
    B = dense.shape[0]
    rows = []
    for b in range(B):
        r = dense[b, :lab_len[b]].tolist()
        r = ([GAP] if start else []) + r + ([GAP] if end else [])
        rows.append([v for i, v in enumerate(r) if not (v == GAP and i > 0 and r[i - 1] == GAP)])
    n = np.array([len(r) for r in rows], dtype=np.int64)
    tokens = np.zeros((B, max(int(n.max()) if B else 0, 1)), dtype=np.int32)
    for b, r in enumerate(rows):
        tokens[b, :len(r)] = r
    return tokens, n


class _AlignFields(NamedTuple):
    path: np.ndarray
    log_prob: np.ndarray
    feasible: np.ndarray


class AlignResult(_AlignFields):
    """``(path, log_prob, feasible)`` of :func:`ctc_align`; unpacks like a tuple.

    path : int64 (B, T)
        Class of every frame on the best path; -1 beyond ``input_length[b]`` and everywhere for an example that
        has no path.
    log_prob : float64 (B,)
        ``sum_t log_probs[b, t, path[b, t]]`` over the valid frames; -inf where no path has non-zero
        probability, NaN where a valid frame holds NaN or +inf.
    feasible : bool (B,)
        True where a path was found (``log_prob`` finite).

    A result of ``ctc_align`` also knows the blank it used and the class count C (``blank_index``,
    ``num_classes``; None for a result built by hand), so that :meth:`segments` needs no blank.
    """

    blank_index = None
    num_classes = None

    def segments(self, b, blank=None):
        """Label segments of example ``b``'s path: see :func:`ctc_segments`.

        ``blank``: None (the default) is the blank ``ctc_align`` used; an explicit blank may be negative (counted
        from C, as ``ctc_align``'s ``blank_index``) when this result came from ``ctc_align``.
        """
        b = args.as_index(b, "b")
        if not -len(self.path) <= b < len(self.path):
            raise IndexError(f"b = {b} is out of range for a batch of {len(self.path)}")
        if blank is None:
            blank = 0 if self.blank_index is None else self.blank_index
        else:
            blank = args.as_index(blank, "blank")
            if blank < 0:
                if self.num_classes is None:
                    raise ValueError(f"blank must be >= 0 for a result not made by ctc_align (C unknown), got {blank}")
                blank = args.blank_class(blank, self.num_classes, name="blank")
        return ctc_segments(self.path[b], blank=blank)


def ctc_align(log_probs, labels, input_length=None, label_length=None, blank_index=0, *, time_major=False,
              normalize=False, num_threads=None, memory_limit=None, partial=False, wildcard=None,
              untranscribed_penalty=0.0):
    """Viterbi forced alignment: the most probable frame-level CTC path that collapses to ``labels``.

    A path assigns one class to each valid frame; it collapses to the labels when merging runs of equal classes
    and then dropping blanks gives exactly ``labels[b, :label_length[b]]`` -- so two equal neighbouring labels need
    a blank frame between them, and an example needs at least ``L + (number of equal neighbours)`` frames. Among
    all such paths the one with the largest ``sum_t log_probs[t, path[t]]`` is returned. Ties prefer staying on
    the current label/blank over moving on, and ending on a blank over ending on the last label.

    Parameters
    ----------
    log_probs : float16/32/64 (B, T, C), or (T, B, C) with ``time_major=True``
        Per-frame log-probabilities, used as given (pass ``normalize=True`` to apply a log-softmax over the
        classes first, e.g. for raw logits). Any strides.
    labels : int (B, Lmax), scipy.sparse (B, Lmax), or a list of B int sequences
        Label classes in [0, C), never the blank. Dense: only the first ``label_length[b]`` entries of row b
        count. Sparse (stored entries, explicit zeros included) and lists carry their own lengths:
        ``label_length`` must then be None.
    input_length : int (B,) or None
        Valid frames of each example, in [0, T]; None: all T.
    label_length : int (B,) or None
        Labels of each example, in [0, Lmax]; None: all Lmax.
    blank_index : int
        The blank class (any class; default 0, as in PyTorch and torchaudio); negative values count from C.
    time_major, normalize : bool, keyword-only
    num_threads : int or None, keyword-only
        None: all usable cores; n > 0: n threads; n < 0: all but |n| - 1. The result never depends on it.
    memory_limit : int or None, keyword-only
        Bytes of work space the call may use, all sequences in flight together (None: ``CYCTC_MEMORY_LIMIT`` from
        the environment, else 1 GiB). Above it the Viterbi keeps score rows every few frames and recomputes the
        back-pointers of one stretch at a time (more levels when even that does not fit), so any T aligns in
        O(sqrt(T) * (2L + 1)) bytes or less; the path is the same for every budget. A budget below the smallest
        work space raises ``MemoryError`` naming it.
    partial : bool, keyword-only
        True: the labels may cover only part of the audio; the path may spend any number of frames (zero
        included) in an untranscribed stretch before the first label and after the last.
    wildcard : negative int or None, keyword-only
        A value that, among the labels, stands for an untranscribed stretch of any length inside the transcript
        (e.g. -1 for words the text leaves out). Runs of wildcards act as one.
    untranscribed_penalty : float >= 0, keyword-only
        An untranscribed frame (``partial`` or ``wildcard``) scores the frame's best log-probability (over all
        classes, the blank included) minus this penalty (default 0).

    Returns
    -------
    AlignResult
        ``(path, log_prob, feasible)``; see :class:`AlignResult`. Infeasible examples (too few frames, or every
        path through a zero-probability frame) are reported with ``feasible[b] = False``, not raised. Frames the
        path spends in an untranscribed stretch hold -2 in ``path``, and score as above in ``log_prob``.

    Notes
    -----
    Work space per example in flight: one pass with T * (2L + 1) bytes of back-pointers while that stays under
    48 MB; beyond, about sqrt(T) checkpoint rows of 8 * (2L + 1) bytes and one stretch of back-pointers (two
    passes over the frames), and more levels of checkpoints only when ``memory_limit`` requires them. Read in
    place: a float32/float64 ``np.memmap`` (or any array whose class axis is contiguous) is not copied.
    """
    x, _ = args.float_frames(log_probs, "log_probs", args.as_flag(time_major, "time_major"))
    B, T, C = x.shape
    blank = args.blank_class(blank_index, C, default=0)
    partial = args.as_flag(partial, "partial")
    if wildcard is not None:
        wildcard = args.as_index(wildcard, "wildcard")
        if wildcard >= 0:
            raise ValueError(f"wildcard must be a negative int (a value no class has), got {wildcard}")
    gap_penalty = args.penalty(untranscribed_penalty)
    lab, lab_len = args.align_labels(labels, label_length, B, C, blank, wildcard)
    length = args.lengths(input_length, "input_length", B, T)
    normalize = args.as_flag(normalize, "normalize")
    resolve_num_threads(num_threads)
    resolve_memory_limit(memory_limit)
    if partial or (wildcard is not None and (lab == GAP).any()):
        tokens, n = _gap_tokens(lab, lab_len, partial, partial)
    else:
        tokens, n = lab, lab_len
    path, log_prob, _, status = run_chain("ctc_align", x, length, tokens, n, blank, normalize, gap_penalty, False,
                                          memory_limit, num_threads)
    res = AlignResult(state_classes(path[:, :T], tokens, blank), log_prob, status == _OK)
    res.blank_index, res.num_classes = blank, C
    return res


def ctc_segments(path, blank=0):
    """Turn one frame-level path into label segments ``[(start, end, label), ...]``.

    Each run of equal non-blank classes is one segment, from frame ``start`` up to but not including ``end``
    (``path[start:end]`` is the run). A label repeated with a blank in between (``a _ a``) gives two segments; a
    run without a blank (``a a``) is one label. Blank frames and untranscribed frames (-2, from ``ctc_align``'s
    ``partial`` and ``wildcard``) belong to no segment. -1 (the padding of :func:`ctc_align` beyond the valid
    frames) ends the path.

    Parameters
    ----------
    path : int (T,)
        Frame classes, e.g. ``ctc_align(...).path[b]``.
    blank : int >= 0
        The blank class (the one ``ctc_align`` used; default 0). A path does not tell the class count, so a
        negative blank is refused here: pass ``blank % C``, or use ``AlignResult.segments``, which resolves it.

    Returns
    -------
    list of (int, int, int)
    """
    p = args.host(path)
    if not hasattr(p, "dtype"):
        try:
            p = np.asarray(p)
        except Exception as e:
            raise TypeError(f"path must be an array of integers: {e}") from None
    if p.dtype.kind not in "iu":
        raise TypeError(f"path must have an integer dtype, got {p.dtype}")
    if p.ndim != 1:
        raise ValueError(f"path must have shape (T,), got {tuple(p.shape)}")
    blank = args.as_index(blank, "blank")
    if blank < 0:
        raise ValueError(f"blank must be >= 0 (ctc_segments does not know the class count C: pass blank % C, or "
                         f"call AlignResult.segments, which resolves a negative blank), got {blank}")
    neg = np.flatnonzero(p == -1)
    if neg.size:
        p = p[: neg[0]]
    if p.dtype.kind == "i" and p.size and p.min() < UNTRANSCRIBED:
        i = int(np.argmax(p < UNTRANSCRIBED))
        raise ValueError(f"path[{i}] = {int(p[i])} is not a class (>= 0), -2 (untranscribed) or -1 (padding)")
    if p.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]]))
    ends = np.concatenate([starts[1:], [p.size]])
    return [(int(s), int(e), int(p[s])) for s, e in zip(starts, ends) if p[s] != blank and p[s] >= 0]
