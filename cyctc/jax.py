"""cyctc for JAX: ``ctc_loss`` with ``optax.ctc_loss``'s signature and meaning.

    from cyctc.jax import ctc_loss            # instead of: from optax import ctc_loss

``ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0, log_epsilon=-1e5)`` returns the (B,) losses
of (B, T, K) logits (a log-softmax is applied, as optax does), differentiable with respect to ``logits``
(``jax.custom_vjp``: the gradient ``softmax - occupancy`` is computed in the same kernel call as the loss and kept
for the backward pass). It works under ``jit``, ``grad`` and ``vmap`` (nested too): the kernel runs in a
``jax.pure_callback`` declared with ``vmap_method="expand_dims"``, which receives a vmapped call's whole batch at
once (one kernel call, not one per vmapped element).

* Paddings: 1.0 marks a padded frame / label, 0.0 a used one. Padded frames may be anywhere (optax skips them), and
  so may padded labels (optax requires right-padded labels; here the used ones are taken in order). Padded entries
  are never read and their gradient is exactly 0.
* dtypes: float32 and float64 logits are computed in their own dtype's kernel; float16 and bfloat16 in float32. The
  loss has the logits' dtype.
* Infeasible examples (fewer frames than the labels need) give ``inf`` with a zero gradient; optax gives a large
  finite number made of ``log_epsilon`` (its stand-in for log 0). ``log_epsilon`` is accepted for compatibility and
  changes nothing else: cyctc computes log 0 exactly.
* Where the arrays live: the callback runs on the host. Arrays on a GPU or TPU are copied to the host and the
  results back (a host round trip per call); there is no device path for JAX yet.
* Errors in values (a label out of range, the blank used as a label) are raised inside the callback: JAX reports
  them as its runtime error, whose message carries cyctc's, naming the argument. Shapes and ranks are checked
  before the callback, as plain ``ValueError``/``TypeError``.
* ``num_threads`` (keyword-only, an addition): cyctc's CPU threads, as in ``cyctc.ctc_loss`` (default: all cores).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _args
from . import loss as _loss
from ._threads import resolve_num_threads

__all__ = ["ctc_loss"]

_NAMES = dict(logits_name="logits", logit_length_name="logit_paddings", labels_name="labels",
              label_length_name="label_paddings", blank_name="blank_id")


def _host_ctc(blank_id, num_threads, need_grad, logits, logit_paddings, labels, label_paddings):
    """The callback: numpy in, numpy out. Leading axes (added by vmap, size 1 where an argument is not batched)
    are broadcast together and folded into the batch."""
    lead = np.broadcast_shapes(logits.shape[:-3], logit_paddings.shape[:-2], labels.shape[:-2],
                               label_paddings.shape[:-2])
    B, T, K = logits.shape[-3:]
    N = labels.shape[-1]
    Bf = int(np.prod(lead, dtype=np.int64)) * B  # (not reshape(-1, ...): T = 0 or N = 0 make -1 ambiguous)
    x = np.broadcast_to(logits, lead + (B, T, K)).reshape(Bf, T, K)
    lp = np.broadcast_to(logit_paddings, lead + (B, T)).reshape(Bf, T)
    lab = np.broadcast_to(labels, lead + (B, N)).reshape(Bf, N)
    lbp = np.broadcast_to(label_paddings, lead + (B, N)).reshape(Bf, N)
    il, frame_order = _args.padding_lengths(lp, "logit_paddings", (Bf, T))
    ll, label_order = _args.padding_lengths(lbp, "label_paddings", (Bf, N))
    if frame_order is not None:  # padded frames inside a row: the used ones first, in order
        x = np.take_along_axis(x, frame_order[:, :, None], axis=1)
    if label_order is not None:
        lab = np.take_along_axis(lab, label_order, axis=1)
    a = _args.normalize_loss_args(lab, x, ll, il, False, None, blank_id, **_NAMES)
    loss, grad = _loss.compute(a, True, need_grad, None, resolve_num_threads(num_threads))
    loss = loss.astype(logits.dtype).reshape(lead + (B,))
    if not need_grad:
        return loss
    if frame_order is not None:
        full = np.zeros_like(grad)
        np.put_along_axis(full, frame_order[:, :, None], grad, axis=1)
        grad = full
    return loss, grad.reshape(lead + (B, T, K))


def _callback(blank_id, num_threads, need_grad, logits, logit_paddings, labels, label_paddings):
    B, T, K = logits.shape
    out = jax.ShapeDtypeStruct((B,), logits.dtype)
    if need_grad:
        out = (out, jax.ShapeDtypeStruct((B, T, K), logits.dtype))
    fn = functools.partial(_host_ctc, blank_id, num_threads, need_grad)
    return jax.pure_callback(fn, out, logits, logit_paddings, labels, label_paddings, vmap_method="expand_dims")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ctc(blank_id, num_threads, logits, logit_paddings, labels, label_paddings):
    return _callback(blank_id, num_threads, False, logits, logit_paddings, labels, label_paddings)


def _ctc_fwd(blank_id, num_threads, logits, logit_paddings, labels, label_paddings):
    loss, grad = _callback(blank_id, num_threads, True, logits, logit_paddings, labels, label_paddings)
    return loss, grad


def _ctc_bwd(blank_id, num_threads, grad, g):
    return g[:, None, None].astype(grad.dtype) * grad, None, None, None


_ctc.defvjp(_ctc_fwd, _ctc_bwd)

_LOW = (jnp.float16, jnp.bfloat16)


def ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0, log_epsilon=-1e5, *, num_threads=None):
    """``optax.ctc_loss`` computed by cyctc (see the module docstring).

    Parameters
    ----------
    logits : (B, T, K) float array (unnormalised; a log-softmax is applied)
    logit_paddings : (B, T) array, 1.0 on padded frames, 0.0 on used ones
    labels : (B, N) integer array
    label_paddings : (B, N) array, 1.0 on padded labels, 0.0 on used ones
    blank_id : int
    log_epsilon : accepted for optax compatibility; unused (cyctc's log 0 is exact)
    num_threads : int, optional (keyword-only)

    Returns
    -------
    (B,) losses in the logits' dtype.
    """
    blank_id = _args.as_index(blank_id, "blank_id")
    nt = None if num_threads is None else _args.as_index(num_threads, "num_threads")
    if nt == 0:
        raise ValueError("num_threads must be a nonzero int or None (0 is not a thread count)")
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must hold floating-point values, got dtype {logits.dtype}")
    if logits.ndim != 3:
        raise ValueError(f"logits must have 3 dimensions (B, T, K), got shape {logits.shape}")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape (B, N) with B = {logits.shape[0]}, got {labels.shape}")
    logit_paddings, label_paddings = jnp.asarray(logit_paddings), jnp.asarray(label_paddings)
    if logit_paddings.shape != logits.shape[:2]:
        raise ValueError(f"logit_paddings must have shape {logits.shape[:2]}, got {logit_paddings.shape}")
    if label_paddings.shape != labels.shape:
        raise ValueError(f"label_paddings must have shape {labels.shape}, got {label_paddings.shape}")
    dtype = logits.dtype
    x = logits.astype(jnp.float32) if dtype in _LOW else logits
    loss = _ctc(blank_id, nt, x, logit_paddings, labels, label_paddings)
    return loss.astype(dtype)
