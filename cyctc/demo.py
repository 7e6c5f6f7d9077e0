"""``cyctc demo``: train a small softmax model in numpy with cyctc's CTC loss and gradient.

Synthetic data: each of K symbols has a prototype feature vector; an utterance is a random symbol sequence,
each symbol held for a few noisy frames with optional blank (silence) frames between. The model is one linear
layer over a frame and its neighbours, trained with Adam on the CTC gradient that cyctc returns. At the end the
held-out utterances are decoded greedily and the label error rate is printed.
"""
import time

import numpy as np


EXAMPLES = """\
examples:
  # the default run: 768 training utterances of 10 symbols, 20 epochs (about a second on two cores)
  cyctc demo

  # a larger alphabet and more data, on one thread
  cyctc demo --symbols 30 --utterances 2000 --epochs 30 --num-threads 1
"""


def add_arguments(p):
    p.epilog = EXAMPLES
    p.add_argument("--epochs", type=int, default=20, help="passes over the training set (default 20)")
    p.add_argument("--utterances", type=int, default=768, help="training utterances (default 768)")
    p.add_argument("--batch-size", type=int, default=32, help="utterances per step (default 32)")
    p.add_argument("--symbols", type=int, default=10, help="label alphabet size, blank excluded (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None, help="cyctc threads (default: all usable cores)")


def make_data(rng, n, K, F, protos, noise=0.9):
    """n utterances: features (n, Tmax, F) float32, frame counts, labels (n, Lmax) and label counts."""
    seqs, labels = [], []
    for _ in range(n):
        lab = rng.integers(1, K + 1, size=rng.integers(3, 9))
        frames = []
        for i, s in enumerate(lab):
            if i == 0 or lab[i - 1] == s or rng.random() < 0.5:
                frames += [0] * int(rng.integers(1, 3))  # blank (silence) frames
            frames += [int(s)] * int(rng.integers(2, 5))
        frames += [0] * int(rng.integers(0, 3))
        seqs.append(protos[frames] + noise * rng.standard_normal((len(frames), F)))
        labels.append(lab)
    T = max(len(s) for s in seqs)
    x = np.zeros((n, T, F), np.float32)
    tl = np.array([len(s) for s in seqs], np.int32)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = s
    L = max(len(v) for v in labels)
    y = np.zeros((n, L), np.int32)
    ll = np.array([len(v) for v in labels], np.int32)
    for i, v in enumerate(labels):
        y[i, :len(v)] = v
    return x, tl, y, ll


def context(x):
    """Each frame with its two neighbours on either side: (B, T, 5F)."""
    pad = np.pad(x, ((0, 0), (2, 2), (0, 0)))
    T = x.shape[1]
    return np.concatenate([pad[:, i:i + T] for i in range(5)], axis=2)


def greedy(logits, tl):
    """Best path per utterance through cyctc's greedy decoder (blank = class 0), as lists of labels."""
    import cyctc

    (decoded,), _ = cyctc.ctc_greedy_decoder(logits, tl, blank_index=0, time_major=False)
    return [[int(v) for v in seq] for seq in decoded.to_list()]


def edit_distance(a, b):
    d = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return int(d[-1])


def label_error_rate(hyps, y, ll):
    errs = sum(edit_distance(h, list(y[i, :ll[i]])) for i, h in enumerate(hyps))
    return errs / max(int(ll.sum()), 1)


def run(args):
    import cyctc

    rng = np.random.default_rng(args.seed)
    K, F = args.symbols, 12
    C = K + 1  # class 0 is the blank
    protos = rng.standard_normal((C, F)).astype(np.float32)
    x, tl, y, ll = make_data(rng, args.utterances, K, F, protos)
    xv, tlv, yv, llv = make_data(rng, 128, K, F, protos)
    x, xv = context(x), context(xv)
    D = x.shape[2]
    W = (0.01 * rng.standard_normal((D, C))).astype(np.float32)
    bias = np.zeros(C, np.float32)
    params = [W, bias]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    lr, beta1, beta2, step = 0.02, 0.9, 0.999, 0
    print(f"cyctc demo: {args.utterances} training utterances, {C} classes (blank = 0), "
          f"features {D}, batch {args.batch_size}")
    t0 = time.perf_counter()
    n = x.shape[0]
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(n)
        total, count = 0.0, 0
        for i in range(0, n, args.batch_size):
            idx = order[i:i + args.batch_size]
            xb = x[idx]
            logits = xb @ W + bias  # (B, T, C), batch-major
            loss, g = cyctc.ctc_loss(y[idx], logits, ll[idx], tl[idx], logits_time_major=False, reduction="mean",
                                     return_grad=True, num_threads=args.num_threads)
            grads = [np.einsum("btd,btc->dc", xb, g), g.sum(axis=(0, 1))]
            step += 1
            for p, gr, mm, vv in zip(params, grads, m, v):
                mm *= beta1
                mm += (1 - beta1) * gr
                vv *= beta2
                vv += (1 - beta2) * gr * gr
                p -= lr * (mm / (1 - beta1 ** step)) / (np.sqrt(vv / (1 - beta2 ** step)) + 1e-8)
            total += float(loss) * len(idx)
            count += len(idx)
        val = cyctc.ctc_loss(yv, xv @ W + bias, llv, tlv, logits_time_major=False, reduction="mean")
        print(f"epoch {epoch:3d}  train loss/label {total / count:8.4f}   held-out loss/label {float(val):8.4f}")
    hyps = greedy(xv @ W + bias, tlv)
    ler = label_error_rate(hyps, yv, llv)
    print(f"held-out greedy decoding: label error rate {100 * ler:.2f}% over {int(llv.sum())} labels "
          f"({time.perf_counter() - t0:.1f} s)")
    for i in range(3):
        print(f"  ref {list(map(int, yv[i, :llv[i]]))}  hyp {hyps[i]}")
    return 0
