"""CTC forced alignment: the best (Viterbi) frame-level path that spells out given labels.

Shapes: B batch, T frames, C classes (blank included), L label length.
"""
from typing import NamedTuple

import numpy as np

from . import _decode
from . import _decode_args as args
from ._threads import resolve_num_threads

__all__ = ["AlignResult", "ctc_align", "ctc_segments"]

_INFEASIBLE, _NONFINITE = 1, 2  # CYCTC_DECODE_* outcome codes of the kernel


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
        if blank is None:
            blank = 0 if self.blank_index is None else self.blank_index
        else:
            blank = args.as_index(blank, "blank")
            if blank < 0:
                if self.num_classes is None:
                    raise ValueError(f"blank must be >= 0 for a result not made by ctc_align (C unknown), got {blank}")
                blank = args.blank_class(blank, self.num_classes)
        return ctc_segments(self.path[b], blank=blank)


def ctc_align(log_probs, labels, input_length=None, label_length=None, blank_index=0, *, time_major=False,
              normalize=False, num_threads=None):
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

    Returns
    -------
    AlignResult
        ``(path, log_prob, feasible)``; see :class:`AlignResult`. Infeasible examples (too few frames, or every
        path through a zero-probability frame) are reported with ``feasible[b] = False``, not raised.

    Notes
    -----
    Memory per example in flight: T * (2L + 1) bytes of back-pointers.
    """
    x, _ = args.float_frames(log_probs, "log_probs", args.as_flag(time_major, "time_major"))
    B, T, C = x.shape
    blank = args.blank_class(blank_index, C, default=0)
    lab, lab_len = args.align_labels(labels, label_length, B, C, blank)
    length = args.lengths(input_length, "input_length", B, T)
    normalize = args.as_flag(normalize, "normalize")
    nt = resolve_num_threads(num_threads)
    path = np.full((B, max(T, 1)), -1, dtype=np.int32)
    log_prob = np.empty(B, dtype=np.float64)
    status = np.empty(B, dtype=np.int8)
    if _decode.viterbi_align(x, length, lab, lab_len, blank, normalize, path, log_prob, status, nt):
        raise MemoryError("ctc_align: out of memory for the Viterbi back-pointers")
    res = AlignResult(path[:, :T].astype(np.int64), log_prob, status == 0)
    res.blank_index, res.num_classes = blank, C
    return res


def ctc_segments(path, blank=0):
    """Turn one frame-level path into label segments ``[(start, end, label), ...]``.

    Each run of equal non-blank classes is one segment, from frame ``start`` up to but not including ``end``
    (``path[start:end]`` is the run). A label repeated with a blank in between (``a _ a``) gives two segments; a
    run without a blank (``a a``) is one label. Blank frames belong to no segment. Entries < 0 (the padding of
    :func:`ctc_align` beyond the valid frames) end the path.

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
    neg = np.flatnonzero(p < 0)
    if neg.size:
        p = p[: neg[0]]
    if p.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]]))
    ends = np.concatenate([starts[1:], [p.size]])
    return [(int(s), int(e), int(p[s])) for s, e in zip(starts, ends) if p[s] != blank]
