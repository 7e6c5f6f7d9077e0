"""The synthetic long recordings of bench_segment.py (see benchmarks/README.md, "Segmentation").

A recording is a sequence of utterances of 5-40 labels (classes 1..C-1, blank 0), each label a peak of 1-2 frames,
peaks 3-6 frames apart (blank frames between), separated (and preceded and followed) by 20-200 untranscribed
frames: silence (blank frames) or untranscribed speech (peaks of random labels at the same rhythm). Logits are
standard normal plus 5 on the true class of every frame; log-probabilities are their log-softmax.
"""
import numpy as np


def make_recording(T, C=32, speech_gaps=False, seed=0, dtype=np.float32):
    """(log_probs (T, C), utterances [int64 arrays], truth dict with 'start', 'end' (N,) and per-label
    'label_start' (list of arrays)) for a recording of about T frames (exactly T: the tail is a gap)."""
    rng = np.random.default_rng(seed)
    cls = np.zeros(T, dtype=np.int64)
    utts, starts, ends, lstarts = [], [], [], []

    def speech(t, n_labels, labels=None):
        """Peaks from frame t; returns (frame after, label frames)."""
        first = []
        for j in range(n_labels):
            lab = labels[j] if labels is not None else int(rng.integers(1, C))
            width = int(rng.integers(1, 3))
            if t + width > T:
                return None, None
            cls[t:t + width] = lab
            first.append(t)
            t += width
            if j < n_labels - 1:
                t += int(rng.integers(3, 7)) - width if width < 3 else 1
        return t, first

    t = 0
    while True:
        gap = int(rng.integers(20, 201))
        g_end = min(t + gap, T)
        if speech_gaps and gap > 10:
            u = t + 3
            while u < g_end - 8:
                cls[u] = int(rng.integers(1, C))
                u += int(rng.integers(3, 7))
        t = g_end
        L = int(rng.integers(5, 41))
        labels = rng.integers(1, C, size=L)
        for j in range(1, L):  # equal neighbours would need the blank between them: keep them distinct
            while labels[j] == labels[j - 1]:
                labels[j] = int(rng.integers(1, C))
        cls_before = cls.copy()
        stop, first = speech(t, L, labels)
        if stop is None or stop + 20 > T:
            cls[:] = cls_before
            cls[t:] = 0
            break
        utts.append(labels.astype(np.int64))
        starts.append(first[0])
        ends.append(stop)
        lstarts.append(np.array(first))
        t = stop
    logits = rng.standard_normal((T, C))
    logits[np.arange(T), cls] += 5.0
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    truth = {"start": np.array(starts), "end": np.array(ends), "label_start": lstarts}
    return lp.astype(dtype), utts, truth
