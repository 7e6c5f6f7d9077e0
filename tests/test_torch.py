"""cyctc.torch against PyTorch's own ctc_loss: values and gradients (as PyTorch defines them), reductions,
zero_infinity, infeasible examples, empty and concatenated targets, half precision, gradcheck, torch.compile without a
graph break, a tiny model trained on the CPU, the CUDA glue on the fake CuPy, and errors naming the argument."""
import numpy as np
import pytest

from conftest import toolchain_unavailable

pytestmark = pytest.mark.frameworks

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # CI installs the CPU build through the test extra: there, a missing torch fails
    torch = None
    _why = str(e)

if torch is None:
    toolchain_unavailable("the PyTorch bridge's tests", f"torch is not installed ({_why}); pip install 'cyctc[torch]'")

import cyctc.torch as ct  # noqa: E402
from ctc_reference import batch_reference, random_problem  # noqa: E402

F64, F32 = torch.float64, torch.float32
TOL = {F64: dict(rtol=1e-10, atol=1e-10), F32: dict(rtol=2e-5, atol=2e-5)}


def _case(seed, B=4, T=16, C=6, L=5, dtype=F64, normalised=True, infeasible=False, empty=False):
    rng = np.random.default_rng(seed)
    x, labels, ll, tl = random_problem(rng, B, T, C, L, scale=2.0)
    lp = torch.from_numpy(x.swapaxes(0, 1).copy()).to(dtype)     # (T, B, C)
    if normalised:
        lp = lp.log_softmax(-1)
    if infeasible:  # three equal labels need five frames
        labels[1, :3] = 2
        ll[1], tl[1] = 3, 4
    if empty:
        ll[0] = 0
        labels[0] = 0
    return lp, torch.from_numpy(labels).long(), torch.from_numpy(tl).long(), torch.from_numpy(ll).long()


def _both(lp, targets, il, tl, **kw):
    """(loss, grad) of PyTorch's ctc_loss and of cyctc.torch's, the gradient of sum(w * loss)."""
    out = []
    for fn in (F.ctc_loss, ct.ctc_loss):
        x = lp.detach().clone().requires_grad_()
        loss = fn(x, targets, il, tl, **kw)
        w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        (loss * w).sum().backward()
        out.append((loss.detach(), x.grad))
    return out


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("normalised", [True, False], ids=["log_softmax", "raw-scores"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_equals_torch(dtype, normalised, reduction, zero_infinity):
    for seed in range(3):
        lp, tg, il, tl = _case(seed, dtype=dtype, normalised=normalised, infeasible=seed == 1, empty=seed == 2)
        (l0, g0), (l1, g1) = _both(lp, tg, il, tl, reduction=reduction, zero_infinity=zero_infinity)
        assert l1.dtype == l0.dtype and l1.shape == l0.shape and g1.dtype == g0.dtype
        torch.testing.assert_close(l1, l0, equal_nan=True, **TOL[dtype])
        # NaN exactly where PyTorch's is NaN (infeasible examples without zero_infinity, on their valid frames)
        assert torch.equal(torch.isnan(g1), torch.isnan(g0))
        torch.testing.assert_close(g1.nan_to_num(), g0.nan_to_num(), **TOL[dtype])


def test_infeasible_semantics():
    lp, tg, il, tl = _case(5, infeasible=True)
    (l0, g0), (l1, g1) = _both(lp, tg, il, tl, reduction="none")
    assert torch.isinf(l1[1]) and torch.isfinite(l1[[0, 2, 3]]).all()
    assert torch.isnan(g1[:il[1], 1]).all() and (g1[il[1]:, 1] == 0).all()
    assert torch.isfinite(g1[:, [0, 2, 3]]).all()
    (_, _), (l1, g1) = _both(lp, tg, il, tl, reduction="sum", zero_infinity=True)
    assert torch.isfinite(l1) and (g1[:, 1] == 0).all()


def test_gradient_is_torchs_formula():
    """PyTorch's gradient is exp(log_probs) - occupancy (not the derivative of its loss): the derivative of the loss,
    by central differences in float64, plus exp(log_probs) is the gradient returned; and exp(lp) - grad (the
    occupancy) equals the reference's softmax - gradient and sums to 1 per valid frame."""
    lp, tg, il, tl = _case(7, B=2, T=8, C=4, L=3, normalised=False)
    x = lp.clone().requires_grad_()
    ct.ctc_loss(x, tg, il, tl, reduction="sum").backward()
    h = 1e-6
    num = torch.zeros_like(lp)
    flat, nflat = lp.reshape(-1), num.reshape(-1)
    for i in range(flat.numel()):
        up, dn = flat.clone(), flat.clone()
        up[i] += h
        dn[i] -= h
        f = [ct.ctc_loss(v.reshape(lp.shape), tg, il, tl, reduction="sum").item() for v in (up, dn)]
        nflat[i] = (f[0] - f[1]) / (2 * h)
    valid = (torch.arange(lp.shape[0])[:, None] < il[None, :])[:, :, None]
    expected = torch.where(valid, num + lp.exp(), torch.zeros(()))
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-7)
    occupancy = torch.where(valid, lp.exp() - x.grad, torch.zeros((), dtype=F64))
    torch.testing.assert_close(occupancy.sum(-1), valid[..., 0].to(F64), rtol=0, atol=1e-10)
    _, g_ref = batch_reference(lp.numpy().swapaxes(0, 1), tg.numpy(), tl.numpy(), il.numpy(), 0)
    soft = torch.where(valid, lp.softmax(-1), torch.zeros((), dtype=F64))
    torch.testing.assert_close(occupancy, soft - torch.from_numpy(g_ref).swapaxes(0, 1), rtol=0, atol=1e-10)


def test_gradcheck_float64():
    """gradcheck through log_softmax (what a model does; the same gradcheck passes for PyTorch's own)."""
    lp, tg, il, tl = _case(3, B=3, T=10, C=5, L=4, normalised=False)
    x = lp.clone().requires_grad_()
    for reduction in ("none", "mean"):
        assert torch.autograd.gradcheck(lambda v: ct.ctc_loss(v.log_softmax(-1), tg, il, tl, reduction=reduction),
                                        (x,))
    # and the documented difference: on raw scores neither PyTorch's gradient nor cyctc's is the loss's derivative
    for fn in (F.ctc_loss, ct.ctc_loss):
        assert not torch.autograd.gradcheck(lambda v: fn(v, tg, il, tl, reduction="sum"), (x,), raise_exception=False)


def test_argument_forms():
    lp, tg, il, tl = _case(11)
    want = F.ctc_loss(lp, tg, il, tl, reduction="none")
    flat = torch.cat([tg[b, :tl[b]] for b in range(tg.shape[0])])
    for targets, ilen, tlen in [(flat, il, tl), (tg.int(), il.tolist(), tuple(tl.tolist())),
                                (flat.int(), tuple(il.tolist()), tl.int())]:
        torch.testing.assert_close(ct.ctc_loss(lp, targets, ilen, tlen, reduction="none"), want)
    crit = ct.CTCLoss(blank=0, reduction="sum", zero_infinity=True)
    torch.testing.assert_close(crit(lp, flat, il, tl), torch.nn.CTCLoss(reduction="sum", zero_infinity=True)(
        lp, flat, il, tl))
    # unbatched (T, C) with (S,) targets and scalar lengths
    one = ct.ctc_loss(lp[:, 0], tg[0, :tl[0]], int(il[0]), int(tl[0]), reduction="none")
    assert one.shape == () and torch.allclose(one, want[0])
    # blank other than 0
    lp2, tg2 = lp.roll(1, -1), tg - 1
    torch.testing.assert_close(ct.ctc_loss(lp2, tg2, il, tl, blank=5, reduction="none"),
                               F.ctc_loss(lp2, tg2, il, tl, blank=5, reduction="none"))


def test_cpu_tensors_not_copied(monkeypatch):
    """CPU log_probs reach the kernel as a numpy view of the tensor's own memory."""
    from cyctc import loss as cyloss

    seen = {}
    real = cyloss.compute

    def spy(a, *args):
        seen["base"] = a.x.__array_interface__["data"][0]
        return real(a, *args)

    monkeypatch.setattr(cyloss, "compute", spy)
    lp, tg, il, tl = _case(12, dtype=F32)
    ct.ctc_loss(lp, tg, il, tl)
    assert seen["base"] == lp.data_ptr()


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_in_float32(low):
    lp, tg, il, tl = _case(13, dtype=F32)
    lp = lp.to(low)
    x = lp.clone().requires_grad_()
    loss = ct.ctc_loss(x, tg, il, tl, reduction="sum")
    loss.backward()
    ref = lp.float().requires_grad_()
    want = F.ctc_loss(ref, tg, il, tl, reduction="sum")
    want.backward()
    assert loss.dtype == F32 and x.grad.dtype == low
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(x.grad, ref.grad.to(low))


def test_torch_compile_fullgraph():
    """fullgraph=True fails on any graph break; the compiled step gives eager's loss and gradients."""
    torch.manual_seed(0)
    T, B, C = 12, 3, 6
    lin = torch.nn.Linear(4, C).double()
    feats = torch.randn(T, B, 4, dtype=F64)
    tg = torch.randint(1, C, (B, 4))
    il, tl = torch.tensor([12, 10, 9]), torch.tensor([4, 3, 2])

    def step(f):
        return ct.ctc_loss(lin(f).log_softmax(-1), tg, il, tl)

    eager = step(feats)
    g_eager = torch.autograd.grad(eager, lin.weight)[0]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(feats)
    g_comp = torch.autograd.grad(out, lin.weight)[0]
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_comp, g_eager)
    torch.testing.assert_close(eager, F.ctc_loss(lin(feats).log_softmax(-1), tg, il, tl))


def test_opcheck():
    """torch.library's own consistency checks of the custom op (schema, fake tensor, autograd registration)."""
    lp, tg, il, tl = _case(14, B=2, T=8, C=4, L=3)
    torch.library.opcheck(torch.ops.cyctc.ctc_loss.default,
                          (lp.clone().requires_grad_(), tg, il, tl, 0, False, True, 1))


def test_tiny_model_trains():
    torch.manual_seed(0)
    T, B, C, H = 20, 8, 5, 16
    model = torch.nn.Sequential(torch.nn.Linear(3, H), torch.nn.Tanh(), torch.nn.Linear(H, C))
    feats = torch.randn(T, B, 3)
    tg = torch.randint(1, C, (B, 4))
    il, tl = torch.full((B,), T), torch.full((B,), 4)
    crit = ct.CTCLoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = crit(model(feats).log_softmax(-1), tg, il, tl)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():  # loss-only call (no gradient work) gives the same number as PyTorch's
        lp = model(feats).log_softmax(-1)
        torch.testing.assert_close(crit(lp, tg, il, tl), F.ctc_loss(lp, tg, il, tl))


def test_loss_only_calls_skip_the_gradient(monkeypatch):
    """Under no_grad, or for log_probs that do not require grad, the kernel is asked for the loss only."""
    from cyctc import loss as cyloss

    asked = []
    real = cyloss.compute

    def spy(a, merge, want_grad, *rest):
        asked.append(want_grad)
        return real(a, merge, want_grad, *rest)

    monkeypatch.setattr(cyloss, "compute", spy)
    lp, tg, il, tl = _case(15)
    with torch.no_grad():
        loss = ct.ctc_loss(lp.clone().requires_grad_(), tg, il, tl)
    assert not loss.requires_grad
    ct.ctc_loss(lp, tg, il, tl)
    ct.ctc_loss(lp.clone().requires_grad_(), tg, il, tl).backward()
    assert asked == [False, False, True]


@pytest.mark.parametrize("call, exc, name", [
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg.double(), il, tl), TypeError, "targets"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg, il + 100, tl), ValueError, "input_lengths"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg, il, tl + 100), ValueError, "target_lengths"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg, il[:2], tl), ValueError, "input_lengths"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg, il, tl, blank=99), ValueError, "blank"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg, il, tl, reduction="avg"), ValueError, "reduction"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp.numpy(), tg, il, tl), TypeError, "log_probs"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp[0, 0], tg, il, tl), ValueError, "log_probs"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg, il, tl, num_threads=0), ValueError, "num_threads"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg.reshape(-1)[:3], il, tl), ValueError, "targets"),
    (lambda lp, tg, il, tl: ct.ctc_loss(lp, tg, il, ["a"] * 4), TypeError, "target_lengths"),
], ids=["float-targets", "long-input", "long-target", "short-lengths", "blank", "reduction", "numpy", "1-d",
        "threads", "short-concatenated", "string-lengths"])
def test_bad_input_names_argument(call, exc, name):
    lp, tg, il, tl = _case(16)
    with pytest.raises(exc, match=name):
        call(lp, tg, il, tl)


def test_cuda_glue_on_fake_cupy(monkeypatch):
    """The CUDA path's glue (DLPack in and out, PyTorch's current stream, cyctc's backend, the corrections on the
    device) run on the CPU: fake CuPy, the backend emulated by the CPU kernel, DLPack and the stream stubbed. It
    checks the glue's logic and that it adds no sync; a real device has not run it."""
    import fake_cupy
    import test_cuda_glue as glue
    from cyctc.cuda import _backend

    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(_backend, "loss_and_grad", glue._cpu_loss_and_grad)
    streams = []

    class ExternalStream:
        def __init__(self, ptr):
            streams.append(ptr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(fake_cupy.cuda, "ExternalStream", ExternalStream, raising=False)
    monkeypatch.setattr(fake_cupy, "from_dlpack", lambda t: fake_cupy.ndarray(t.numpy()), raising=False)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev=None: type("S", (), {"cuda_stream": 4242})())
    monkeypatch.setattr(torch, "from_dlpack", lambda a: torch.from_numpy(np.asarray(a._a if hasattr(a, "_a") else
                                                                                     fake_cupy.asnumpy(a))))
    for normalised in (True, False):
        lp, tg, il, tl = _case(17, normalised=normalised, infeasible=True)
        fake_cupy.reset()
        loss, grad = ct._cuda_forward(lp, tg, il, tl, 0, False, True)
        assert streams[-1] == 4242
        assert fake_cupy.COUNTS["syncs"] == 0  # host lengths and targets: nothing waits for the device
        want_loss, want_grad = ct._cpu_forward(lp, tg, il, tl, 0, False, True, 1)
        torch.testing.assert_close(loss, want_loss)
        torch.testing.assert_close(grad, want_grad, equal_nan=True)
    # targets and lengths as (stand-in) CUDA tensors: fetched to the host in ONE device-to-host copy, the only sync
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    fake_cupy.reset()
    flat = torch.cat([tg[b, :tl[b]] for b in range(tg.shape[0])])
    loss, grad = ct._cuda_forward(lp, flat, il, tl, 0, True, True)
    assert fake_cupy.COUNTS["syncs"] == 1
    monkeypatch.undo()
    want_loss, want_grad = ct._cpu_forward(lp, tg, il, tl, 0, True, True, 1)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(grad, want_grad)
