#!/usr/bin/env python
"""The framework bridges against each framework's own CTC: forward + backward through the framework's autograd.

    python benchmarks/bench_frameworks.py [--threads 2] [--shapes speech-char long one-long] [--rounds 7]
                                          [--frameworks torch jax tf keras] [--json out.json] [--txt out.txt]

For every framework, in a process of its own (only that framework's thread pools alive), and every shape of
``_problems.py`` (same logits, labels and lengths as bench_cpu.py), two training-step-like callables are timed,
interleaved (``_timing.interleaved``: round-robin, medians):

* torch: ``log_softmax`` + ``ctc_loss(reduction="mean")`` + ``backward()`` to a leaf (T, B, C) tensor; PyTorch's
  ``F.ctc_loss`` against ``cyctc.torch.ctc_loss`` (one-line swap).
* jax: ``jit(value_and_grad(mean of ctc_loss))`` of (B, T, C) logits; ``optax.ctc_loss`` against
  ``cyctc.jax.ctc_loss``.
* tf: ``tf.function`` with a ``GradientTape`` around ``tf.nn.ctc_loss`` (dense labels, time-major) against
  ``cyctc.tf.ctc_loss``.
* keras: the same around ``tf.keras.backend.ctc_batch_cost`` (softmax probabilities, blank last) against
  ``cyctc.keras.ctc_batch_cost``.

Every bridge overhead is inside the timed call (conversions, the host callback, the PyTorch corrections, the
gradient scaling in the backward pass). Before timing, the two losses and gradients are compared (float32 error).
Every implementation gets ``--threads`` threads (``_threads.pin_threads`` and each framework's own setting; the
bridges get the same count).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEFAULT_SHAPES = ["speech-char", "long", "one-long"]
FRAMEWORKS = ["torch", "jax", "tf", "keras"]
OWN = {"torch": "torch F.ctc_loss", "jax": "optax.ctc_loss", "tf": "tf.nn.ctc_loss",
       "keras": "keras ctc_batch_cost"}
BRIDGE = {"torch": "cyctc.torch.ctc_loss", "jax": "cyctc.jax.ctc_loss", "tf": "cyctc.tf.ctc_loss",
          "keras": "cyctc.keras.ctc_batch_cost"}


def _torch_pair(p, threads):
    import torch
    import torch.nn.functional as F

    import cyctc.torch as ct
    from _threads import configure_torch

    configure_torch(torch, threads)
    x = torch.from_numpy(p.logits).requires_grad_(True)
    tg = torch.from_numpy(p.labels.astype("int64"))
    il = torch.from_numpy(p.logit_length.astype("int64"))
    tl = torch.from_numpy(p.label_length.astype("int64"))

    def make(fn):
        def run():
            x.grad = None
            loss = fn(F.log_softmax(x, dim=-1), tg, il, tl, blank=0, reduction="mean")
            loss.backward()
            return float(loss), x.grad.numpy()
        return run

    return make(F.ctc_loss), make(ct.ctc_loss), torch.__version__


def _jax_pair(p, threads):
    import jax
    import numpy as np
    import optax

    import cyctc.jax as cj

    x = jax.device_put(p.logits_batch_major())
    lp = jax.device_put((np.arange(p.T)[None, :] >= p.logit_length[:, None]).astype(np.float32))
    lab = jax.device_put(p.labels)
    lbp = jax.device_put((np.arange(p.L)[None, :] >= p.label_length[:, None]).astype(np.float32))

    def make(fn):
        vg = jax.jit(jax.value_and_grad(lambda v: fn(v, lp, lab, lbp).mean()))

        def run():
            loss, g = jax.block_until_ready(vg(x))
            return float(loss), np.asarray(g).swapaxes(0, 1)
        return run

    return make(optax.ctc_loss), make(lambda *a: cj.ctc_loss(*a, num_threads=threads)), jax.__version__


def _tf_import(threads):
    import tensorflow as tf

    from _threads import configure_tensorflow

    configure_tensorflow(tf, threads)
    return tf


def _tf_pair(p, threads):
    tf = _tf_import(threads)
    import cyctc.tf as ctf

    x = tf.constant(p.logits)
    lab, ll, il = tf.constant(p.labels), tf.constant(p.label_length), tf.constant(p.logit_length)

    def make(fn):
        @tf.function
        def step(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                loss = tf.reduce_mean(fn(lab, v, ll, il, logits_time_major=True, blank_index=0))
            return loss, tape.gradient(loss, v)

        def run():
            loss, g = step(x)
            return float(loss), g.numpy()
        return run

    return make(tf.nn.ctc_loss), make(lambda *a, **k: ctf.ctc_loss(*a, **k, num_threads=threads)), tf.__version__


def _keras_pair(p, threads):
    tf = _tf_import(threads)
    import cyctc.keras as ck
    from _peers import keras_equivalent

    probs, labels_k = keras_equivalent(p)
    y_pred, y_true = tf.constant(probs), tf.constant(labels_k)
    il, ll = tf.constant(p.logit_length[:, None]), tf.constant(p.label_length[:, None])

    def make(fn):
        @tf.function
        def step(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                loss = tf.reduce_mean(fn(y_true, v, il, ll))
            return loss, tape.gradient(loss, v)

        def run():
            loss, g = step(y_pred)
            return float(loss), g.numpy()
        return run

    import keras

    return (make(tf.keras.backend.ctc_batch_cost), make(lambda *a: ck.ctc_batch_cost(*a, num_threads=threads)),
            f"{keras.__version__} (tf {tf.__version__})")


PAIRS = {"torch": _torch_pair, "jax": _jax_pair, "tf": _tf_pair, "keras": _keras_pair}


def run_one(framework, shapes, threads, rounds):
    """In this process: time one framework's pair on every shape; returns a list of result dicts."""
    from _threads import pin_threads

    pin_threads(threads)
    import numpy as np

    from _problems import make_problem
    from _timing import Contention, interleaved

    out = []
    for name in shapes:
        p = make_problem(name)
        own, ours, version = PAIRS[framework](p, threads)
        (l0, g0), (l1, g1) = own(), ours()
        scale = max(float(np.abs(g0).max()), 1e-30)
        check = dict(loss_rel=abs(l1 - l0) / max(abs(l0), 1e-30), grad_rel=float(np.abs(g1 - g0).max()) / scale)
        with Contention() as busy:
            t = interleaved({"own": own, "cyctc": ours}, rounds=rounds)
        out.append(dict(framework=framework, version=version, shape=name, B=p.B, T=p.T, C=p.C, L=p.L,
                        own_ms=t["own"]["median"] * 1e3, cyctc_ms=t["cyctc"]["median"] * 1e3,
                        speedup=t["own"]["median"] / t["cyctc"]["median"], check=check,
                        other_load=busy.share, own_q=(t["own"]["q25"] * 1e3, t["own"]["q75"] * 1e3),
                        cyctc_q=(t["cyctc"]["q25"] * 1e3, t["cyctc"]["q75"] * 1e3)))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def table(results):
    rows = ["| framework | shape (B, T, C, L) | framework's own (ms) | cyctc bridge (ms) | speed-up | "
            "max loss / grad difference (relative) | other processes' CPU share |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['framework']} {r['version']}: {OWN[r['framework']]} -> {BRIDGE[r['framework']]} | "
                    f"{r['shape']} ({r['B']}, {r['T']}, {r['C']}, {r['L']}) | {r['own_ms']:.2f} | "
                    f"{r['cyctc_ms']:.2f} | {r['speedup']:.1f}x | "
                    f"{r['check']['loss_rel']:.1e} / {r['check']['grad_rel']:.1e} | "
                    f"{'-' if r['other_load'] is None else format(r['other_load'], '.0%')} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frameworks", nargs="+", default=FRAMEWORKS, choices=FRAMEWORKS)
    ap.add_argument("--json")
    ap.add_argument("--txt")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--wait-load", type=float, metavar="X",
                    help="before starting, wait (up to 15 min) until the 1-minute load average is below X")
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(run_one(args._child, args.shapes, args.threads, args.rounds)))
        return 0
    if args.wait_load is not None:
        from bench_cpu import wait_for_quiet

        wait_for_quiet(args.wait_load)
    load0 = os.getloadavg()
    results, failed = [], []
    for fw in args.frameworks:
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", fw, "--threads", str(args.threads),
               "--rounds", str(args.rounds), "--shapes", *args.shapes]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(f"{fw}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        results += json.loads(proc.stdout.strip().splitlines()[-1])
    import cyctc

    head = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
            f"cyctc {cyctc.__version__}, float32, forward + backward, median of {args.rounds} rounds, "
            f"load average at start {load0[0]:.2f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    text = head + "\n\n" + table(results) + ("\n\nnot run: " + "; ".join(failed) if failed else "") + "\n"
    print(text)
    if args.txt:
        with open(args.txt, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header=head, results=results, failed=failed), f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
