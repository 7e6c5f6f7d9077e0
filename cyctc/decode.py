"""CTC decoders with TensorFlow's and Keras's semantics: greedy (best path) and prefix beam search.

Shapes: B batch, T frames, C classes (blank included), K = top_paths.

* ``ctc_greedy_decoder``       -- ``tf.nn.ctc_greedy_decoder``
* ``ctc_beam_search_decoder``  -- ``tf.nn.ctc_beam_search_decoder`` (``merge_repeated=True``: TF1's variant)
* ``ctc_decode``               -- ``tf.keras.backend.ctc_decode``

Decoding runs on the CPU in C under ``nogil``, in parallel over the batch. The greedy decoder runs on the GPU for
CuPy logits; the beam search copies CuPy inputs to the host.
Results do not depend on ``num_threads``.
"""
from typing import List, NamedTuple

import numpy as np

from . import _decode
from . import _decode_args as args
from ._args import array_module
from ._decode_args import host
from ._threads import resolve_num_threads

__all__ = ["SparseDecoded", "GreedyDecoderResult", "BeamSearchDecoderResult", "ctc_greedy_decoder",
           "ctc_beam_search_decoder", "ctc_decode"]

# Keras's backend.epsilon(), added to the probabilities before the log in ctc_decode
KERAS_EPSILON = 1e-7


class SparseDecoded:
    """One decoded sequence per batch element, laid out like TF's ``SparseTensor``.

    Attributes
    ----------
    indices : int64 (N, 2)
        ``[b, position]`` of every decoded symbol, row-major (by example, then position).
    values : int64 (N,)
        The decoded classes. Class 0 is an ordinary label: it is stored like any other value.
    dense_shape : int64 (2,)
        ``(B, longest decoded sequence in the batch)``.
    """

    __slots__ = ("_indices", "_values", "_dense_shape", "_paths", "_path_length")

    def __init__(self, indices, values, dense_shape):
        self._indices = indices
        self._values = values
        self._dense_shape = dense_shape
        self._paths = self._path_length = None

    @classmethod
    def _from_paths(cls, paths, path_length):
        """From int32 paths (B, Tp) whose row b holds path_length[b] symbols. numpy: built now. CuPy: the result
        keeps the padded paths on the device and builds indices/values there at first use (``indices``,
        ``values``, ``dense_shape``, ``to_dense``, ...), with one device-to-host copy of the lengths: the decoder
        call itself never waits for the device. dense_shape is always a small host array, as TF's."""
        if array_module(paths) is not np:
            out = cls(None, None, None)
            out._paths, out._path_length = paths, path_length
            return out
        B, Tp = paths.shape
        mask = np.arange(Tp) < path_length[:, None]
        rows, cols = np.nonzero(mask)
        indices = np.stack([rows, cols], axis=1).astype(np.int64).reshape(-1, 2)
        values = paths[mask].astype(np.int64)
        longest = int(path_length.max()) if B else 0
        return cls(indices, values, np.array([B, longest], dtype=np.int64))

    def _build(self):
        """Indices and values of a device result (see ``_from_paths``): the lengths come to the host (one copy),
        the (row, column) pairs are formed there and go back in one copy, the values are gathered on the device."""
        if self._paths is None:
            return
        xp = array_module(self._paths)
        n = host(self._path_length).astype(np.int64)
        B = n.shape[0]
        starts = np.cumsum(n) - n
        rows = np.repeat(np.arange(B, dtype=np.int64), n)
        cols = np.arange(rows.shape[0], dtype=np.int64) - np.repeat(starts, n)
        with self._paths.device:
            indices = xp.asarray(np.stack([rows, cols], axis=1).reshape(-1, 2))
            values = self._paths[indices[:, 0], indices[:, 1]].astype(np.int64)
        self._indices, self._values = indices, values
        self._dense_shape = np.array([B, int(n.max()) if B else 0], dtype=np.int64)
        self._paths = self._path_length = None

    @property
    def indices(self):
        self._build()
        return self._indices

    @property
    def values(self):
        self._build()
        return self._values

    @property
    def dense_shape(self):
        self._build()
        return self._dense_shape

    @property
    def lengths(self):
        """int64 (B,): the length of each decoded sequence."""
        if self._paths is not None:  # a device result not built yet: the lengths are at hand
            return self._path_length.astype(np.int64)
        xp = array_module(self.values)
        return xp.bincount(self.indices[:, 0], minlength=int(self.dense_shape[0])).astype(np.int64)

    def to_dense(self, default=-1, maxlen=None):
        """int64 (B, maxlen) with each sequence left-aligned and padded with ``default``.

        ``maxlen`` defaults to ``dense_shape[1]``; it must be at least that.
        """
        B, longest = (int(v) for v in self.dense_shape)
        width = longest if maxlen is None else args.as_index(maxlen, "maxlen")
        default = args.as_index(default, "default")
        if not -2**63 <= default < 2**63:
            raise ValueError(f"default must fit in int64, got {default}")
        if width < longest:
            raise ValueError(f"maxlen must be >= the longest decoded sequence ({longest}), got {width}")
        out = array_module(self.values).full((B, width), default, dtype=np.int64)
        out[self.indices[:, 0], self.indices[:, 1]] = self.values
        return out

    def to_scipy(self):
        """``scipy.sparse.csr_matrix`` of shape ``dense_shape`` and dtype int64.

        Every decoded symbol is a stored entry, class 0 included (an explicit zero): use ``.indptr`` / ``.indices``
        / ``.data`` (or ``getnnz(axis=1)`` for the lengths) rather than ``toarray()``, which cannot tell a decoded 0
        from padding. Do not call ``eliminate_zeros()`` on it.
        """
        import scipy.sparse

        B, longest = (int(v) for v in self.dense_shape)
        indices, values = host(self.indices), host(self.values)  # a device result comes to the host here
        counts = np.bincount(indices[:, 0], minlength=B)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return scipy.sparse.csr_matrix((values.copy(), indices[:, 1].copy(), indptr), shape=(B, longest))

    def to_list(self):
        """A list of B int64 arrays (on the host), the decoded sequence of each example."""
        ends = np.cumsum(host(self.lengths))
        return np.split(host(self.values), ends[:-1]) if len(ends) else []

    def __repr__(self):
        return (f"SparseDecoded(dense_shape={tuple(int(v) for v in self.dense_shape)}, "
                f"nnz={self.values.shape[0]}, values={self.values!r})")


class GreedyDecoderResult(NamedTuple):
    """``(decoded, neg_sum_logits)`` as TF returns them; unpacks like a tuple.

    decoded : list of one :class:`SparseDecoded`
    neg_sum_logits : (B, 1), the inputs' dtype (float32 for float16): ``-sum_t max_c inputs[t, b, c]`` over the
        valid frames
    """

    decoded: List[SparseDecoded]
    neg_sum_logits: np.ndarray


class BeamSearchDecoderResult(NamedTuple):
    """``(decoded, log_probabilities)`` as TF returns them; unpacks like a tuple.

    decoded : list of K :class:`SparseDecoded`, best first
    log_probabilities : (B, K), the inputs' dtype (float32 for float16): log probability of each returned
        sequence, summed over the alignments the beam kept
    """

    decoded: List[SparseDecoded]
    log_probabilities: np.ndarray


def _greedy(x, length, blank, merge_repeated, num_threads):
    B, T = x.shape[0], x.shape[1]
    out = np.empty((B, max(T, 1)), dtype=np.int32)
    out_length = np.empty(B, dtype=np.int32)
    neg_sum = np.empty(B, dtype=np.float64)
    _decode.greedy(x, length, blank, merge_repeated, out, out_length, neg_sum, num_threads)
    return out, out_length, neg_sum


def _beam(x, length, blank, beam_width, top_paths, merge_repeated, num_threads):
    B, T = x.shape[0], x.shape[1]
    paths = np.empty((B, top_paths, max(T, 1)), dtype=np.int32)
    path_length = np.empty((B, top_paths), dtype=np.int32)
    log_probs = np.empty((B, top_paths), dtype=np.float64)
    if _decode.beam_search(x, length, blank, beam_width, top_paths, merge_repeated, paths, path_length, log_probs,
                           num_threads):
        raise MemoryError("ctc_beam_search_decoder: out of memory while growing the beam's prefix tree")
    return paths, path_length, log_probs


def ctc_greedy_decoder(inputs, sequence_length, merge_repeated=True, blank_index=None, *, time_major=True,
                       num_threads=None):
    """Greedy (best path) decoding, as ``tf.nn.ctc_greedy_decoder``.

    For each valid frame the arg-max class is taken (the first one on ties). With ``merge_repeated``, a frame
    whose class equals the previous frame's class is dropped -- the comparison sees blanks too, so ``a _ a``
    decodes to ``a a``. Blanks are then removed.

    Parameters
    ----------
    inputs : float16/32/64 (T, B, C), or (B, T, C) with ``time_major=False``
        Logits (or log-probabilities: the arg-max is the same). Any strides.
    sequence_length : int (B,) or None
        Valid frames of each example, in [0, T]; None: all T.
    merge_repeated : bool
    blank_index : int or None
        The blank class; None: C - 1; negative values count from C.
    time_major : bool, keyword-only
    num_threads : int or None, keyword-only
        None: all usable cores; n > 0: n threads; n < 0: all but |n| - 1. The result never depends on it.

    Returns
    -------
    GreedyDecoderResult
        ``(decoded, neg_sum_logits)``: ``decoded`` is a list holding one :class:`SparseDecoded`; ``neg_sum_logits``
        (B, 1) is ``-sum_t max_c inputs[t, b, c]`` over the valid frames, on the raw inputs, summed in float64 and
        answered in the inputs' dtype (float32 for float16 inputs).
    """
    if array_module(inputs) is not np:  # CuPy logits: decoded on their device
        return _greedy_on_device(inputs, sequence_length, merge_repeated, blank_index, time_major)
    x, dtype_out = args.float_frames(inputs, "inputs", args.as_flag(time_major, "time_major"))
    B, T, C = x.shape
    length = args.lengths(sequence_length, "sequence_length", B, T)
    merge = args.as_flag(merge_repeated, "merge_repeated")
    blank = args.blank_class(blank_index, C, default=C - 1)
    nt = resolve_num_threads(num_threads)
    out, out_length, neg_sum = _greedy(x, length, blank, merge, nt)
    return GreedyDecoderResult([SparseDecoded._from_paths(out, out_length)],
                               _scores(neg_sum, dtype_out).reshape(B, 1))


def _scores(values, dtype_out):
    """float64 scores in the dtype decoders answer in (float32 at least); a score beyond that dtype's range is
    +-inf, as the dtype says, without a RuntimeWarning."""
    with np.errstate(over="ignore"):
        return values.astype(args.score_dtype(dtype_out))


def _greedy_on_device(inputs, sequence_length, merge_repeated, blank_index, time_major):
    """ctc_greedy_decoder for CuPy logits: the same checks, the arg-max kernel of cyctc/cuda/greedy.cu."""
    import cupy

    from ._args import fetch_small, float_input, kernel_view
    from .cuda import _backend

    dtype_out = np.dtype(inputs.dtype)
    # CuPy lengths come to the host for validation: the call's only sync (none with host lengths)
    sequence_length, = fetch_small([sequence_length], ["sequence_length"], like=inputs)
    x = float_input(inputs, "inputs", 3, cupy)
    if x.shape[2] < 1:
        raise ValueError("inputs has an empty class axis (C = 0)")
    if args.as_flag(time_major, "time_major"):
        x = x.swapaxes(0, 1)
    x = kernel_view(x, cupy)
    B, T, C = x.shape
    length = args.lengths(sequence_length, "sequence_length", B, T)
    merge = args.as_flag(merge_repeated, "merge_repeated")
    blank = args.blank_class(blank_index, C, default=C - 1)
    out, out_length, neg_sum = _backend.greedy_decode(x, length, blank, merge)
    return GreedyDecoderResult([SparseDecoded._from_paths(out, out_length)],
                               _scores(neg_sum, dtype_out).reshape(B, 1))


def ctc_beam_search_decoder(inputs, sequence_length, beam_width=100, top_paths=1, *, merge_repeated=False,
                            time_major=True, num_threads=None):
    """Prefix beam search, as ``tf.nn.ctc_beam_search_decoder`` (``merge_repeated=True``: TF1's version).

    The blank is class C - 1 and the logits are log-softmax normalised per frame. For every prefix in the beam the
    search keeps the probability of the alignments that end in a blank and of those that end in its last label;
    ``log_probabilities`` are these sums (over the alignments the beam kept, not over all alignments). It follows
    TF's algorithm step by step, so sequences and scores agree with TF (scores to float rounding; TF computes in
    the input precision, cyctc in float64). Beam search is a heuristic: exact ties between scores may be ranked
    differently from TF.

    Parameters
    ----------
    inputs : float16/32/64 (T, B, C), or (B, T, C) with ``time_major=False``
        Logits. Any strides.
    sequence_length : int (B,) or None
        Valid frames of each example, in [0, T]; None: all T.
    beam_width : int >= 1
    top_paths : int in [1, beam_width]
    merge_repeated : bool, keyword-only
        False (TF2): the returned label sequences are the prefixes themselves. True (TF1's default): equal
        neighbours in a returned sequence are collapsed (``a a b`` -> ``a b``), so two paths may read the same.
    time_major : bool, keyword-only
    num_threads : int or None, keyword-only

    Returns
    -------
    BeamSearchDecoderResult
        ``(decoded, log_probabilities)``: a list of ``top_paths`` :class:`SparseDecoded` (best first) and
        (B, top_paths) log probabilities in the inputs' dtype (float32 for float16 inputs). Where the beam holds
        fewer than ``top_paths`` prefixes (very short inputs; TF raises there), the missing paths are empty with log
        probability -inf.
        An example whose valid frames hold NaN or +inf gets empty paths and NaN log probabilities.
    """
    x, dtype_out = args.float_frames(inputs, "inputs", args.as_flag(time_major, "time_major"))
    B, T, C = x.shape
    length = args.lengths(sequence_length, "sequence_length", B, T)
    beam_width, top_paths = args.beam_sizes(beam_width, top_paths)
    merge = args.as_flag(merge_repeated, "merge_repeated")
    nt = resolve_num_threads(num_threads)
    paths, path_length, log_probs = _beam(x, length, C - 1, beam_width, top_paths, merge, nt)
    decoded = [SparseDecoded._from_paths(paths[:, k], path_length[:, k]) for k in range(top_paths)]
    return BeamSearchDecoderResult(decoded, _scores(log_probs, dtype_out))


def ctc_decode(y_pred, input_length, greedy=True, beam_width=100, top_paths=1, *, num_threads=None):
    """Decode softmax outputs, as ``tf.keras.backend.ctc_decode``.

    Exactly Keras's recipe: the inputs become ``log(y_pred + 1e-7)`` (epsilon added in y_pred's dtype), then
    ``greedy=True`` runs the greedy decoder (blank C - 1, repeats merged) and ``greedy=False`` TF1's beam search
    (blank C - 1, ``merge_repeated=True``), and each decoded sequence is written densely, padded with -1.

    Parameters
    ----------
    y_pred : float16/32/64 (B, T, C)
        Softmax probabilities, batch-major; the blank is class C - 1.
    input_length : int (B,) or (B, 1)
        Valid frames of each example, in [0, T] (floats holding whole numbers accepted, as Keras casts them).
    greedy : bool
    beam_width : int >= 1
        Beam width when ``greedy`` is False.
    top_paths : int in [1, beam_width]
        Paths returned when ``greedy`` is False (greedy always returns one).
    num_threads : int or None, keyword-only

    Returns
    -------
    (decoded, log_prob) : tuple
        ``decoded``: list of int64 (B, T) arrays (one, or ``top_paths`` best first), padded with -1.
        ``log_prob``: greedy: (B, 1) holding ``-sum_t log(max_c y_pred[b, t, c] + 1e-7)`` -- Keras returns the
        greedy decoder's ``neg_sum_logits`` here, a positive number; beam: (B, top_paths) log probabilities.
        Both in y_pred's dtype (float32 for float16 inputs).
    """
    y = args.host(y_pred)
    if not isinstance(y, np.ndarray):
        try:
            y = np.asarray(y)
        except Exception as e:
            raise TypeError(f"y_pred must be an array of floats: {e}") from None
    if y.dtype.kind != "f" or y.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"y_pred must hold float16, float32 or float64 values, got dtype {y.dtype}")
    if y.ndim != 3:
        raise ValueError(f"y_pred must have 3 dimensions (B, T, C), got shape {tuple(y.shape)}")
    args.check_size(y, "y_pred")
    greedy = args.as_flag(greedy, "greedy")
    # checked even when greedy (which ignores them, as Keras): a beam_width of 0 or "10" is a mistake either way
    beam_width, top_paths = args.beam_sizes(beam_width, top_paths)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(y + y.dtype.type(KERAS_EPSILON))
    x, dtype_out = args.float_frames(logp, "y_pred", False)
    B, T, C = x.shape
    length = args.lengths(input_length, "input_length", B, T, whole_floats=True)
    nt = resolve_num_threads(num_threads)
    if greedy:
        out, out_length, neg_sum = _greedy(x, length, C - 1, True, nt)
        paths, path_length, log_prob = out[:, None, :], out_length[:, None], neg_sum[:, None]
    else:
        paths, path_length, log_prob = _beam(x, length, C - 1, beam_width, top_paths, True, nt)
    decoded = []
    for k in range(paths.shape[1]):
        dense = np.full((B, T), -1, dtype=np.int64)
        mask = np.arange(T) < path_length[:, k, None]
        dense[mask] = paths[:, k, :T][mask]
        decoded.append(dense)
    return decoded, _scores(log_prob, dtype_out)
