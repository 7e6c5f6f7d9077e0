"""cyctc.tf and cyctc.keras against tf.nn.ctc_loss and tf.keras.backend.ctc_batch_cost: values and gradients within
their float32 error, eagerly and in graph mode, sparse labels, both layouts, blank choices, half precision, errors,
and a small Keras model trained with model.fit on the CPU."""
import os

import numpy as np
import pytest

from conftest import toolchain_unavailable

pytestmark = pytest.mark.frameworks

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import tensorflow as tf
except ImportError as e:  # CI installs tensorflow-cpu through the test extra: there, a missing one fails
    tf = None
    _why = str(e)

if tf is None:
    toolchain_unavailable("the TensorFlow/Keras bridges' tests", f"tensorflow not installed ({_why}); "
                          "pip install 'cyctc[tf]'")

import cyctc  # noqa: E402
import cyctc.keras as ck  # noqa: E402
import cyctc.tf as ctf  # noqa: E402
from ctc_reference import random_problem  # noqa: E402

RTOL, ATOL = 1e-4, 2e-5  # TensorFlow's float32 CTC is the reference: its own rounding error sets the tolerance


def _case(seed, B=4, T=16, C=6, L=5, blank=0):
    rng = np.random.default_rng(seed)
    x, labels, ll, tl = random_problem(rng, B, T, C, L, blank=blank, dtype=np.float32, scale=2.0)
    return x, labels, ll, tl   # x batch-major (B, T, C)


def _grads(fn, x, w):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = fn(x)
        total = tf.reduce_sum(tf.reshape(loss, [-1]) * w)
    return loss.numpy(), tape.gradient(total, x).numpy()


@pytest.mark.parametrize("time_major", [True, False], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("blank", [0, -1], ids=["blank-0", "blank-last"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_ctc_loss_equals_tf(time_major, blank, graph):
    for seed in range(3):
        C = 6
        x, labels, ll, tl = _case(seed, C=C, blank=blank % C)
        xin = x.swapaxes(0, 1).copy() if time_major else x
        w = tf.constant(np.linspace(0.5, 1.5, x.shape[0]), tf.float32)
        out = []
        for impl in (tf.nn.ctc_loss, ctf.ctc_loss):
            def fn(v, impl=impl):
                return impl(labels, v, ll, tl, logits_time_major=time_major, blank_index=blank)
            out.append(_grads(tf.function(fn) if graph else fn, xin, w))
        (l0, g0), (l1, g1) = out
        assert l1.dtype == np.float32 and l1.shape == l0.shape and g1.shape == g0.shape
        np.testing.assert_allclose(l1, l0, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g1, g0, rtol=RTOL, atol=ATOL)


def test_sparse_labels_and_unique():
    x, labels, ll, tl = _case(3)
    xt = x.swapaxes(0, 1).copy()
    dense = np.where(np.arange(labels.shape[1]) < ll[:, None], labels, 0)
    sp = tf.sparse.from_dense(dense)
    want = tf.nn.ctc_loss(sp, xt, None, tl, blank_index=0).numpy()
    np.testing.assert_allclose(ctf.ctc_loss(sp, xt, None, tl, blank_index=0).numpy(), want, rtol=RTOL)
    unique = tf.nn.ctc_unique_labels(dense)
    np.testing.assert_allclose(ctf.ctc_loss(dense, xt, ll, tl, unique=unique).numpy(), want, rtol=RTOL)


def test_infeasible_and_empty():
    x, labels, ll, tl = _case(4)
    labels[1, :3], ll[1], tl[1] = 2, 3, 4      # three equal labels need five frames
    ll[2], labels[2] = 0, 0                    # empty label sequence
    loss, grad = _grads(lambda v: ctf.ctc_loss(labels, v, ll, tl, logits_time_major=False), x, tf.ones(4))
    assert np.isinf(loss[1]) and np.all(grad[1] == 0) and np.isfinite(loss[[0, 2, 3]]).all()
    want = tf.nn.ctc_loss(labels, x, ll, tl, logits_time_major=False).numpy()
    np.testing.assert_allclose(loss[[0, 2, 3]], want[[0, 2, 3]], rtol=RTOL)
    assert want[1] >= 706.89  # TensorFlow's dense path: log(1e-307) stands for log 0 (README: Differences)


def test_float16_and_bfloat16():
    x, labels, ll, tl = _case(5)
    ref, gref = _grads(lambda v: ctf.ctc_loss(labels, v, ll, tl, logits_time_major=False), x, tf.ones(4))
    for low in (tf.float16, tf.bfloat16):
        xl = tf.cast(x, low)
        with tf.GradientTape() as tape:
            tape.watch(xl)
            loss = ctf.ctc_loss(labels, xl, ll, tl, logits_time_major=False)
        grad = tape.gradient(loss, xl)
        assert loss.dtype == low and grad.dtype == low
        np.testing.assert_allclose(tf.cast(loss, tf.float32).numpy(), ref, rtol=2e-2)
        np.testing.assert_allclose(tf.cast(grad, tf.float32).numpy(), gref, rtol=5e-2, atol=2e-2)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_keras_ctc_batch_cost_equals_keras(graph):
    for seed in range(3):
        x, labels, ll, tl = _case(seed, blank=5)   # Keras: the blank is the last class
        y_pred = tf.nn.softmax(x).numpy()
        il, lab_len = tl[:, None], ll[:, None]
        y_true = labels.astype(np.float32)        # Keras code often passes float labels
        w = tf.constant(np.linspace(0.5, 1.5, x.shape[0]), tf.float32)
        out = []
        for impl in (tf.keras.backend.ctc_batch_cost, ck.ctc_batch_cost):
            def fn(v, impl=impl):
                return impl(y_true, v, il, lab_len)
            out.append(_grads(tf.function(fn) if graph else fn, y_pred, w))
        (l0, g0), (l1, g1) = out
        assert l1.shape == l0.shape == (x.shape[0], 1)
        np.testing.assert_allclose(l1, l0, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(g1, g0, rtol=RTOL, atol=1e-4 * np.abs(g0).max())


def test_keras_model_fit():
    """A small Keras model (TensorFlow backend) trains with cyctc's ctc_batch_cost as its loss, through model.fit
    (a compiled tf.function train step) on the CPU."""
    import keras

    keras.utils.set_random_seed(0)
    B, T, F, C, L = 16, 20, 4, 5, 4
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((B, T, F)).astype(np.float32)
    labels = rng.integers(0, C - 1, size=(B, L)).astype(np.float32)   # blank = C - 1

    def loss(y_true, y_pred):
        n = tf.shape(y_pred)[0]
        return ck.ctc_batch_cost(y_true, y_pred, tf.fill([n, 1], T), tf.fill([n, 1], L))

    model = keras.Sequential([keras.Input((T, F)), keras.layers.Dense(32, activation="tanh"),
                              keras.layers.Dense(C, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)   # jit_compile "auto", Keras's default
    hist = model.fit(feats, labels, batch_size=8, epochs=15, verbose=0)
    losses = hist.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    # the trained model's loss, by Keras's own function
    y = model.predict(feats, verbose=0)
    ours = ck.ctc_batch_cost(labels, y, np.full((B, 1), T), np.full((B, 1), L)).numpy()
    theirs = tf.keras.backend.ctc_batch_cost(labels, y, np.full((B, 1), T), np.full((B, 1), L)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)


@pytest.mark.parametrize("call, name", [
    (lambda x, lab, ll, tl: ctf.ctc_loss(lab, x, ll + 9, tl), "label_length"),
    (lambda x, lab, ll, tl: ctf.ctc_loss(lab, x, ll, tl + 99), "logit_length"),
    (lambda x, lab, ll, tl: ctf.ctc_loss(lab + 9, x, ll, tl), "labels"),
    (lambda x, lab, ll, tl: ctf.ctc_loss(lab, x, ll, tl, blank_index=99), "blank_index"),
    (lambda x, lab, ll, tl: ck.ctc_batch_cost(lab.astype(np.float32) + 0.5, tf.transpose(x, [1, 0, 2]), tl, ll),
     "y_true"),
    (lambda x, lab, ll, tl: ck.ctc_batch_cost(lab, tf.transpose(x, [1, 0, 2]), tl[:2], ll), "input_length"),
], ids=["label-length", "logit-length", "labels", "blank", "y_true", "input_length"])
def test_errors_name_argument(call, name):
    """Errors raised by cyctc's validation on the host reach the caller through TensorFlow with cyctc's message."""
    x, labels, ll, tl = _case(6)
    with pytest.raises(Exception, match=name):
        call(tf.constant(x.swapaxes(0, 1).copy()), labels, ll, tl)


def test_static_errors():
    x, labels, ll, tl = _case(7)
    with pytest.raises(TypeError, match="logits"):
        ctf.ctc_loss(labels, labels, ll, tl)
    with pytest.raises(ValueError, match="logits"):
        ctf.ctc_loss(labels, x[0], ll, tl)
    with pytest.raises(ValueError, match="label_length"):
        ctf.ctc_loss(labels, x, None, tl)
    with pytest.raises(ValueError, match="y_pred"):
        ck.ctc_batch_cost(labels, x[0], tl, ll)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_sparse_tensor_labels_follow_cyctc_rules(graph):
    """A SparseTensor is checked by the rules of cyctc.ctc_loss's scipy.sparse labels. It was densified with
    tf.sparse.to_dense first: a row with a gap ([0, 0] and [0, 2] stored) silently got class 0 at position 1 (a
    wrong loss with blank_index=-1), and unsorted indices raised TensorFlow's SparseToDense error."""
    import scipy.sparse

    x, _, _, tl = _case(8, B=2, T=12, C=6)
    xt = tf.constant(x.swapaxes(0, 1).copy())
    run = tf.function(ctf.ctc_loss) if graph else ctf.ctc_loss
    gap = tf.SparseTensor([[0, 0], [0, 2], [1, 0]], [1, 3, 2], [2, 3])
    dup = tf.SparseTensor([[0, 0], [0, 0], [1, 0]], [1, 3, 2], [2, 3])
    for bad, words in [(gap, "gap before position 2"), (dup, "duplicate entries at position (0, 0)")]:
        with pytest.raises(Exception, match=words.replace("(", r"\(").replace(")", r"\)")):
            run(bad, xt, None, tl, blank_index=-1)
    # unsorted entries (as a SparseTensor built by hand may hold) mean what they say
    rows, cols, vals = [1, 0, 0, 1, 0], [1, 2, 0, 0, 1], [4, 3, 1, 2, 2]
    unsorted = tf.SparseTensor(np.stack([rows, cols], 1).astype(np.int64), vals, [2, 3])
    want = cyctc.ctc_loss(scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(2, 3)), x.swapaxes(0, 1), None, tl,
                          blank_index=-1)
    np.testing.assert_array_equal(np.asarray(run(unsorted, xt, None, tl, blank_index=-1)), want)
