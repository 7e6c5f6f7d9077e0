"""Label helpers: TensorFlow's ``ctc_unique_labels`` contract."""
import numpy as np


def ctc_unique_labels(labels):
    """Unique labels of each row and, for every position, the index of its label among them (TF's contract).

    Parameters
    ----------
    labels : int array (B, Lmax)
        Dense, zero-padded labels. As in TensorFlow, the padding takes part (0 is a value like any other).

    Returns
    -------
    unique_y : array (B, Lmax), labels' dtype
        Each row's distinct values in order of first appearance, zero-padded.
    unique_idx : int32 array (B, Lmax)
        ``unique_y[b, unique_idx[b, j]] == labels[b, j]``.
    """
    if hasattr(labels, "get") and type(labels).__module__.startswith("cupy"):
        labels = labels.get()
    if type(labels).__module__.startswith(("scipy.sparse", "cupyx.scipy.sparse")):
        raise TypeError(f"labels must be a dense (B, Lmax) integer array (TF's contract: the padding takes part), "
                        f"got {type(labels).__name__}")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as e:  # e.g. ragged nested lists
        raise ValueError(f"labels must be a (B, Lmax) array of integers: {e}") from None
    if labels.size == 0 and labels.dtype.kind == "f" and labels.ndim == 2:
        labels = labels.astype(np.int64)  # [[], []]: numpy calls an empty list float
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (B, Lmax), got {labels.shape}")
    B, Lmax = labels.shape
    unique_y = np.zeros_like(labels)
    unique_idx = np.zeros((B, Lmax), dtype=np.int32)
    for b in range(B):
        vals, first, inverse = np.unique(labels[b], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")      # distinct values by first appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        unique_y[b, :order.size] = vals[order]
        unique_idx[b] = rank[inverse.reshape(-1)]
    return unique_y, unique_idx
