"""cyctc.jax against optax.ctc_loss: values and gradients (float32 and float64), paddings anywhere, jit, grad, vmap
(nested, and with unbatched arguments), half precision, infeasible examples, a few training steps, and errors."""
import numpy as np
import pytest

from conftest import toolchain_unavailable

pytestmark = pytest.mark.frameworks

try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError as e:  # CI installs jax[cpu] and optax through the test extra: there, a missing one fails
    jax = None
    _why = str(e)

if jax is None:
    toolchain_unavailable("the JAX bridge's tests", f"jax/optax not installed ({_why}); pip install 'cyctc[jax]'")

import cyctc.jax as cj  # noqa: E402


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _case(seed, B=4, T=14, K=6, N=5, dtype=np.float32):
    """Random logits and labels; right-padded paddings of varying lengths (labels padded with 0, the blank)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((B, T, K)) * 2).astype(dtype)
    labels = rng.integers(1, K, size=(B, N))
    il = rng.integers(T - 4, T + 1, size=B)
    ll = rng.integers(1, N + 1, size=B)
    ll[0] = 0  # an empty label sequence
    logit_paddings = (np.arange(T) >= il[:, None]).astype(dtype)
    label_paddings = (np.arange(N) >= ll[:, None]).astype(dtype)
    labels[label_paddings == 1] = 0
    return x, logit_paddings, labels.astype(np.int32), label_paddings


def _value_and_grads(fn, x, *rest):
    w = jnp.linspace(0.5, 1.5, x.shape[0], dtype=x.dtype)
    loss = fn(x, *rest)
    grad = jax.grad(lambda v: (fn(v, *rest) * w).sum())(x)
    return np.asarray(loss), np.asarray(grad)


def _check(x, lp, lab, lbp, rtol, atol, jit=False):
    fo, fc = jax.jit(optax.ctc_loss), cj.ctc_loss  # optax jitted always (op by op it is slow)
    if jit:
        fc = jax.jit(fc)
    l0, g0 = _value_and_grads(fo, x, lp, lab, lbp)
    l1, g1 = _value_and_grads(fc, x, lp, lab, lbp)
    assert l1.dtype == l0.dtype and g1.dtype == g0.dtype
    np.testing.assert_allclose(l1, l0, rtol=rtol, atol=atol)
    np.testing.assert_allclose(g1, g0, rtol=rtol, atol=atol)
    return l1, g1


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_float32_equals_optax(jit):
    for seed in range(3):
        x, lp, lab, lbp = _case(seed)
        _, g = _check(jnp.asarray(x), lp, lab, lbp, rtol=2e-5, atol=2e-5, jit=jit)
        assert np.all(g[lp == 1] == 0)  # padded frames: exactly 0


def test_float64_equals_optax(x64):
    for seed in range(3):
        x, lp, lab, lbp = _case(seed, dtype=np.float64)
        _check(jnp.asarray(x), lp, lab, lbp, rtol=1e-11, atol=1e-11, jit=True)


def test_paddings_anywhere(x64):
    """optax skips padded frames wherever they are; so does cyctc (frames gathered to the front on the host)."""
    x, lp, lab, lbp = _case(4, dtype=np.float64)
    lp[0, [2, 5]] = 1
    lp[2, 0] = 1
    _check(jnp.asarray(x), lp, lab, lbp, rtol=1e-11, atol=1e-11)


def test_vmap_and_nested(x64):
    xs, lps, labs, lbps = zip(*[_case(s, dtype=np.float64) for s in range(6)])
    x = jnp.asarray(np.stack(xs)).reshape((2, 3) + xs[0].shape)
    lp = np.stack(lps).reshape((2, 3) + lps[0].shape)
    lab = np.stack(labs).reshape((2, 3) + labs[0].shape)
    lbp = np.stack(lbps).reshape((2, 3) + lbps[0].shape)

    def vv(f):
        return jax.jit(jax.vmap(jax.vmap(f)))

    l0 = vv(optax.ctc_loss)(x, lp, lab, lbp)
    l1 = vv(cj.ctc_loss)(x, lp, lab, lbp)
    np.testing.assert_allclose(l1, l0, rtol=1e-11)
    g0 = vv(jax.grad(lambda v, *r: optax.ctc_loss(v, *r).sum()))(x, lp, lab, lbp)
    g1 = vv(jax.grad(lambda v, *r: cj.ctc_loss(v, *r).sum()))(x, lp, lab, lbp)
    np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-12)
    # one argument batched, the others shared (the callback broadcasts the size-1 axes vmap adds)
    l2 = jax.vmap(cj.ctc_loss, in_axes=(0, None, None, None))(x[0], lp[0, 0], lab[0, 0], lbp[0, 0])
    l3 = jax.vmap(optax.ctc_loss, in_axes=(0, None, None, None))(x[0], lp[0, 0], lab[0, 0], lbp[0, 0])
    np.testing.assert_allclose(l2, l3, rtol=1e-11)


def test_vmap_is_one_kernel_call(monkeypatch):
    """vmap_method="expand_dims": a vmapped call reaches the host once, with the whole batch."""
    calls = []
    real = cj._host_ctc

    def spy(*args):
        calls.append(args[3].shape)
        return real(*args)

    monkeypatch.setattr(cj, "_host_ctc", spy)
    x, lp, lab, lbp = _case(5)
    xs = jnp.stack([x, 2 * x, 3 * x])
    jax.vmap(cj.ctc_loss, in_axes=(0, None, None, None))(xs, lp, lab, lbp).block_until_ready()
    assert calls == [(3,) + x.shape]


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_half_precision(low):
    x, lp, lab, lbp = _case(6)
    xl = jnp.asarray(x).astype(low)
    loss, grad = _value_and_grads(cj.ctc_loss, xl, lp, lab, lbp)
    ref, gref = _value_and_grads(cj.ctc_loss, xl.astype(jnp.float32), lp, lab, lbp)
    assert loss.dtype == xl.dtype and grad.dtype == xl.dtype
    np.testing.assert_allclose(loss.astype(np.float32), ref, rtol=1e-2)
    np.testing.assert_allclose(grad.astype(np.float32), gref, rtol=1e-2, atol=1e-2)


def test_infeasible_is_inf_with_zero_gradient():
    x, lp, lab, lbp = _case(7)
    lab[1, :3], lbp[1, :3], lbp[1, 3:] = 2, 0, 1   # three equal labels need 5 frames
    lp[1] = 1
    lp[1, :4] = 0
    loss, grad = _value_and_grads(cj.ctc_loss, jnp.asarray(x), lp, lab, lbp)
    assert np.isinf(loss[1]) and np.all(grad[1] == 0) and np.all(np.isfinite(loss[[0, 2, 3]]))
    ref = np.asarray(optax.ctc_loss(x, lp, lab, lbp))
    np.testing.assert_allclose(loss[[0, 2, 3]], ref[[0, 2, 3]], rtol=2e-5)
    assert ref[1] > 1e4  # optax's finite stand-in, made of log_epsilon


def test_trains_a_few_steps():
    x, lp, lab, lbp = _case(8, B=8)
    key = jax.random.PRNGKey(0)
    params = {"w": jax.random.normal(key, (3, 6)) * 0.1, "b": jnp.zeros(6)}
    feats = jax.random.normal(jax.random.PRNGKey(1), (8, 14, 3))
    opt = optax.adam(0.05)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            return cj.ctc_loss(feats @ p["w"] + p["b"], lp, lab, lbp).mean()
        loss, g = jax.value_and_grad(loss_fn)(params)
        g_ref = jax.grad(lambda p: optax.ctc_loss(feats @ p["w"] + p["b"], lp, lab, lbp).mean())(params)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state, loss, g, g_ref

    losses = []
    for _ in range(30):
        params, state, loss, g, g_ref = step(params, state)
        losses.append(float(loss))
        np.testing.assert_allclose(g["w"], g_ref["w"], rtol=1e-4, atol=1e-5)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("change, exc, name", [
    (lambda a: dict(a, logits=a["logits"][0]), ValueError, "logits"),
    (lambda a: dict(a, logits=a["labels"]), TypeError, "logits"),
    (lambda a: dict(a, labels=a["labels"].astype(np.float32)), TypeError, "labels"),
    (lambda a: dict(a, logit_paddings=a["logit_paddings"][:, :3]), ValueError, "logit_paddings"),
    (lambda a: dict(a, label_paddings=a["label_paddings"][:2]), ValueError, "label_paddings"),
    (lambda a: dict(a, blank_id=1.5), TypeError, "blank_id"),
], ids=["rank", "int-logits", "float-labels", "logit-paddings-shape", "label-paddings-shape", "blank-type"])
def test_bad_shapes_name_argument(change, exc, name):
    x, lp, lab, lbp = _case(9)
    kw = change(dict(logits=x, logit_paddings=lp, labels=lab, label_paddings=lbp))
    with pytest.raises(exc, match=name):
        cj.ctc_loss(**kw)


@pytest.mark.parametrize("change, message", [
    (lambda lab, lp, lbp: (lab * 0 + 9, lp, lbp), "labels.* is outside the classes"),
    (lambda lab, lp, lbp: (lab * 0, lp, lbp * 0), "equals the blank class"),
    (lambda lab, lp, lbp: (lab, lp * 0.5, lbp), "logit_paddings must hold 0"),
])
def test_bad_values_raise_through_jax(change, message):
    """Value errors are raised in the callback: JAX's runtime error carries cyctc's message."""
    x, lp, lab, lbp = _case(10)
    lab, lp, lbp = change(lab, lp, lbp)
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(cj.ctc_loss(x, lp, lab, lbp))


@pytest.mark.parametrize("jit", [False, True])
def test_no_frames_and_no_labels(x64, jit):
    """T = 0 or N = 0 once failed inside the callback (numpy's reshape(-1, 0): 'cannot reshape array of size 0').
    No labels: the all-blank path, as optax; no frames: an empty label costs 0, any other is infeasible (inf)."""
    import optax

    rng = np.random.default_rng(3)
    B, T, K = 3, 7, 5
    x = rng.standard_normal((B, T, K))
    lp = np.zeros((B, T))
    lp[1, 5:] = 1
    run = jax.jit(cj.ctc_loss) if jit else cj.ctc_loss
    loss, grad = jax.value_and_grad(lambda v: run(v, lp, np.zeros((B, 0), int), np.zeros((B, 0))).sum())(x)
    want = optax.ctc_loss(x, lp, np.zeros((B, 0), int), np.zeros((B, 0)))
    np.testing.assert_allclose(run(x, lp, np.zeros((B, 0), int), np.zeros((B, 0))), want, rtol=1e-12)
    assert np.all(np.asarray(grad)[1, 5:] == 0) and np.isfinite(loss)
    lab = np.array([[1, 2], [3, 0], [4, 4]])
    lbp = np.array([[0, 0], [1, 1], [0, 1.0]])
    out = np.asarray(run(np.zeros((B, 0, K)), np.zeros((B, 0)), lab, lbp))
    assert out.tolist() == [np.inf, 0.0, np.inf]
