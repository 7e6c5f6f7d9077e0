"""cyctc for Keras (TensorFlow backend): ``ctc_batch_cost``, the function Keras code calls today.

    from cyctc.keras import ctc_batch_cost    # instead of: from keras.backend import ctc_batch_cost
                                              #   (tf.keras.backend.ctc_batch_cost)

``ctc_batch_cost(y_true, y_pred, input_length, label_length)``: softmax probabilities ``y_pred`` (B, T, C), labels
``y_true`` (B, Lmax) with the blank as class C - 1, lengths (B, 1) or (B,); returns the (B, 1) losses as a
TensorFlow op with its gradient with respect to ``y_pred``: Keras's own numbers (TF1's CTC on log(y_pred + 1e-7),
see ``cyctc.ctc_batch_cost``), exact instead of within float32's error. Works eagerly, in ``tf.function`` and in
``model.fit`` (with Keras's default ``jit_compile="auto"``; not ``jit_compile=True``: the op is a host callback,
see ``cyctc.tf``). Labels and lengths may be
float tensors holding whole numbers, as Keras casts them.
"""
import tensorflow as tf

from . import loss as _loss
from .tf import host_op_with_grad

__all__ = ["ctc_batch_cost"]

_LOW = (tf.float16, tf.bfloat16)


def ctc_batch_cost(y_true, y_pred, input_length, label_length, *, num_threads=None):
    """``tf.keras.backend.ctc_batch_cost`` computed by cyctc (see the module docstring)."""
    y_pred = tf.convert_to_tensor(y_pred)
    dtype = y_pred.dtype
    if not dtype.is_floating:
        raise TypeError(f"y_pred must hold floating-point values, got dtype {dtype.name}")
    if y_pred.shape.rank is not None and y_pred.shape.rank != 3:
        raise ValueError(f"y_pred must have 3 dimensions (B, T, C), got shape {tuple(y_pred.shape)}")
    x = tf.cast(y_pred, tf.float32) if dtype == tf.bfloat16 else y_pred
    small = [tf.convert_to_tensor(v) for v in (y_true, input_length, label_length)]

    def host(yp, yt, il, ll):
        return _loss.ctc_batch_cost(yt, yp, il, ll, return_grad=True, num_threads=num_threads)

    loss = host_op_with_grad(host, x, small, [x.shape[0], 1], [2], "cyctc_ctc_batch_cost")
    return tf.cast(loss, dtype) if dtype == tf.bfloat16 else loss
