"""Independent, slow CTC references for the tests: a float64 log-space forward-backward, and a brute-force sum
over every frame-level path (tiny T and C only). Written from the definitions, sharing nothing with cyctc."""
import itertools

import numpy as np
from scipy.special import logsumexp, log_softmax


def collapse(path, blank, merge_repeated=True):
    """Label sequence a frame-level path reads as (merge runs, then drop blanks)."""
    out, prev = [], None
    for c in path:
        if c != blank and not (merge_repeated and c == prev):
            out.append(int(c))
        prev = c
    return out


def brute_force(logits, labels, blank, merge_repeated=True):
    """-log p(labels | logits (T, C)) by enumerating all C**T paths, and d/d logits by autodiff-free algebra."""
    T, C = logits.shape
    logp = log_softmax(logits.astype(np.float64), axis=1)
    target = [int(v) for v in labels]
    total = -np.inf
    occ = np.zeros((T, C))
    scores = []
    for path in itertools.product(range(C), repeat=T):
        if collapse(path, blank, merge_repeated) == target:
            s = logp[np.arange(T), path].sum()
            scores.append((s, path))
            total = np.logaddexp(total, s)
    if total == -np.inf:
        return np.inf, np.zeros((T, C))
    for s, path in scores:
        occ[np.arange(T), path] += np.exp(s - total)
    return -total, np.exp(logp) - occ


def ctc_logspace(logits, labels, blank, merge_repeated=True):
    """-log p and gradient w.r.t. logits (T, C) of one sequence, float64 log-space forward-backward."""
    T, C = logits.shape
    logp = log_softmax(logits.astype(np.float64), axis=1)
    L = len(labels)
    ext = [blank]
    for v in labels:
        ext += [int(v), blank]
    S = len(ext)
    if T == 0:
        return (0.0 if L == 0 else np.inf), np.zeros((T, C))

    def stay(s):
        return merge_repeated or ext[s] == blank

    def skip(s):
        return ext[s] != blank and s >= 2 and (not merge_repeated or ext[s] != ext[s - 2])

    la = np.full((T, S), -np.inf)
    la[0, 0] = logp[0, ext[0]]
    if S > 1:
        la[0, 1] = logp[0, ext[1]]
    for t in range(1, T):
        for s in range(S):
            terms = [la[t - 1, s - 1]] if s >= 1 else []
            if stay(s):
                terms.append(la[t - 1, s])
            if skip(s):
                terms.append(la[t - 1, s - 2])
            la[t, s] = logsumexp(terms) + logp[t, ext[s]] if terms else -np.inf
    lb = np.full((T, S), -np.inf)
    lb[T - 1, S - 1] = 0.0
    if S > 1:
        lb[T - 1, S - 2] = 0.0
    for t in range(T - 2, -1, -1):
        for s in range(S):
            terms = []
            if stay(s):
                terms.append(lb[t + 1, s] + logp[t + 1, ext[s]])
            if s + 1 < S:
                terms.append(lb[t + 1, s + 1] + logp[t + 1, ext[s + 1]])
            if s + 2 < S and skip(s + 2):
                terms.append(lb[t + 1, s + 2] + logp[t + 1, ext[s + 2]])
            lb[t, s] = logsumexp(terms) if terms else -np.inf
    logP = logsumexp(la[T - 1, S - 2:]) if S > 1 else la[T - 1, 0]
    if logP == -np.inf:
        return np.inf, np.zeros((T, C))
    occ = np.zeros((T, C))
    post = np.exp(la + lb - logP)
    for s in range(S):
        occ[:, ext[s]] += post[:, s]
    return -logP, np.exp(logp) - occ


def batch_reference(logits_btc, labels, label_length, logit_length, blank, merge_repeated=True):
    """Per-example reference over a batch-major (B, T, C) array; gradient 0 beyond logit_length."""
    B, T, C = logits_btc.shape
    loss = np.zeros(B)
    grad = np.zeros((B, T, C))
    for b in range(B):
        tb = int(logit_length[b])
        loss[b], grad[b, :tb] = ctc_logspace(logits_btc[b, :tb], labels[b, :label_length[b]], blank,
                                             merge_repeated)
    return loss, grad


def random_problem(rng, B, T, C, L, blank=0, dtype=np.float64, scale=1.0, min_frac=0.5):
    """Random logits (B, T, C), labels avoiding the blank, feasible lengths."""
    x = (rng.standard_normal((B, T, C)) * scale).astype(dtype)
    classes = np.array([c for c in range(C) if c != blank])
    labels = classes[rng.integers(0, len(classes), size=(B, max(L, 1)))]
    ll = rng.integers(int(L * min_frac), L + 1, size=B) if L else np.zeros(B, dtype=np.int64)
    tl = np.empty(B, dtype=np.int64)
    for b in range(B):
        lab = labels[b, :ll[b]]
        need = ll[b] + int(np.sum(lab[1:] == lab[:-1]))
        tl[b] = rng.integers(min(max(need, 1), T), T + 1)
    for b in range(B):
        labels[b, ll[b]:] = 0
    return x, labels.astype(np.int32), ll.astype(np.int32), tl.astype(np.int32)


def exact_brute_force(logits, labels, blank, merge_repeated=True, digits=120):
    """-log p(labels | logits (T, C)) and its gradient by enumerating every path in mpmath arithmetic of `digits`
    significant digits: exact (to double rounding of the answer) at any logit magnitude a float holds, where a
    float64 log-space recursion loses the few nats that decide between paths (logits of 1e30 or -1e10 and more).
    Tiny T and C only."""
    import mpmath

    with mpmath.workdps(digits):
        T, C = logits.shape
        logp = []
        for row in np.asarray(logits, dtype=np.float64):
            vals = [mpmath.mpf(float(v)) for v in row]
            finite = [v for v in vals if mpmath.isfinite(v)]
            m = max(finite) if finite else mpmath.mpf(0)
            s = sum(mpmath.exp(v - m) for v in finite)
            logp.append([(v - m) - mpmath.log(s) if mpmath.isfinite(v) else None for v in vals])
        target = [int(v) for v in labels]
        scores = []
        for path in itertools.product(range(C), repeat=T):
            if collapse(path, blank, merge_repeated) == target and all(logp[t][c] is not None
                                                                      for t, c in enumerate(path)):
                scores.append((sum(logp[t][c] for t, c in enumerate(path)), path))
        soft = np.array([[float(mpmath.exp(v)) if v is not None else 0.0 for v in row] for row in logp])
        if not scores:
            return np.inf, np.zeros((T, C))
        top = max(s for s, _ in scores)
        z = sum(mpmath.exp(s - top) for s, _ in scores)
        occ = [[mpmath.mpf(0)] * C for _ in range(T)]
        for s, path in scores:
            w = mpmath.exp(s - top) / z
            for t, c in enumerate(path):
                occ[t][c] += w
        grad = np.array([[float(mpmath.exp(logp[t][c]) - occ[t][c]) if logp[t][c] is not None else 0.0
                          for c in range(C)] for t in range(T)])
        return float(-(top + mpmath.log(z))), grad
