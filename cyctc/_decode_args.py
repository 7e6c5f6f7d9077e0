"""Validation and normalisation of the decoder and alignment arguments.

The decode half of ``cyctc._args`` (whose helpers it uses): every public function in ``decode.py`` and
``align.py`` hands its raw arguments to the functions here and gets back exactly what the kernels in
``_decode.pyx`` take. Errors are ``TypeError`` (wrong kind of thing) or ``ValueError`` (wrong value) and always
name the argument; all of them are raised before any kernel runs.
"""

import numpy as np

from ._args import (as_flag, as_index, blank_class, check_labels, check_size, dense_labels, float_input, int_vector,
                    is_sparse, kernel_view, sparse_to_dense)

__all__ = ["host", "as_index", "as_flag", "blank_class", "float_frames", "score_dtype", "lengths", "beam_sizes",
           "align_labels"]

_INT32_MAX = 2**31 - 1


def host(x):
    """A numpy view of ``x``; CuPy arrays are copied to the host (decoding runs on the CPU)."""
    if type(x).__module__.startswith("cupy") and hasattr(x, "get"):
        return x.get()
    return x


def float_frames(x, name, time_major):
    """(view, dtype_out): ``x`` as a float32/float64 (B, T, C) array the kernels can read, and the dtype to answer in.

    ``x`` is (T, B, C) when ``time_major`` else (B, T, C); float16 is widened to float32 (answers stay float16).
    The view shares memory with ``x`` unless its layout needs a copy (see ``_args.kernel_view``).
    """
    x = host(x)
    dtype_out = getattr(x, "dtype", None)
    x = float_input(x, name, 3)
    if dtype_out is None or np.dtype(dtype_out).kind != "f":
        dtype_out = x.dtype
    if x.shape[2] < 1:
        raise ValueError(f"{name} has an empty class axis (C = 0)")
    check_size(x, name)
    if time_major:
        x = x.swapaxes(0, 1)
    return kernel_view(x), np.dtype(dtype_out)


def score_dtype(dtype):
    """The dtype decoders answer scores in: the inputs' float dtype, at least float32 (as TensorFlow). A float16
    answer would turn a finite score below -65504 into -inf, which marks a missing beam path."""
    return np.promote_types(dtype, np.float32)


def lengths(v, name, B, T, whole_floats=False):
    """int32 (B,) frame or label counts in [0, T]; None means T everywhere; (B, 1) is accepted (Keras), and with
    ``whole_floats`` float arrays holding whole numbers (Keras casts them)."""
    if v is None:
        return np.full(B, T, dtype=np.int32)
    v = int_vector(host(v), name, B, whole_floats=whole_floats)
    if B:
        over = np.flatnonzero(v > T)
        if over.size:
            b = int(over[0])
            raise ValueError(f"{name}[{b}] = {int(v[b])} is larger than {T}")
    return np.ascontiguousarray(v, dtype=np.int32)


def beam_sizes(beam_width, top_paths):
    """(beam_width, top_paths) as ints with 1 <= top_paths <= beam_width."""
    w = as_index(beam_width, "beam_width")
    k = as_index(top_paths, "top_paths")
    if w < 1:
        raise ValueError(f"beam_width must be >= 1, got {w}")
    if w > _INT32_MAX // 4:
        raise ValueError(f"beam_width {w} is too large")
    if k < 1:
        raise ValueError(f"top_paths must be >= 1, got {k}")
    if k > w:
        raise ValueError(f"top_paths must be <= beam_width ({w}), got {k}")
    return w, k


def align_labels(labels, label_length, B, C, blank, wildcard=None):
    """(labels int32 C-contiguous (B, Lmax >= 1), label_length int32 (B,)) validated against C and the blank.

    With ``wildcard`` (a negative int), entries equal to it are allowed and come back as -1 (a gap token).

    ``labels`` is a dense (B, Lmax) integer array (or nested lists of that shape), a scipy.sparse (B, Lmax) matrix
    (stored entries are the labels, explicit zeros included), or a ragged list of B one-dimensional integer
    sequences; for the last two ``label_length`` must be None.
    """
    if is_sparse(labels):
        if label_length is not None:
            raise ValueError("label_length must be None when labels are sparse (the stored entries give them)")
        labels, label_length = sparse_to_dense(labels, "labels", B)
    labels = host(labels)
    ragged = False
    if isinstance(labels, (list, tuple)) and len(labels) == 0:
        ragged = True  # no sequences (an empty batch)
    elif isinstance(labels, (list, tuple)):
        try:
            dense = np.asarray(labels)
            ragged = dense.dtype == object
            if dense.size == 0 and dense.dtype.kind == "f":
                dense = dense.astype(np.int64)  # [[], []]: no labels (numpy calls an empty list float)
        except ValueError:
            ragged = True
        if not ragged:
            labels = dense
    if ragged:
        rows = []
        for b, row in enumerate(labels):
            try:
                r = np.asarray(host(row))
            except (ValueError, TypeError):  # e.g. [3, [4]]: numpy cannot make one array of it
                raise ValueError(f"labels[{b}] must be a one-dimensional sequence of integers, got {row!r}") from None
            if r.ndim != 1:
                raise ValueError(f"labels[{b}] must be a one-dimensional sequence of integers (labels given as a list "
                                 f"hold one sequence per example), got shape {r.shape}")
            if r.size and r.dtype.kind not in "iu":
                raise TypeError(f"labels[{b}] must hold integers, got dtype {r.dtype}")
            rows.append(r)
        if label_length is not None:
            raise ValueError("label_length must be None when labels is a list of sequences")
        label_length = np.array([r.size for r in rows], dtype=np.int64)
        padded = np.zeros((len(rows), max([r.size for r in rows] + [1])), dtype=np.int64)
        for i, r in enumerate(rows):
            padded[i, : r.size] = r
        labels = padded
    labels = dense_labels(labels, "labels", B, f"the batch size is {B}")
    Lmax = labels.shape[1]
    label_length = lengths(label_length, "label_length", B, Lmax)
    gaps = None
    if wildcard is not None:
        valid = np.arange(Lmax) < label_length[:, None]
        gaps = (labels == wildcard) & valid
        if C > 1:  # any class but the blank stands in for a wildcard in the check
            check_labels(np.where(gaps, (blank + 1) % C, labels), label_length, C, blank)
        elif (valid & ~gaps).any():
            b_, j_ = np.argwhere(valid & ~gaps)[0]
            raise ValueError(f"labels[{b_}, {j_}] = {labels[b_, j_]}: with one class (the blank) only the wildcard "
                             f"{wildcard} can be a label")
    else:
        check_labels(labels, label_length, C, blank)
    dense = np.zeros((B, max(Lmax, 1)), dtype=np.int32)
    dense[:, :Lmax] = np.where(np.arange(Lmax) < label_length[:, None], labels, 0)
    if gaps is not None:
        dense[:, :Lmax][gaps] = -1
    return dense, label_length


def penalty(value, name="untranscribed_penalty"):
    """A finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v
