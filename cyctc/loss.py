"""The CTC loss functions (TensorFlow ``tf.nn.ctc_loss`` semantics) and the backend dispatch they share."""
import numpy as np

from . import _args, _cpu
from ._memory import resolve_memory_limit
from ._threads import resolve_num_threads

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def compute(a, merge_repeated, want_grad, grad_scale, num_threads, memory_limit=None):
    """Run the backend that owns ``a.x`` on normalised arguments ``a`` (see ``_args.LossArgs``) with a thread count
    already resolved by ``resolve_num_threads``; ``grad_scale``: the gradient's float64 (B,) factors, or None for
    all 1; ``memory_limit``: the work-space budget in bytes (None: ``resolve_memory_limit``'s default), host memory
    for the CPU and device memory for CuPy logits. CuPy logits: ``a``'s labels and lengths are on the device after.

    Returns (loss float64 (B,), grad or None); grad has the layout of the user's logits (time-major when
    ``a.time_major``) and the dtype of ``a.x``; its rows t >= logit_length are 0.
    """
    if a.xp is not np:
        from .cuda import _backend

        return _backend.loss_and_grad(a, merge_repeated, want_grad, _on_device(a, grad_scale),
                                      resolve_memory_limit(memory_limit))
    grad = grad_view = None
    if want_grad:
        shape = (a.T, a.B, a.C) if a.time_major else (a.B, a.T, a.C)
        grad = np.empty(shape, dtype=a.x.dtype)
        grad_view = grad.swapaxes(0, 1) if a.time_major else grad
    if memory_limit is None:
        memory_limit = resolve_memory_limit(None)
    loss = _cpu.ctc_loss_grad(a.x, a.labels, a.label_length, a.logit_length, a.blank, merge_repeated,
                              grad_view, grad_scale, num_threads, None, -1, memory_limit)
    return loss, grad


def _on_device(a, grad_scale):
    """Move ``a``'s labels and lengths (validated int32 host arrays) to the logits' device in place, with one
    host-to-device copy (asynchronous: no sync); returns ``grad_scale`` (None, or float64 (B,)) on the device."""
    a.labels, a.label_length, a.logit_length = _args.upload_small([a.labels, a.label_length, a.logit_length], a.x)
    if grad_scale is not None:
        with a.x.device:
            grad_scale = a.xp.asarray(grad_scale)
    return grad_scale


def _mean_weights(label_length, B, xp=np):
    """1 / (max(label_length, 1) * B): the per-example weights of reduction "mean" (PyTorch's)."""
    return 1.0 / (xp.maximum(xp.asarray(label_length, dtype=np.float64), 1.0) * max(B, 1))


def reduce_loss(loss, label_length, reduction, zero_infinity, xp=np, weights=None):
    """Apply zero_infinity and the reduction to float64 per-example losses (``weights``: the mean's, if at hand)."""
    if zero_infinity:
        loss = xp.where(xp.isposinf(loss), 0.0, loss)
    B = loss.shape[0]
    if reduction == "mean":
        if weights is None:
            weights = _mean_weights(label_length, B, xp)
        return (loss * weights).sum() if B else xp.asarray(np.nan)
    if reduction == "sum":
        return loss.sum()
    return loss


def finish(loss, grad, a, reduction, zero_infinity, return_grad, weights=None):
    """Shape the backend's output as the public functions return it."""
    out = reduce_loss(loss, a.label_length, reduction, zero_infinity, a.xp, weights)
    if reduction == "none" and a.xp is np and (a.dtype_out is _F64 or a.dtype_out is _F32):
        # ``out`` is a new float64 array of ours: float64 answers need no copy, float32 ones a conversion that
        # checks no floating-point flags (a loss beyond float32's range is inf, as below, without the errstate,
        # which costs as much as a small call's kernel). ``is``: numpy's own native dtypes, nothing merely equal.
        out = out if a.dtype_out is _F64 else _cpu.float32_copy(out)
    else:
        with np.errstate(over="ignore"):  # float16/32 answers: a loss beyond the dtype's range is inf, as it says
            if reduction == "none" or a.xp is not np:
                out = out.astype(a.dtype_out)  # CuPy keeps 0-d arrays on the device
            else:
                out = a.dtype_out.type(out)
    if not return_grad:
        return out
    if grad.dtype != a.dtype_out:
        grad = grad.astype(a.dtype_out)
    return out, grad


def ctc_loss(labels, logits, label_length=None, logit_length=None, logits_time_major=True, unique=None,
             blank_index=None, *, reduction="none", zero_infinity=False, return_grad=False, num_threads=None,
             memory_limit=None):
    """CTC negative log-likelihood per example, and optionally its gradient, with ``tf.nn.ctc_loss`` semantics.

    Shapes: B batch, T frames, C classes (blank included), L label length (Lmax the longest).

    Parameters
    ----------
    labels : int array (B, Lmax) or scipy.sparse matrix/array (B, Lmax)
        Dense: zero-padded class numbers, with ``label_length``. Sparse (TF's SparseTensor): stored entries give
        positions and classes (explicit zeros included), and ``label_length`` must be None.
    logits : float16/float32/float64 array (T, B, C) if ``logits_time_major`` else (B, T, C)
        Unnormalised scores; a softmax over the class axis is applied. Any strides; never modified.
    label_length : int array (B,), optional
        Labels per example (required with dense labels).
    logit_length : int array (B,), optional
        Valid frames per example; None means all T.
    logits_time_major : bool
        Layout of ``logits`` (and of the returned gradient).
    unique : (unique_y, unique_idx), optional
        The output of ``ctc_unique_labels(labels)``; validated, never changes the result.
    blank_index : int, optional
        The blank class; None or 0 is class 0, negative values count from C. Labels keep their class numbers.
    reduction : {"none", "sum", "mean"}
        "mean" is the mean over the batch of loss / max(label_length, 1), as in PyTorch.
    zero_infinity : bool
        Report 0 instead of +inf for infeasible examples (whose gradient is 0 either way).
    return_grad : bool
        Also return d(returned loss)/d(logits), same shape, layout and dtype as ``logits``, 0 beyond
        ``logit_length``. Loss-only calls skip the gradient work.
    num_threads : int, optional
        None: all usable cores (respects OMP_NUM_THREADS); n > 0: n threads; n < 0: counts back from the core
        count; 0 is an error. Results are bit-identical for every thread count.
    memory_limit : int, optional
        Bytes of work space the call may use (the inputs and outputs are not counted). None: the environment's
        ``CYCTC_MEMORY_LIMIT`` (e.g. ``2G``), else 1 GiB. Above it, gradient calls keep a row of states every k
        frames and compute the others again (k about sqrt(T / 2)), and examples run a group at a time: the same
        bits for every budget. A budget below what the largest example needs alone raises MemoryError naming
        that minimum. The CuPy backend does not bound its device memory yet.

    Returns
    -------
    loss : array (B,) in the logits' dtype, or a scalar for reduction "sum"/"mean"
    grad : array like ``logits`` (only with ``return_grad=True``)

    Examples
    --------
    >>> import numpy as np, cyctc
    >>> logits = np.random.default_rng(0).normal(size=(50, 2, 6)).astype(np.float32)   # (T, B, C)
    >>> labels = np.array([[1, 2, 2, 3], [4, 5, 0, 0]])
    >>> loss, grad = cyctc.ctc_loss(labels, logits, [4, 2], [50, 40], return_grad=True)
    >>> loss.shape, grad.shape
    ((2,), (50, 2, 6))
    """
    if type(logits).__module__.startswith("cupy"):
        out = _lean_cupy(labels, logits, label_length, logit_length, logits_time_major, unique, blank_index,
                         reduction, zero_infinity, return_grad, num_threads, memory_limit)
        if out is not None:
            return out
    a = _args.normalize_loss_args(labels, logits, label_length, logit_length, logits_time_major, unique,
                                  blank_index)
    reduction = _args.check_reduction(reduction)
    zero_infinity = _args.as_flag(zero_infinity, "zero_infinity")
    return_grad = _args.as_flag(return_grad, "return_grad")
    nt = resolve_num_threads(num_threads)
    limit = resolve_memory_limit(memory_limit)
    weights = None
    if reduction == "mean":  # formed once on the host; on the device, one copy serves gradient and reduction
        weights = _mean_weights(a.label_length, a.B)
        if a.xp is not np:
            with a.x.device:
                weights = a.xp.asarray(weights)
    # the gradient's factor per example: mean's weights, else 1 for all (None: the backends' default)
    scale = weights if return_grad else None
    loss, grad = compute(a, True, return_grad, scale, nt, limit)
    return finish(loss, grad, a, reduction, zero_infinity, return_grad, weights)


_cuda_backend = None  # cyctc.cuda._backend once a CuPy call has needed it


def _lean_cupy(labels, logits, label_length, logit_length, time_major, unique, blank_index, reduction,
               zero_infinity, return_grad, num_threads, memory_limit):
    """``ctc_loss``'s answer for the common CuPy call -- CuPy logits, host int32/int64 labels and lengths, reduction
    "none", default options -- by ``cuda._backend.lean_loss`` (one upload, the cached plan, the launches); None for
    anything else, which takes the full path (every error included: this raises nothing of its own)."""
    if not (unique is None and zero_infinity is False and (return_grad is True or return_grad is False)
            and (time_major is True or time_major is False) and type(reduction) is str and reduction == "none"
            and num_threads is None
            and (memory_limit is None or (type(memory_limit) is int and memory_limit > 0))):
        return None
    global _cuda_backend
    if _cuda_backend is None:
        from .cuda import _backend as _cuda_backend
    try:
        limit = resolve_memory_limit(memory_limit)  # the environment's CYCTC_MEMORY_LIMIT may be malformed
    except Exception:  # noqa: BLE001 - the full path raises it
        return None
    out = _cuda_backend.lean_loss(logits, labels, label_length, logit_length, time_major, blank_index, return_grad,
                             limit)
    if out is None or return_grad:
        return out
    return out[0]


def _collapse_repeats(labels, label_length):
    """Merge runs of equal labels (``a a b -> a b``) row by row; returns new (labels, label_length)."""
    B, Lmax = labels.shape
    pos = np.arange(Lmax)
    valid = pos < label_length[:, None]
    keep = valid.copy()
    keep[:, 1:] &= labels[:, 1:] != labels[:, :-1]
    new_len = keep.sum(axis=1).astype(np.int32)
    # stable move of the kept entries to the front of each row
    order = np.argsort(~keep, axis=1, kind="stable")
    out = np.take_along_axis(labels, order, axis=1)
    out[pos >= new_len[:, None]] = 0
    return np.ascontiguousarray(out, dtype=np.int32), new_len


def ctc_loss_v1(labels, inputs, sequence_length, preprocess_collapse_repeated=False, ctc_merge_repeated=True,
                ignore_longer_outputs_than_inputs=False, time_major=True, *, label_length=None, return_grad=False,
                num_threads=None, memory_limit=None):
    """CTC loss with ``tf.compat.v1.nn.ctc_loss`` semantics (blank = C - 1).

    Parameters
    ----------
    labels : scipy.sparse (B, Lmax), or dense int (B, Lmax) with ``label_length``
        Class numbers in [0, C - 2] (C - 1 is the blank).
    inputs : float array (T, B, C) if ``time_major`` else (B, T, C)
        Logits (a softmax is applied).
    sequence_length : int array (B,)
        Valid frames per example.
    preprocess_collapse_repeated : bool
        Merge runs of equal labels before the loss (the length check below still uses the uncollapsed length).
    ctc_merge_repeated : bool
        False selects TF1's alternative alignment model, in which a label occupies exactly one frame and equal
        neighbours need no blank between them.
    ignore_longer_outputs_than_inputs : bool
        Examples with more labels than frames get loss 0 and gradient 0; without it they raise ``ValueError``
        naming the example, as TF does.
    label_length : int array (B,), optional (keyword-only)
        Labels per example, for dense labels.
    return_grad, num_threads, memory_limit : as in ``ctc_loss``

    Returns
    -------
    loss : (B,) in the inputs' dtype; with ``return_grad`` also grad like ``inputs``.

    Unlike TF: zero-length labels are valid (the all-blank path), and infeasible examples (too few frames for the
    repeats) give +inf with a zero gradient rather than TF's softmax gradient.
    """
    return _loss_v1(labels, inputs, sequence_length, preprocess_collapse_repeated, ctc_merge_repeated,
                    ignore_longer_outputs_than_inputs, time_major, label_length, return_grad, num_threads,
                    memory_limit=memory_limit)


def _loss_v1(labels, inputs, sequence_length, preprocess_collapse_repeated, ctc_merge_repeated,
             ignore_longer_outputs_than_inputs, time_major, label_length, return_grad, num_threads,
             names=("labels", "inputs", "sequence_length"), memory_limit=None):
    """``ctc_loss_v1``; ``names`` are the caller's names of labels, inputs and sequence_length (for errors)."""
    labels_name, inputs_name, length_name = names
    if sequence_length is None:
        raise ValueError(f"{length_name} is required (valid frames per example)")
    a = _args.normalize_loss_args(labels, inputs, label_length, sequence_length, time_major, None, -1,
                                  logits_name=inputs_name, logit_length_name=length_name, labels_name=labels_name,
                                  time_major_name="time_major")
    collapse = _args.as_flag(preprocess_collapse_repeated, "preprocess_collapse_repeated")
    merge = _args.as_flag(ctc_merge_repeated, "ctc_merge_repeated")
    ignore = _args.as_flag(ignore_longer_outputs_than_inputs, "ignore_longer_outputs_than_inputs")
    return_grad = _args.as_flag(return_grad, "return_grad")
    too_long = a.label_length > a.logit_length
    any_too_long = bool(too_long.any())
    if any_too_long and not ignore:
        b = int(np.argmax(too_long))
        raise ValueError(f"{labels_name} longer than {inputs_name} in example {b}: required {a.label_length[b]}, "
                         f"available {a.logit_length[b]} (pass ignore_longer_outputs_than_inputs=True to skip such "
                         "examples)")
    if collapse:
        a.labels, a.label_length = _collapse_repeats(a.labels, a.label_length)
    nt = resolve_num_threads(num_threads)
    limit = resolve_memory_limit(memory_limit)
    keep = None  # 1.0 / 0.0 per example: the gradient scale, and the mask of the losses set to 0 (None: all 1)
    if any_too_long:
        keep = (~too_long).astype(np.float64)
        if a.xp is not np:
            with a.x.device:
                keep = a.xp.asarray(keep)
    loss, grad = compute(a, merge, return_grad, keep if return_grad else None, nt, limit)
    if any_too_long:  # not loss[mask] = 0: CuPy waits for the device on a boolean-mask assignment
        loss = a.xp.where(keep == 0.0, 0.0, loss)
    return finish(loss, grad, a, "none", False, return_grad)


KERAS_EPSILON = 1e-7


def ctc_batch_cost(y_true, y_pred, input_length, label_length, *, return_grad=False, num_threads=None,
                   memory_limit=None):
    """CTC loss with ``tf.keras.backend.ctc_batch_cost`` semantics.

    Parameters
    ----------
    y_true : int array (B, Lmax)
        Labels (float arrays holding whole numbers are accepted, as Keras casts them); blank = C - 1. Entries past
        label_length are ignored (padding of any value, NaN included).
    y_pred : float array (B, T, C)
        Softmax probabilities, batch-major.
    input_length : int array (B, 1) or (B,)
        Valid frames per example (floats holding whole numbers accepted).
    label_length : int array (B, 1) or (B,)
        Labels per example (floats holding whole numbers accepted).
    return_grad, num_threads, memory_limit : as in ``ctc_loss``; the gradient is d loss / d y_pred.

    Returns
    -------
    loss : (B, 1) in y_pred's dtype; with ``return_grad`` also grad (B, T, C), exactly 0 on frames past
        ``input_length`` (which are never read: NaN there is fine).

    Keras's own rule is kept: the loss is TF1's CTC on log(y_pred + 1e-7) (epsilon added in y_pred's dtype,
    float16 included; the log and the CTC then run in float32 at least), so the effective per-frame distribution is
    (p + eps) / (1 + C * eps) and a frame costs at most ~16.1 nats. Lengths and labels may be floats holding whole
    numbers (Keras casts them); labels past label_length are never read. float16 answers: the loss and gradient are computed in float32 and
    rounded to float16, so gradient entries beyond +-65504 (p below ~1.5e-5 on a frame the labels need) are
    +-inf, without a warning.
    """
    xp = _args.array_module(y_pred)
    # CuPy labels and lengths come to the host for validation in one copy (the only sync of a CuPy call)
    y_true, input_length, label_length = _args.fetch_small(
        [y_true, input_length, label_length], ["y_true", "input_length", "label_length"], like=y_pred)
    probs = _args.float_input(y_pred, "y_pred", 3, xp)
    _args.check_size(probs, "y_pred")
    dtype_out = np.dtype(getattr(y_pred, "dtype", probs.dtype))
    B, T = probs.shape[0], probs.shape[1]
    input_length = _args.int_vector(_args._host(input_length), "input_length", B, whole_floats=True)
    label_length = _args.int_vector(_args._host(label_length), "label_length", B, whole_floats=True)
    y_true = _args.whole_number_labels(y_true, "y_true", label_length)
    return_grad = _args.as_flag(return_grad, "return_grad")
    if dtype_out == np.float16:  # Keras adds epsilon in y_pred's own dtype (1e-7 is 1.19e-7 in float16)
        shifted = (probs.astype(np.float16) + np.float16(KERAS_EPSILON)).astype(probs.dtype)
    else:
        shifted = probs + probs.dtype.type(KERAS_EPSILON)
    with np.errstate(divide="ignore", invalid="ignore"):  # negative "probabilities" give NaN losses, no warning
        z = xp.log(shifted)
    out = _loss_v1(y_true, z, input_length, False, True, False, False, label_length, return_grad, num_threads,
                   names=("y_true", "y_pred", "input_length"), memory_limit=memory_limit)
    if not return_grad:
        return out.astype(dtype_out)[:, None]
    loss, gz = out
    # the chain rule through log only on valid frames: the padding (NaN from a masked softmax, say) is never read
    # and its gradient is exactly 0
    valid = (np.arange(T) < input_length[:, None])[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if xp is np:
            grad = np.divide(gz, shifted, out=np.zeros_like(gz), where=valid)
        else:
            valid = xp.asarray(valid)
            grad = xp.where(valid, gz / xp.where(valid, shifted, 1), 0)
        # float16 answers: entries beyond +-65504 (probabilities below ~1.5e-5 on frames the labels need) are
        # +-inf, as the dtype says
        return loss.astype(dtype_out)[:, None], grad.astype(dtype_out)
