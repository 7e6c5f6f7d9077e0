"""The one place where public arguments are validated and normalised.

Every public function hands its raw arguments to a function here and receives the arrays every backend takes
(see ``LossArgs``). Backends never re-validate. Errors are ``TypeError`` (wrong kind of thing) or ``ValueError``
(wrong value), and always name the argument.
"""
import operator

import numpy as np

from . import _cpu

_INT32_MAX = 2**31 - 1
_FAST_INTS = (np.dtype(np.int32), np.dtype(np.int64))  # dtypes the one-pass scans of _cpu take
# most elements B * T * C an input may have: keeps every byte count (8-byte items) and every offset the kernels
# compute well inside a signed 64-bit integer (arrays that big only exist as broadcast or strided views)
MAX_ELEMENTS = _cpu.MAX_ELEMENTS  # 2**59, one definition for this check and _cpu's fast acceptance


def array_module(x):
    """numpy, or cupy when ``x`` is a CuPy array (cupy is imported only if it already is)."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy
    return np


def is_sparse(x):
    """True for scipy.sparse and cupyx.scipy.sparse matrices/arrays."""
    mod = type(x).__module__
    if mod.startswith("scipy.sparse"):
        return True
    if mod.startswith("cupyx.scipy.sparse"):
        return True
    return False


def as_index(value, name):
    """A Python int from an int-like scalar (bool refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def as_flag(value, name):
    """A Python bool from a bool-like scalar (True/False, numpy bools, 0/1)."""
    if value is True or value is False:  # the usual argument, answered before the slower tests
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}") from None
    if v not in (0, 1):
        raise ValueError(f"{name} must be a bool, got {v}")
    return bool(v)


def float_input(x, name, ndim, xp=np):
    """``x`` as a float32/float64 array of rank ``ndim`` (float16 is widened to float32)."""
    if xp is np and not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as e:
            raise TypeError(f"{name} must be an array of floats: {e}") from None
    dt = x.dtype
    if dt.kind != "f":
        raise TypeError(f"{name} must hold floating-point values (float16/32/64), got dtype {dt}")
    if dt.itemsize > 8:
        raise TypeError(f"{name}: dtype {dt} is not supported (use float32 or float64)")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dt.itemsize == 2:
        x = x.astype(np.float32)
    elif not dt.isnative:
        x = x.astype(dt.newbyteorder("="))  # the kernels read native floats
    return x


def check_size(x, name):
    """Refuse a 3-axis array (typically a broadcast or strided view) with an axis of 2**31 or more, or more than
    ``MAX_ELEMENTS`` elements, before anything is allocated for it. Call it in the caller's layout, so that the
    message shows the shape as given."""
    a, b, c = (int(n) for n in x.shape)
    if max(a, b, c) > _INT32_MAX or a * b * c > MAX_ELEMENTS:
        raise ValueError(f"{name} of shape {tuple(x.shape)} is too large (every axis must be below 2**31, and the "
                         "element count at most 2**59)")


def kernel_view(x, xp=np):
    """A (B, T, C) view whose class axis is contiguous and whose strides are whole elements (copy if needed).

    Unaligned numpy data (e.g. ``np.frombuffer`` at an odd offset) is copied too: the kernels load whole floats.
    """
    item = x.dtype.itemsize
    st = x.strides
    if x.shape[2] > 1 and st[2] != item or any(s % item for s in st) or any(s < 0 for s in st[:2]) or (
            xp is np and not x.flags.aligned):
        x = xp.ascontiguousarray(x)
    return x


def int_vector(v, name, n, xp=np, whole_floats=False):
    """A length-``n`` int32 vector (accepts shape (n,) or (n, 1)) of non-negative integers. With ``whole_floats``
    (Keras, which casts), float arrays holding whole numbers are accepted too."""
    if not hasattr(v, "dtype"):
        try:
            v = np.asarray(v)
        except Exception as e:
            raise TypeError(f"{name} must be an array of integers: {e}") from None
    dt = v.dtype
    if dt.kind == "f":
        vv = np.asarray(v.get() if hasattr(v, "get") else v)
        if not np.all(np.isfinite(vv)):
            raise ValueError(f"{name} contains NaN or infinite values")
        if np.any(vv != np.round(vv)):
            raise ValueError(f"{name} must hold whole numbers")
        if not whole_floats:
            raise TypeError(f"{name} must have an integer dtype, got {dt}")
        if vv.size and np.max(np.abs(vv)) > _INT32_MAX:
            raise ValueError(f"{name} value {vv.max()} is too large")
        v = vv.astype(np.int64)
        dt = v.dtype
    if dt.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {dt}")
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")
    if v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} entries but the batch size is {n}")
    if n:
        if xp is np and isinstance(v, np.ndarray) and v.dtype in _FAST_INTS:
            lo, hi = _cpu.int_range(v)
        else:
            lo, hi = int(v.min()), int(v.max())
        if lo < 0:
            raise ValueError(f"{name} must be >= 0, got {lo}")
        if hi > _INT32_MAX:
            raise ValueError(f"{name} value {hi} is too large")
    # contiguous: the kernels read lengths as plain int32 vectors
    return np.ascontiguousarray(v, dtype=np.int32) if xp is np else xp.ascontiguousarray(v, dtype=np.int32)


def blank_class(blank_index, C, default=0, name="blank_index"):
    """The blank class in [0, C) from TF's blank_index (None -> default; negative counts from C)."""
    if blank_index is None:
        return default
    b = as_index(blank_index, name)
    if not -C <= b < C:
        raise ValueError(f"{name} must be in [-{C}, {C}) for {C} classes, got {b}")
    return b + C if b < 0 else b


def sparse_to_dense(sp, name, B=None):
    """(labels int32 (B, Lmax), label_length int32 (B,)) from a sparse (B, Lmax) matrix of labels.

    Stored entries give positions and classes (explicit zeros are labels); each row's stored positions must be
    exactly 0..n-1 (no duplicates, no gaps).
    """
    if type(sp).__module__.startswith("cupyx"):
        sp = sp.get()
    coo = sp.tocoo()
    if coo.data.dtype.kind not in "iu":
        raise TypeError(f"{name}: sparse label values must have an integer dtype, got {coo.data.dtype}")
    nb, lmax = coo.shape
    if B is not None and nb != B:
        raise ValueError(f"{name} has {nb} rows but the batch size is {B}")
    row = np.asarray(coo.row, dtype=np.int64)
    col = np.asarray(coo.col, dtype=np.int64)
    data = np.asarray(coo.data)
    order = np.lexsort((col, row))
    row, col, data = row[order], col[order], data[order]
    if row.size > 1:
        dup = (row[1:] == row[:-1]) & (col[1:] == col[:-1])
        if dup.any():
            i = int(np.argmax(dup))
            raise ValueError(f"{name}: duplicate entries at position ({row[i]}, {col[i]})")
    counts = np.bincount(row, minlength=nb).astype(np.int64)
    starts = np.cumsum(counts) - counts  # (an empty batch has no rows)
    expected_col = np.arange(row.size) - np.repeat(starts, counts)
    if row.size and np.any(col != expected_col):
        i = int(np.argmax(col != expected_col))
        raise ValueError(f"{name}: row {row[i]} has a gap before position {col[i]} "
                         "(stored positions of each row must be 0, 1, ..., n-1)")
    # as wide as the longest row (not the declared width, which may be huge: only stored entries matter)
    dense = np.zeros((nb, max(int(counts.max()) if nb else 0, 1)), dtype=np.int64)
    dense[row, col] = data
    return dense, counts


class LossArgs:
    """Normalised arguments of a CTC loss call (see the attribute list in ``normalize_loss_args``)."""

    __slots__ = ("x", "labels", "label_length", "logit_length", "blank", "B", "T", "C", "time_major",
                 "dtype_out", "xp")


def check_labels(labels, label_length, C, blank, name="labels"):
    """Validate the first label_length[b] entries of each row: classes in [0, C), never the blank."""
    B, Lmax = labels.shape
    if B == 0 or Lmax == 0:
        return
    if labels.dtype in _FAST_INTS and label_length.dtype == np.int32:
        if _cpu.first_bad_label(labels, label_length, C, blank) < 0:
            return  # all good: the slow path below only runs to name the first bad entry
    mask = np.arange(Lmax) < label_length[:, None]
    if not mask.any():
        return
    vals = labels[mask]
    lo, hi = vals.min(), vals.max()
    if lo < 0 or hi >= C:
        bad = np.argwhere(mask & ((labels < 0) | (labels >= C)))[0]
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}] = {labels[bad[0], bad[1]]} is outside the classes [0, {C})")
    if lo <= blank <= hi:
        hit = mask & (labels == blank)
        if hit.any():
            bad = np.argwhere(hit)[0]
            raise ValueError(f"{name}[{bad[0]}, {bad[1]}] equals the blank class {blank}")


def check_unique(unique, labels, label_length):
    """Validate TF's ``unique`` pair (unique_y, unique_idx) against dense labels (it never changes results)."""
    if not isinstance(unique, (tuple, list)) or len(unique) != 2:
        raise TypeError("unique must be None or the pair (unique_y, unique_idx) from ctc_unique_labels")
    y, idx = (np.asarray(u.get() if hasattr(u, "get") else u) for u in unique)
    for nm, u in (("unique[0] (unique_y)", y), ("unique[1] (unique_idx)", idx)):
        if u.dtype.kind not in "iu":
            raise TypeError(f"{nm} must have an integer dtype, got {u.dtype}")
        if u.shape != labels.shape:
            raise ValueError(f"{nm} must have the labels' shape {labels.shape}, got {u.shape}")
    if labels.size == 0:
        return
    Lmax = labels.shape[1]
    if idx.min() < 0 or idx.max() >= Lmax:
        raise ValueError(f"unique[1] (unique_idx) must index positions in [0, {Lmax})")
    back = np.take_along_axis(y, idx.astype(np.intp), axis=1)
    if np.any(back != labels):
        b, j = np.argwhere(back != labels)[0]
        raise ValueError(f"unique does not match labels: unique_y[{b}, unique_idx[{b}, {j}]] = {back[b, j]} "
                         f"but labels[{b}, {j}] = {labels[b, j]}")


def concatenated_labels(labels, label_length, B, name="targets", length_name="target_lengths"):
    """PyTorch's concatenated targets -- a 1-D integer array holding every example's labels one after another,
    example b's being the next ``label_length[b]`` -- as zero-padded (B, max(label_length)) labels for
    ``normalize_loss_args``; 2-D labels are returned unchanged. Host arrays only (the bridges fetch device ones).
    Returns (labels, label_length as validated int32 (B,))."""
    ll = int_vector(label_length, length_name, B)
    if not hasattr(labels, "ndim"):
        try:
            labels = np.asarray(labels)
        except Exception as e:
            raise TypeError(f"{name} must be an array of integers: {e}") from None
    if labels.ndim != 1:
        return labels, ll
    if labels.dtype.kind not in "iu" and not (labels.size == 0 and labels.dtype.kind == "f"):
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    total = int(ll.astype(np.int64).sum())
    if total > labels.shape[0]:
        raise ValueError(f"{name} is 1-D (concatenated) with {labels.shape[0]} entries, but {length_name} add up to "
                         f"{total}")
    width = int(ll.max()) if B else 0
    out = np.zeros((B, max(width, 1)), dtype=np.int64)
    if total:
        rows = np.repeat(np.arange(B), ll)
        starts = np.cumsum(ll, dtype=np.int64) - ll
        cols = np.arange(total) - np.repeat(starts, ll)
        out[rows, cols] = labels[:total]
    return out, ll


def padding_lengths(paddings, name, shape):
    """optax's padding indicators -- (B, N), 1 where an entry is padding, 0 where it is used -- as (lengths int32
    (B,), order). ``order`` is None when every row is right-padded (zeros, then ones: the usual case); otherwise an
    (B, N) index array that moves each row's used entries to its front, in order (``np.take_along_axis``)."""
    p = np.asarray(paddings)
    if p.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {p.shape}")
    if p.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers (0 or 1), got dtype {p.dtype}")
    used = p == 0
    if not np.all(used | (p == 1)):
        raise ValueError(f"{name} must hold 0 (used) or 1 (padding) only")
    lengths = used.sum(axis=-1).astype(np.int32)
    if np.array_equal(used, np.arange(p.shape[-1]) < lengths[:, None]):
        return lengths, None
    return lengths, np.argsort(~used, axis=-1, kind="stable")


def dense_labels(labels, name, B, batch_says):
    """Dense labels as an integer (B, Lmax) numpy array, or a TypeError/ValueError naming ``name``; ``batch_says``
    ends the message when the row count is not B."""
    lab = _host(labels)
    if not isinstance(lab, np.ndarray):
        try:
            lab = np.asarray(lab)
        except Exception as e:
            raise TypeError(f"{name} must be an array of integers or a scipy.sparse matrix: {e}") from None
        if lab.size == 0 and lab.dtype.kind == "f":
            lab = lab.astype(np.int64)  # [[], []]: no labels (numpy calls an empty list float)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {lab.dtype}")
    if lab.ndim != 2:
        raise ValueError(f"{name} must have shape (B, Lmax), got {tuple(lab.shape)}")
    if lab.shape[0] != B:
        raise ValueError(f"{name} has {lab.shape[0]} rows but {batch_says}")
    return lab


def normalize_loss_args(labels, logits, label_length, logit_length, logits_time_major, unique, blank_index,
                        default_blank=0, logits_name="logits", logit_length_name="logit_length",
                        labels_name="labels", time_major_name="logits_time_major", label_length_name="label_length",
                        blank_name="blank_index"):
    """Validate ``tf.nn.ctc_loss``-style arguments.

    Returns a ``LossArgs`` with ``x`` the logits as a (B, T, C) float32/float64 view with contiguous class axis,
    ``labels`` int32 (B, Lmax >= 1) C-contiguous, ``label_length`` and ``logit_length`` int32 (B,), ``blank`` in
    [0, C), ``time_major``, ``dtype_out`` (the logits' own float dtype) and ``xp`` (numpy or cupy). The ``*_name``
    arguments are the caller's names of the arguments, used in every error (the framework bridges pass theirs).
    """
    # The common call -- numpy arrays already of the kernels' types and layout, valid values -- is recognised by one
    # scan in C that builds the very arrays the path below would; anything else, every error included, takes that
    # path, which names the problem.
    fast = _cpu.accept_loss_args(labels, logits, label_length, logit_length, logits_time_major, unique, blank_index,
                                 default_blank)
    if fast is not None:
        a = LossArgs()
        a.x, a.labels, a.label_length, a.logit_length, a.blank = fast
        a.B, a.T, a.C = a.x.shape
        a.time_major, a.dtype_out, a.xp = logits_time_major, logits.dtype, np
        return a
    xp = array_module(logits)
    if (type(labels).__module__.startswith("cupy") or type(label_length).__module__.startswith("cupy")
            or type(logit_length).__module__.startswith("cupy") or unique is not None):
        labels, label_length, logit_length, unique = fetch_small_args(
            labels, label_length, logit_length, unique, logits, labels_name, logit_length_name, label_length_name)
    dtype_out = getattr(logits, "dtype", None)
    x = float_input(logits, logits_name, 3, xp)
    if dtype_out is None or np.dtype(dtype_out).kind != "f":
        dtype_out = x.dtype
    time_major = as_flag(logits_time_major, time_major_name)
    check_size(x, logits_name)  # before the swap: the message shows the shape as given
    if time_major:
        x = x.swapaxes(0, 1)
    B, T, C = (int(n) for n in x.shape)
    if C == 0:
        raise ValueError(f"{logits_name} has an empty class axis (C = 0)")
    x = kernel_view(x, xp)
    blank = blank_class(blank_index, C, default_blank, blank_name)

    if logit_length is None:
        tl = np.full(B, T, dtype=np.int32)
    else:
        tl = int_vector(_host(logit_length), logit_length_name, B)
        if B and _cpu.int_range(tl)[1] > T:
            raise ValueError(f"{logit_length_name} must be <= T = {T} (the frames in {logits_name}), got {tl.max()}")

    nm = labels_name
    if is_sparse(labels):
        if label_length is not None:
            raise ValueError(f"{label_length_name} must be None when {nm} are sparse (the stored entries give them)")
        if unique is not None:
            raise ValueError("unique is only supported with dense labels")
        lab, ll = sparse_to_dense(labels, nm, B)
    else:
        lab = dense_labels(labels, nm, B, f"{logits_name} has batch size {B}")
        if label_length is None:
            raise ValueError(f"{label_length_name} is required with dense {nm} (or pass {nm} as a scipy.sparse "
                             "matrix)")
        ll = int_vector(_host(label_length), label_length_name, B)
        if B and _cpu.int_range(ll)[1] > lab.shape[1]:
            raise ValueError(f"{label_length_name} must be <= Lmax = {lab.shape[1]} (the columns of {nm}), "
                             f"got {ll.max()}")
        if unique is not None:
            check_unique(unique, lab, ll)
    check_labels(lab, ll, C, blank, nm)
    if lab.shape[1] == 0:
        lab = np.zeros((B, 1), dtype=np.int32)
    lab = np.ascontiguousarray(lab, dtype=np.int32)

    a = LossArgs()
    a.x, a.labels, a.label_length, a.logit_length, a.blank = x, lab, ll.astype(np.int32, copy=False), tl, blank
    a.B, a.T, a.C, a.time_major, a.dtype_out, a.xp = B, T, C, time_major, np.dtype(dtype_out), xp
    return a


def upload_small(arrays, like):
    """Device copies, on the device of the CuPy array ``like``, of small host arrays of one dtype (labels and
    lengths) made with ONE host-to-device copy: CuPy copies the concatenation asynchronously (staged through
    pinned memory: no sync) and each result is a view of the device buffer."""
    import cupy

    flat = np.concatenate([np.ravel(a) for a in arrays])
    with like.device:
        dev = cupy.asarray(flat)
    out, o = [], 0
    for a in arrays:
        n = a.size
        v = dev[o:o + n]
        out.append(v if a.ndim == 1 else v.reshape(a.shape))
        o += n
    return out


def fetch_small_args(labels, label_length, logit_length, unique, logits, labels_name="labels",
                     logit_length_name="logit_length", label_length_name="label_length"):
    """``fetch_small`` for the loss functions' (labels, label_length, logit_length, unique pair)."""
    pair = isinstance(unique, (tuple, list)) and len(unique) == 2
    vals = [labels, label_length, logit_length] + (list(unique) if pair else [unique])
    names = [labels_name, label_length_name, logit_length_name, "unique[0] (unique_y)", "unique[1] (unique_idx)"]
    vals = fetch_small(vals, names, like=logits)
    return vals[0], vals[1], vals[2], (tuple(vals[3:]) if pair else vals[3])


def whole_number_labels(labels, name, label_length=None):
    """Dense labels as integers; float arrays are accepted when they hold whole numbers (Keras casts them).

    With ``label_length`` (int (B,), already checked), only the first label_length[b] entries of row b must be
    whole numbers: the padding is never read (NaN there is fine) and becomes 0.
    """
    lab = _host(labels)
    if is_sparse(lab):
        return lab
    if not hasattr(lab, "dtype"):
        lab = np.asarray(lab)
    if lab.dtype.kind == "f":
        valid = np.ones(lab.shape, dtype=bool)
        if label_length is not None and lab.ndim == 2 and lab.shape[0] == len(label_length):
            valid = np.arange(lab.shape[1]) < np.asarray(label_length)[:, None]
        vals = lab[valid]
        if not np.all(np.isfinite(vals)) or np.any(vals != np.round(vals)):
            raise ValueError(f"{name} must hold whole numbers (class ids)")
        if np.any(np.abs(vals) > _INT32_MAX):
            raise ValueError(f"{name} holds a value outside the int32 range")
        lab = np.where(valid, lab, 0).astype(np.int64)
    return lab


def _host(v):
    """A host copy of a small CuPy vector (lengths, labels); other values unchanged."""
    if type(v).__module__.startswith("cupy"):
        return v.get()
    return v


def _is_device_array(v):
    return type(v).__module__.startswith("cupy") and hasattr(v, "device") and hasattr(v, "get")


def _sparse_parts(sp):
    """The component arrays of a cupyx.scipy.sparse matrix (csr/csc: data, indices, indptr; coo: data, row, col)."""
    fmt = sp.format
    if fmt == "coo":
        return fmt, (sp.data, sp.row, sp.col)
    if fmt in ("csr", "csc"):
        return fmt, (sp.data, sp.indices, sp.indptr)
    raise TypeError(f"cupyx.scipy.sparse {fmt} matrices are not supported as labels (use csr, csc or coo)")


def _sparse_from_parts(fmt, shape, parts):
    import scipy.sparse

    if fmt == "coo":
        data, row, col = parts
        return scipy.sparse.coo_matrix((data, (row, col)), shape=shape)
    make = scipy.sparse.csr_matrix if fmt == "csr" else scipy.sparse.csc_matrix
    return make(tuple(parts), shape=shape)


def fetch_small(values, names, like=None):
    """Host (numpy) copies of the CuPy arrays among ``values`` -- labels, lengths: what validation reads -- made
    with ONE device-to-host transfer, however many of them there are; other values are returned unchanged.

    This is the only place where the loss and decoder glue waits for the device (a call without CuPy small
    arrays never does). The arrays' bytes are gathered on the device into one buffer (one small kernel), copied
    once, and split on the host: exact for every dtype. cupyx.scipy.sparse labels travel as their component arrays
    in the same copy. When ``like`` (the logits) is a CuPy array, every CuPy value must be on its device, else a
    ValueError names the value. Returns a list like ``values``.
    """
    out = list(values)
    dev = []  # (slot, array) or (slot, (fmt, shape, n_parts)) followed by its parts
    for i, v in enumerate(values):
        if _is_device_array(v):
            dev.append((i, None, v))
        elif type(v).__module__.startswith("cupyx.scipy.sparse"):
            fmt, parts = _sparse_parts(v)
            for k, p in enumerate(parts):
                dev.append((i, (fmt, tuple(v.shape), k, len(parts)), p))
    if not dev:
        return out
    if like is not None and _is_device_array(like):
        want = like.device.id
        for i, _, v in dev:
            if v.device.id != want:
                raise ValueError(f"{names[i]} is on CUDA device {v.device.id} but the logits are on device {want}")
    arrays = [v for _, _, v in dev]
    if len(arrays) == 1:
        host = [arrays[0].get()]
    else:
        import cupy

        same = all(v.dtype == arrays[0].dtype for v in arrays)
        with arrays[0].device:
            if same:  # the usual case (all int32 or all int64): one concatenation, no byte views
                flat = cupy.concatenate([v.ravel() for v in arrays])
            else:
                flat = cupy.concatenate([cupy.ascontiguousarray(v).reshape(-1).view(cupy.uint8) for v in arrays])
            buf = flat.get()  # the one device-to-host copy (and so the one sync)
        host, off = [], 0
        for v in arrays:
            n = v.size if same else v.size * v.dtype.itemsize
            h = buf[off:off + n]
            host.append((h if same else h.view(v.dtype)).reshape(v.shape))
            off += n
    parts = {}
    for (i, sparse, _), h in zip(dev, host):
        if sparse is None:
            out[i] = h
        else:
            parts.setdefault(i, (sparse[0], sparse[1], []))[2].append(h)
    for i, (fmt, shape, ps) in parts.items():
        out[i] = _sparse_from_parts(fmt, shape, ps)
    return out


REDUCTIONS = ("none", "sum", "mean")


def check_reduction(reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction
