"""Every public entry that runs on a CUDA device, on one small random problem: shared by tests/test_cuda_glue.py
(fake CuPy, on the CPU) and tests/test_gpu.py (a real device), so that both check the same list of calls."""

import numpy as np

import cyctc

B, T, C, L = 5, 24, 7, 6


def is_blank_last(name):
    """The entries whose blank is the last class (TF1 / Keras / the decoders)."""
    return name.startswith(("ctc_loss_v1", "ctc_batch_cost", "ctc_greedy"))


def problem(seed=0, blank=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, C)).astype(np.float32)
    ll = rng.integers(1, L + 1, B).astype(np.int32)
    tl = rng.integers(2 * L + 1, T + 1, B).astype(np.int32)
    lo, hi = (1, C) if blank == 0 else (0, C - 1)
    labels = rng.integers(lo, hi, (B, L)).astype(np.int32)
    return x, labels, ll, tl


def keras_probs(x):
    """The (B, T, C) softmax probabilities the ctc_batch_cost entries get for the time-major logits x."""
    return np.exp(x - np.logaddexp.reduce(x, axis=-1, keepdims=True)).swapaxes(0, 1).copy()


def public_calls(x, labels, ll, tl):
    """Every public entry that runs on the device, as (name, function of (to_device(small), to_device(big)))."""
    probs = keras_probs(x)
    tl_short = tl.copy()
    tl_short[1] = 2  # example 1 has more labels than frames: ignored by ctc_loss_v1
    uniq = cyctc.ctc_unique_labels(labels)
    labels_f, tl_col, ll_col = labels.astype(np.float32), tl[:, None], ll[:, None]
    return [
        ("ctc_loss none", lambda s, d: cyctc.ctc_loss(s(labels), d(x), s(ll), s(tl), return_grad=True)),
        ("ctc_loss none loss-only", lambda s, d: cyctc.ctc_loss(s(labels), d(x), s(ll), s(tl))),
        ("ctc_loss sum", lambda s, d: cyctc.ctc_loss(s(labels), d(x), s(ll), s(tl), reduction="sum",
                                                     return_grad=True)),
        ("ctc_loss mean", lambda s, d: cyctc.ctc_loss(s(labels), d(x), s(ll), s(tl), reduction="mean",
                                                      return_grad=True)),
        ("ctc_loss mean loss-only", lambda s, d: cyctc.ctc_loss(s(labels), d(x), s(ll), s(tl), reduction="mean")),
        ("ctc_loss zero_infinity batch-major", lambda s, d: cyctc.ctc_loss(
            s(labels), d(x.swapaxes(0, 1).copy()), s(ll), s(tl), logits_time_major=False, zero_infinity=True,
            return_grad=True)),
        ("ctc_loss unique", lambda s, d: cyctc.ctc_loss(
            s(labels), d(x), s(ll), s(tl), unique=tuple(s(u) for u in uniq),
            return_grad=True)),
        ("ctc_loss_v1", lambda s, d: cyctc.ctc_loss_v1(s(labels), d(x), s(tl), label_length=s(ll),
                                                       return_grad=True)),
        ("ctc_loss_v1 ignore_longer", lambda s, d: cyctc.ctc_loss_v1(
            s(labels), d(x), s(tl_short), label_length=s(ll), ignore_longer_outputs_than_inputs=True,
            preprocess_collapse_repeated=True, return_grad=True)),
        ("ctc_loss_v1 merge_repeated=False", lambda s, d: cyctc.ctc_loss_v1(
            s(labels), d(x), s(tl), label_length=s(ll), ctc_merge_repeated=False)),
        ("ctc_batch_cost", lambda s, d: cyctc.ctc_batch_cost(s(labels), d(probs), s(tl), s(ll), return_grad=True)),
        ("ctc_batch_cost float labels", lambda s, d: cyctc.ctc_batch_cost(
            s(labels_f), d(probs), s(tl_col), s(ll_col))),
        ("ctc_greedy_decoder", lambda s, d: cyctc.ctc_greedy_decoder(d(x), s(tl))),
        ("ctc_greedy_decoder no lengths", lambda s, d: cyctc.ctc_greedy_decoder(d(x), None, merge_repeated=False)),
    ]


CALL_NAMES = [c[0] for c in public_calls(*problem())]
# entries that take no labels or lengths: nothing to put on the device
NO_SMALL_ARRAYS = {"ctc_greedy_decoder no lengths"}
# (entry, labels/lengths on the device?) pairs that the synchronisation tests check
SYNC_CASES = [(n, d) for n in CALL_NAMES for d in (False, True) if not (d and n in NO_SMALL_ARRAYS)]
SYNC_IDS = [f"{n}-{'device' if d else 'host'}-lengths" for n, d in SYNC_CASES]
