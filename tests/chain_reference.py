"""Independent float64 references for the chain alignment (ctc_align with gaps, ctc_segment): the graph built from
its documented rules in plain Python, a max-product Viterbi with the documented tie rules and a log-space
forward-backward, in numpy. Nothing is shared with cyctc's C code."""
import numpy as np
from scipy.special import logsumexp

GAP = -1


def graph(tokens, blank):
    """(kind list, class list (None for gaps), allowed[k][s] for offsets k = 1..4, start (S,), end (S,))."""
    S = 2 * len(tokens) + 1
    kind = ["blank" if s % 2 == 0 else ("gap" if tokens[s // 2] == GAP else "label") for s in range(S)]
    cls = [blank if k == "blank" else (None if k == "gap" else int(tokens[s // 2])) for s, k in enumerate(kind)]
    optional = [k != "label" for k in kind]

    def ok(a, s):  # a -> s, a = -1 the start, s = S the end
        between = range(a + 1, s)
        if not all(optional[i] for i in between):
            return False
        if s < S and optional[s] and any(kind[i] == kind[s] for i in between):
            return False  # landing on a blank (gap) after skipping a blank (gap) duplicates a path
        if a >= 0 and s < S:
            if kind[a] == kind[s] and kind[s] != "label":
                return False
            if kind[a] == kind[s] == "label" and cls[a] == cls[s]:
                return False
        return True

    allowed = {k: np.array([s - k >= 0 and ok(s - k, s) for s in range(S)]) for k in range(1, 5)}
    start = np.array([ok(-1, s) for s in range(S)])
    end = np.array([ok(s, S) for s in range(S)])
    return kind, cls, allowed, start, end


def scores(lp, tokens, blank, penalty):
    """(T, S) frame scores of every state."""
    kind, cls, *_ = graph(tokens, blank)
    best = lp.max(axis=1)
    return np.stack([best - penalty if c is None else lp[:, c] for c in cls], axis=1)


def viterbi(lp, tokens, blank, penalty=0.0):
    """(state path (T,), score) or (None, -inf); ties: self-loop, then offsets 1..4; the last end state."""
    lp = np.asarray(lp, dtype=np.float64)
    T = lp.shape[0]
    kind, cls, allowed, start, end = graph(tokens, blank)
    S = len(kind)
    if T == 0:
        return (np.zeros(0, int), 0.0) if all(k != "label" for k in kind) else (None, -np.inf)
    em = scores(lp, tokens, blank, penalty)
    row = np.where(start, em[0], -np.inf)
    back = np.zeros((T, S), dtype=int)
    for t in range(1, T):
        best, arg = row.copy(), np.zeros(S, int)
        for k in range(1, 5):
            cand = np.full(S, -np.inf)
            cand[k:] = row[:-k] if S > k else cand[k:]
            cand[~allowed[k]] = -np.inf
            better = cand > best
            best[better], arg[better] = cand[better], k
        back[t], row = arg, best + em[t]
    cand = np.where(end, row, -np.inf)
    if cand.max() == -np.inf:
        return None, -np.inf
    s = int(np.flatnonzero(cand == cand.max())[-1])
    score = float(cand[s])
    path = np.zeros(T, int)
    for t in range(T - 1, -1, -1):
        path[t] = s
        s -= back[t, s]
    return path, score


def posteriors(lp, tokens, blank, penalty=0.0):
    """(T, S) posterior probability of each state at each frame (log-space forward-backward)."""
    lp = np.asarray(lp, dtype=np.float64)
    T = lp.shape[0]
    kind, cls, allowed, start, end = graph(tokens, blank)
    S = len(kind)
    em = scores(lp, tokens, blank, penalty)
    alpha = np.full((T, S), -np.inf)
    beta = np.full((T, S), -np.inf)
    alpha[0] = np.where(start, em[0], -np.inf)
    for t in range(1, T):
        terms = [alpha[t - 1]]
        for k in range(1, 5):
            c = np.full(S, -np.inf)
            c[k:] = alpha[t - 1, :-k] if S > k else c[k:]
            c[~allowed[k]] = -np.inf
            terms.append(c)
        alpha[t] = logsumexp(np.stack(terms), axis=0) + em[t]
    beta[T - 1] = np.where(end, 0.0, -np.inf)
    for t in range(T - 2, -1, -1):
        nxt = beta[t + 1] + em[t + 1]
        terms = [nxt]
        for k in range(1, 5):
            c = np.full(S, -np.inf)
            ok = allowed[k][k:]  # s -> s + k allowed
            c[:-k] = np.where(ok, nxt[k:], -np.inf) if S > k else c[:-k]
            terms.append(c)
        beta[t] = logsumexp(np.stack(terms), axis=0)
    logp = logsumexp(alpha[T - 1] + beta[T - 1])
    with np.errstate(invalid="ignore"):
        return np.exp(alpha + beta - logp)
