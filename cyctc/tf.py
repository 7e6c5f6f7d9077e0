"""cyctc for TensorFlow: ``ctc_loss`` with ``tf.nn.ctc_loss``'s signature, as a TensorFlow op with a gradient.

    from cyctc.tf import ctc_loss             # instead of: from tf.nn import ctc_loss  (tf.nn.ctc_loss)

The kernel runs in a ``tf.numpy_function`` under ``tf.custom_gradient``: it works eagerly, inside ``tf.function``
(graph mode) and in Keras's ``model.fit``, and its gradient with respect to ``logits`` is computed in the same call
as the loss (``softmax - occupancy``, exact) and scaled by the incoming gradient in the backward pass.

* Arguments: as ``tf.nn.ctc_loss``: dense labels (B, Lmax) with ``label_length``, or a ``tf.SparseTensor`` (then
  ``label_length`` is None); ``logit_length`` (B,); ``logits`` (T, B, C) when ``logits_time_major`` else (B, T, C);
  ``blank_index`` (None or 0: class 0; negative counts from C). ``unique`` is validated and changes nothing.
* Returns (B,) losses in the logits' dtype (float16 and bfloat16 computed in float32).
* Infeasible examples give ``inf`` and a zero gradient; TensorFlow's dense path gives a finite loss >= 706.89 (its
  stand-in for log 0) and a non-zero gradient. Large true losses are exact (README: Differences from TensorFlow).
* The op is not XLA-compilable (a host callback): under ``jit_compile=True`` (``tf.function`` or Keras's
  ``model.compile``) TensorFlow refuses it; Keras's default ``jit_compile="auto"`` works.
* Tensors on a GPU are copied to the host and back (TensorFlow's numpy_function does that); there is no device path
  for TensorFlow yet.
* ``num_threads`` (keyword-only, an addition): cyctc's CPU threads, as in ``cyctc.ctc_loss``.
"""
import numpy as np
import tensorflow as tf

from . import loss as _loss

__all__ = ["ctc_loss"]

_LOW = (tf.float16, tf.bfloat16)


def host_op_with_grad(host_fn, x, others, loss_shape, scale_axes, name):
    """The loss of ``host_fn`` as a TensorFlow op differentiable in ``x``.

    ``host_fn(x, *others)`` (numpy in) returns (loss, d sum(loss) / d x) in x's dtype; ``loss_shape``: the loss's
    static shape; ``scale_axes``: where the loss's axes sit in x (the backward broadcasts the incoming gradient over
    the others). Shared by cyctc.tf and cyctc.keras."""

    @tf.custom_gradient
    def op(v):
        loss, grad = tf.numpy_function(host_fn, [v] + list(others), [v.dtype, v.dtype], stateful=False, name=name)
        loss.set_shape(loss_shape)
        grad.set_shape(v.shape)

        def backward(dy):
            for axis in scale_axes:
                dy = tf.expand_dims(dy, axis)
            return dy * grad

        return loss, backward

    return op(x)


def _sparse_on_host(indices, values, dense_shape):
    """A SparseTensor's parts (numpy, in the host call) as the scipy.sparse COO matrix cyctc takes: its rules --
    each row's positions exactly 0..n-1, in any order, no duplicates -- are then checked with the messages of
    ``cyctc.ctc_loss`` (to_dense would fill a gap with class 0 silently, and refuses unsorted indices)."""
    import scipy.sparse

    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 2)
    shape = tuple(int(n) for n in np.asarray(dense_shape).reshape(-1))
    if len(shape) != 2:
        raise ValueError(f"labels must be a SparseTensor of rank 2 (B, Lmax), got dense_shape {shape}")
    try:
        return scipy.sparse.coo_matrix((np.asarray(values), (indices[:, 0], indices[:, 1])), shape=shape)
    except ValueError as e:  # negative or out-of-shape indices
        raise ValueError(f"labels: malformed SparseTensor ({e})") from None


def ctc_loss(labels, logits, label_length, logit_length, logits_time_major=True, unique=None, blank_index=None,
             name=None, *, num_threads=None):
    """``tf.nn.ctc_loss`` computed by cyctc (see the module docstring)."""
    with tf.name_scope(name or "cyctc_ctc_loss"):
        logits = tf.convert_to_tensor(logits)
        dtype = logits.dtype
        if not dtype.is_floating:
            raise TypeError(f"logits must hold floating-point values, got dtype {dtype.name}")
        x = tf.cast(logits, tf.float32) if dtype in _LOW else logits
        sparse = isinstance(labels, tf.SparseTensor)
        if sparse:
            if label_length is not None:
                raise ValueError("label_length must be None when labels are a SparseTensor (its entries give them)")
            small = [labels.indices, labels.values, labels.dense_shape]  # checked on the host (_sparse_on_host)
        elif label_length is None:
            raise ValueError("label_length is required with dense labels (or pass labels as a tf.SparseTensor)")
        else:
            small = [tf.convert_to_tensor(v) for v in (labels, label_length)]
        has_tl = logit_length is not None
        if has_tl:
            small.append(tf.convert_to_tensor(logit_length))
        has_unique = unique is not None
        if has_unique:
            if not isinstance(unique, (tuple, list)) or len(unique) != 2:
                raise TypeError("unique must be None or the pair (unique_y, unique_idx) from tf.nn.ctc_unique_labels")
            small += [tf.convert_to_tensor(u) for u in unique]
        time_major = bool(logits_time_major)

        def host(xv, *rest):
            if sparse:
                lab, ll, rest = _sparse_on_host(*rest[:3]), None, rest[3:]
            else:
                lab, ll, rest = rest[0], rest[1], rest[2:]
            tl = rest[0] if has_tl else None
            uq = tuple(rest[-2:]) if has_unique else None
            return _loss.ctc_loss(lab, xv, ll, tl, time_major, uq, blank_index, return_grad=True,
                                  num_threads=num_threads)

        if x.shape.rank is not None and x.shape.rank != 3:
            raise ValueError(f"logits must have 3 dimensions, got shape {tuple(x.shape)}")
        batch_axis = 1 if time_major else 0
        loss = host_op_with_grad(host, x, small, [x.shape[batch_axis]], [0, 2] if time_major else [1, 2],
                                 "cyctc_ctc_loss")
        return tf.cast(loss, dtype) if dtype in _LOW else loss
