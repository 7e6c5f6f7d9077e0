"""cyctc for PyTorch: ``ctc_loss`` and ``CTCLoss``, drop-ins for ``torch.nn.functional.ctc_loss`` and
``torch.nn.CTCLoss``.

    from cyctc.torch import ctc_loss          # instead of: from torch.nn.functional import ctc_loss
    criterion = cyctc.torch.CTCLoss(blank=0)  # instead of: torch.nn.CTCLoss(blank=0)

Same arguments, same values and the same gradient with respect to ``log_probs`` as PyTorch's, which is

    d loss / d log_probs[t, b, c] = exp(log_probs[t, b, c]) - occupancy[t, b, c]     (t < input_lengths[b]; else 0)

where ``occupancy`` is the posterior probability that frame t emits class c. That is PyTorch's formula (its CPU and
CUDA kernels write it), not the derivative of the loss it returns: for inputs that are log-probabilities (rows that
log-sum-exp to 0, e.g. from ``log_softmax``) the two differ by ``exp(log_probs)``, which the backward of
``log_softmax`` removes, so a model's parameters get exact gradients either way. cyctc's kernel computes the CTC of
``softmax(log_probs)`` and its gradient ``softmax(log_probs) - occupancy``; with ``lse[t, b]`` the log-sum-exp of
frame t, PyTorch's numbers are, exactly, for any input (normalised or not):

    loss_torch[b] = loss_cyctc[b] - sum(lse[t, b] for t < input_lengths[b])
    grad_torch    = grad_cyctc + exp(log_probs) - exp(log_probs - lse)        (on valid frames)

The bridge applies both corrections (for CPU tensors, the gradient's only where some frame's ``|lse|`` exceeds a few
units of rounding, i.e. the input is not already normalised; below that the correction is under the dtype's
rounding; for CUDA tensors always, as a check would wait for the device).

* ``float32`` and ``float64`` are computed in their dtype's kernel (exact: float64 accumulation inside);
  ``float16`` and ``bfloat16`` inputs are computed in float32 and the loss is float32, as under PyTorch's autocast
  (which runs its own ``ctc_loss`` in float32); the gradient reaches ``log_probs`` in its own dtype.
* Infeasible examples (too few frames): loss ``inf`` and a NaN gradient on their valid frames, as PyTorch's;
  ``zero_infinity=True`` makes both 0.
* CPU tensors reach the kernel through numpy without a copy (any strides whose class axis is contiguous).
  CUDA tensors go through DLPack to cyctc's CuPy backend on PyTorch's current stream (needs CuPy); the only host
  sync is for lengths/targets given as CUDA tensors, which PyTorch's own ``ctc_loss`` copies to the host too.
  The CUDA path is written and its glue unit-tested, but has not been run on a device yet.
* The work is one ``torch.library`` custom op, ``torch.ops.cyctc.ctc_loss``, with a fake (meta) implementation and
  an autograd formula: ``torch.compile(fullgraph=True)`` traces models that use it without a graph break. The
  gradient is computed in the forward call when ``log_probs`` requires it (one pass of the kernel, as cyctc's
  kernels do), kept, and scaled by the incoming gradient in the backward. Second derivatives are not supported.
* ``num_threads`` (keyword-only, an addition): cyctc's threads for CPU tensors; default ``torch.get_num_threads()``.
"""
from typing import Tuple

import numpy as np
import torch

from . import _args
from . import loss as _loss
from ._threads import resolve_num_threads

__all__ = ["ctc_loss", "CTCLoss"]

_NAMES = dict(logits_name="log_probs", logit_length_name="input_lengths", labels_name="targets",
              label_length_name="target_lengths", time_major_name="time_major", blank_name="blank")
_LOW = (torch.float16, torch.bfloat16)


def _host_semantics(x, loss, grad, il, zero_infinity):
    """PyTorch's numbers from cyctc's, on the host, in numpy (no trip through PyTorch's thread pool): the loss and
    gradient corrections of the module docstring, zero_infinity, and NaN gradients for infeasible examples.
    ``x`` (T, B, C) float32/64; ``loss`` float64 (B,); ``grad`` like x or None; ``il`` int (B,). In place where it
    can; returns (loss in x's dtype, grad)."""
    T = x.shape[0]
    valid = np.arange(T)[:, None] < il[None, :]                                   # (T, B)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        s = np.exp(x).sum(axis=-1)      # one exp, a sum and a log: exact enough unless a sum over/underflows
        if s.size and not (np.isfinite(s).all() and s.min() > np.finfo(x.dtype).tiny * 2.0 ** 30):
            m = x.max(axis=-1)
            m = np.where(np.isfinite(m), m, 0)
            s = np.exp(x - m[:, :, None]).sum(axis=-1)
            lse = np.log(s) + m
        else:
            lse = np.log(s)
        lse = np.where(valid, lse, 0)
        loss = loss - lse.sum(axis=0, dtype=np.float64)
        infeasible = np.isinf(loss)
        if grad is not None:
            if lse.size and np.abs(lse).max() > 8 * np.finfo(x.dtype).eps:
                # not normalised: PyTorch's exp(lp) - occupancy from cyctc's softmax(lp) - occupancy (infeasible
                # examples keep cyctc's zero gradient: PyTorch's is 0 with zero_infinity, NaN without)
                keep = (valid & ~infeasible[None, :])[:, :, None]
                grad += np.where(keep, np.exp(x) - np.exp(x - lse[:, :, None]), 0).astype(grad.dtype, copy=False)
            if not zero_infinity and infeasible.any():
                grad[valid & infeasible[None, :]] = np.nan
    if zero_infinity:
        loss[infeasible] = 0.0
    return loss.astype(x.dtype), grad


def _device_semantics(x, loss, grad, il, zero_infinity):
    """``_host_semantics`` for CUDA tensors, in PyTorch ops that never wait for the device (the corrections are
    applied whatever the input; ``loss`` float64 (B,) tensor, ``grad`` tensor or None, ``il`` on x's device)."""
    T = x.shape[0]
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    valid = torch.arange(T, device=x.device)[:, None] < il[None, :]               # (T, B)
    lse = torch.where(valid, torch.logsumexp(x, -1), zero)
    loss = loss - lse.to(torch.float64).sum(0)
    infeasible = torch.isinf(loss)
    if grad is not None:
        keep = (valid & ~infeasible[None, :])[:, :, None]
        grad = grad + torch.where(keep, x.exp() - (x - lse[:, :, None]).exp(), zero)
        if not zero_infinity:
            nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
            grad = torch.where(infeasible[None, :, None] & valid[:, :, None], nan, grad)
    if zero_infinity:
        loss = torch.where(infeasible, torch.zeros((), dtype=loss.dtype, device=loss.device), loss)
    return loss.to(x.dtype), grad


def _host_numpy(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t


def _cpu_forward(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity, need_grad, num_threads):
    xn = log_probs.detach().numpy()
    B = xn.shape[1] if xn.ndim == 3 else 0
    labels, ll = _args.concatenated_labels(_host_numpy(targets), _host_numpy(target_lengths), B)
    a = _args.normalize_loss_args(labels, xn, ll, _host_numpy(input_lengths), True, None, blank, **_NAMES)
    loss, grad = _loss.compute(a, True, need_grad, None, resolve_num_threads(num_threads or torch.get_num_threads()))
    loss, grad = _host_semantics(xn, loss, grad, a.logit_length, zero_infinity)
    return torch.from_numpy(loss), None if grad is None else torch.from_numpy(grad)


def _cuda_forward(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity, need_grad):
    """CUDA tensors: DLPack to CuPy (no copy) and cyctc's CUDA backend, on PyTorch's current stream."""
    try:
        import cupy
    except ImportError:
        raise RuntimeError("cyctc.torch: CUDA tensors need CuPy (pip install 'cyctc[cuda]' or 'cyctc[cuda12]')") \
            from None
    dev = log_probs.device
    stream = torch.cuda.current_stream(dev)
    with cupy.cuda.Device(dev.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        x = cupy.from_dlpack(log_probs.detach())
        small = [cupy.from_dlpack(t.detach()) if isinstance(t, torch.Tensor) and t.is_cuda else _host_numpy(t)
                 for t in (targets, input_lengths, target_lengths)]
        # the one device-to-host copy of the small arrays (PyTorch's own ctc_loss copies the lengths to the host too)
        tg, il, tl = _args.fetch_small(small, ["targets", "input_lengths", "target_lengths"], like=x)
        labels, ll = _args.concatenated_labels(tg, tl, x.shape[1] if x.ndim == 3 else 0)
        a = _args.normalize_loss_args(labels, x, ll, il, True, None, blank, **_NAMES)
        il_host = a.logit_length
        loss, grad = _loss.compute(a, True, need_grad, None, 1)
        loss_t = torch.from_dlpack(loss)
        grad_t = None if grad is None else torch.from_dlpack(grad)
    il_dev = torch.from_numpy(np.asarray(il_host, dtype=np.int64)).to(dev, non_blocking=True)
    return _device_semantics(log_probs.detach(), loss_t, grad_t, il_dev, zero_infinity)


@torch.library.custom_op("cyctc::ctc_loss", mutates_args=())
def _ctc_op(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
            target_lengths: torch.Tensor, blank: int, zero_infinity: bool, need_grad: bool,
            num_threads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses (B,) in log_probs' dtype (float32/float64, time-major (T, B, C)) and, when
    ``need_grad``, PyTorch's gradient of their sum (T, B, C) (else an empty tensor)."""
    if log_probs.is_cuda:
        loss, grad = _cuda_forward(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity,
                                   need_grad)
    else:
        loss, grad = _cpu_forward(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity,
                                  need_grad, num_threads)
    if grad is None:
        grad = log_probs.new_empty((0,))
    return loss, grad


@_ctc_op.register_fake
def _ctc_fake(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity, need_grad, num_threads):
    T, B, C = log_probs.shape
    return log_probs.new_empty((B,)), log_probs.new_empty((T, B, C) if need_grad else (0,))


def _ctc_setup(ctx, inputs, output):
    ctx.need_grad = inputs[6]
    ctx.save_for_backward(output[1])


def _ctc_backward(ctx, grad_loss, _grad_grad):
    if not ctx.need_grad:
        raise RuntimeError("cyctc.torch: backward through a ctc_loss call made without gradients (log_probs did not "
                           "require grad, or grad mode was off, when it ran)")
    (g,) = ctx.saved_tensors
    return g * grad_loss[None, :, None], None, None, None, None, None, None, None


_ctc_op.register_autograd(_ctc_backward, setup_context=_ctc_setup)


def _as_tensor(v, name, dtype=None):
    if isinstance(v, torch.Tensor):
        return v
    try:
        return torch.as_tensor(v, dtype=dtype)
    except Exception as e:
        raise TypeError(f"{name} must be a tensor, a list or a tuple of integers: {e}") from None


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False,
             *, num_threads=None):
    """``torch.nn.functional.ctc_loss`` computed by cyctc (see the module docstring for the exact semantics).

    Parameters
    ----------
    log_probs : Tensor (T, B, C), or (T, C) unbatched
        Log-probabilities (e.g. ``log_softmax`` outputs); float32/float64, or float16/bfloat16 (computed in float32).
    targets : Tensor (B, S) padded, or 1-D: the targets of all examples concatenated (sum(target_lengths),)
    input_lengths, target_lengths : Tensor (B,), list or tuple of ints (an int or 0-d tensor when unbatched)
    blank : int
    reduction : "none" | "mean" | "sum"
        "mean": the mean over the batch of loss / max(target_length, 1), as PyTorch's.
    zero_infinity : bool
        Infinite losses (infeasible examples) and their gradients become 0.
    num_threads : int, optional (keyword-only)
        cyctc's CPU threads; default ``torch.get_num_threads()``.
    """
    reduction = _args.check_reduction(reduction)
    zero_infinity = _args.as_flag(zero_infinity, "zero_infinity")
    blank = _args.as_index(blank, "blank")
    if not isinstance(log_probs, torch.Tensor):
        raise TypeError(f"log_probs must be a torch.Tensor, got {type(log_probs).__name__}")
    if not (log_probs.is_floating_point() and not log_probs.is_complex()):
        raise TypeError(f"log_probs must hold floating-point values, got dtype {log_probs.dtype}")
    if log_probs.dim() not in (2, 3):
        raise ValueError(f"log_probs must have shape (T, B, C) or (T, C), got {tuple(log_probs.shape)}")
    # 0 stands for "torch.get_num_threads() when the op runs" (read there: torch.compile traces no such call)
    nt = 0 if num_threads is None else _args.as_index(num_threads, "num_threads")
    if num_threads is not None and nt == 0:
        raise ValueError("num_threads must be a nonzero int or None (0 is not a thread count)")
    x = log_probs.float() if log_probs.dtype in _LOW else log_probs
    targets = _as_tensor(targets, "targets")
    il = _as_tensor(input_lengths, "input_lengths", torch.int64)
    tl = _as_tensor(target_lengths, "target_lengths", torch.int64)
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
        targets = targets.unsqueeze(0) if targets.dim() == 1 else targets
        il, tl = il.reshape(1), tl.reshape(1)
    need_grad = torch.is_grad_enabled() and x.requires_grad
    loss, _ = _ctc_op(x, targets, il, tl, blank, zero_infinity, need_grad, nt)
    if reduction == "mean":
        return (loss / tl.to(device=loss.device, dtype=loss.dtype).clamp_min(1)).mean()
    if reduction == "sum":
        return loss.sum()
    return loss[0] if unbatched else loss


class CTCLoss(torch.nn.Module):
    """``torch.nn.CTCLoss`` computed by cyctc: ``CTCLoss(blank=0, reduction="mean", zero_infinity=False)``, called
    as ``criterion(log_probs, targets, input_lengths, target_lengths)``; see ``cyctc.torch.ctc_loss``."""

    def __init__(self, blank=0, reduction="mean", zero_infinity=False, *, num_threads=None):
        super().__init__()
        self.blank = _args.as_index(blank, "blank")
        self.reduction = _args.check_reduction(reduction)
        self.zero_infinity = _args.as_flag(zero_infinity, "zero_infinity")
        self.num_threads = num_threads

    def forward(self, log_probs, targets, input_lengths, target_lengths):
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction,
                        self.zero_infinity, num_threads=self.num_threads)

    def extra_repr(self):
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}"
