"""Long-audio segmentation: cyctc.ctc_segment against ctc-segmentation (pip ``ctc-segmentation``) and, where it is
installed, torchaudio's ``forced_align``, on the same synthetic recordings (see README.md, "Segmentation").

    python benchmarks/bench_segment.py [--frames 20000 90000 180000] [--tools cyctc ctcseg torchaudio] [--json F]
                                       [--threads 2]

cyctc runs with ``num_threads=--threads`` (default 2: a recording's Viterbi first pass and posteriors take two);
ctc-segmentation and torchaudio run as they come. Children get ``OMP_WAIT_POLICY=passive`` unless the environment
sets it (on a shared machine libgomp's spinning idle thread takes the time slices the working one needs: see the
top README). Each tool runs in a fresh subprocess per recording: seconds of the call, peak memory growth during it (RSS high-water
mark after resetting it, every page the call touched), and boundary agreement with the generator's truth:

* ``first+last``: the share of utterances whose first label starts, and whose last label starts, within 2 frames of
  the truth (what every tool reports: ctc-segmentation's per-label timings, torchaudio's frame path);
* ``start/end``: the share whose ``start`` and ``end`` (one past the last label frame) are within 2 frames
  (cyctc's SegmentResult; for ctc-segmentation, its padded utterance segments).

torchaudio's ``forced_align`` aligns one transcript to the whole audio (no untranscribed audio): it is given the
utterances concatenated, which is what its users do; it needs the whole T x (2L + 1) trellis.
"""
import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _segment_synth import make_recording  # noqa: E402

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024


def _hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024


def _child(tool, path):
    lp = np.load(path + ".npy")
    with open(path + ".pkl", "rb") as f:
        utts = pickle.load(f)
    out = {}
    if tool == "cyctc":
        import cyctc

        threads = int(os.environ.get("CYCTC_BENCH_THREADS", "2"))
        cyctc.ctc_segment(lp[:200], utts[:1], num_threads=threads)  # warm up (imports, first allocations)

        def run():
            r = cyctc.ctc_segment(lp, utts, num_threads=threads)
            out["first"] = [int(s[0]) for s in r.label_start]
            out["last"] = [int(s[-1]) for s in r.label_start]
            out["start"], out["end"] = r.start.tolist(), r.end.tolist()
            out["confidence_min"] = float(np.min(r.confidence))
    elif tool == "ctcseg":
        from ctc_segmentation import (CtcSegmentationParameters, ctc_segmentation, determine_utterance_segments,
                                      prepare_token_list)

        config = CtcSegmentationParameters()
        config.char_list = ["<b>"] + [f"c{i}" for i in range(1, lp.shape[1])]
        config.blank = 0
        config.index_duration = 0.01

        def run():
            gt, ubi = prepare_token_list(config, utts)
            timings, char_probs, _ = ctc_segmentation(config, lp, gt)
            segs = determine_utterance_segments(config, ubi, char_probs, timings, utts)
            out["first"] = [int(round(timings[ubi[i] + 1] / 0.01)) for i in range(len(utts))]
            out["last"] = [int(round(timings[ubi[i] + len(u)] / 0.01)) for i, u in enumerate(utts)]
            out["start"] = [int(round(s[0] / 0.01)) for s in segs]
            out["end"] = [int(round(s[1] / 0.01)) for s in segs]
    elif tool == "torchaudio":
        import torch
        import torchaudio.functional as F

        x = torch.from_numpy(np.ascontiguousarray(lp, dtype=np.float32))[None]
        tgt = torch.from_numpy(np.concatenate(utts).astype(np.int32))[None]

        def run():
            ali, _ = F.forced_align(x, tgt, blank=0)
            path = ali[0].numpy()
            starts = np.flatnonzero((path != 0) & np.concatenate([[True], path[1:] != path[:-1]]))
            cuts = np.cumsum([0] + [len(u) for u in utts])
            if len(starts) != cuts[-1]:  # repeated labels merged: give up on label positions
                raise RuntimeError("path does not spell the labels")
            out["first"] = starts[cuts[:-1]].tolist()
            out["last"] = starts[cuts[1:] - 1].tolist()
    else:
        raise SystemExit(f"unknown tool {tool}")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss()
    t0 = time.perf_counter()
    run()
    out["seconds"] = time.perf_counter() - t0
    out["peak_mb"] = max(0, _hwm() - before) / 2**20
    print(json.dumps(out))


def _agree(a, b):
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b)) <= 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[20000, 90000, 180000])
    ap.add_argument("--tools", nargs="+", default=["cyctc", "ctcseg", "torchaudio"])
    ap.add_argument("--gaps", nargs="+", default=["silence", "speech"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2, help="cyctc's num_threads (default 2)")
    ap.add_argument("--child", nargs=2, metavar=("TOOL", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return _child(*a.child)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for T in a.frames:
            for gaps in a.gaps:
                lp, utts, truth = make_recording(T, speech_gaps=gaps == "speech", seed=T % 1000 + (gaps == "speech"))
                path = os.path.join(d, f"rec_{T}_{gaps}")
                np.save(path + ".npy", lp)
                with open(path + ".pkl", "wb") as f:
                    pickle.dump(utts, f)
                first = [int(s[0]) for s in truth["label_start"]]
                last = [int(s[-1]) for s in truth["label_start"]]
                for tool in a.tools:
                    env = {"OMP_WAIT_POLICY": "passive", **os.environ, **MALLOC_ENV,
                           "CYCTC_BENCH_THREADS": str(a.threads)}
                    p = subprocess.run([sys.executable, __file__, "--child", tool, path], capture_output=True,
                                       text=True, env=env)
                    row = {"T": T, "gaps": gaps, "tool": tool, "N": len(utts), "L": int(sum(map(len, utts)))}
                    if tool == "cyctc":
                        row["threads"] = a.threads
                    if p.returncode != 0:
                        row["error"] = (p.stderr.strip().splitlines() or ["failed"])[-1][:120]
                    else:
                        r = json.loads(p.stdout.strip().splitlines()[-1])
                        row.update(seconds=r["seconds"], peak_mb=r["peak_mb"],
                                   first_last=float(np.mean((np.abs(np.array(r["first"]) - first) <= 2) &
                                                            (np.abs(np.array(r["last"]) - last) <= 2))))
                        if "start" in r:
                            row["start_end"] = float(np.mean(
                                (np.abs(np.array(r["start"]) - truth["start"]) <= 2) &
                                (np.abs(np.array(r["end"]) - truth["end"]) <= 2)))
                        if "confidence_min" in r:
                            row["confidence_min"] = r["confidence_min"]
                    rows.append(row)
                    print(_fmt(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


def _fmt(r):
    head = f"T={r['T']:>6} {r['gaps']:<7} {r['tool']:<10} N={r['N']:>4} L={r['L']:>6}"
    if "error" in r:
        return f"{head}  not run: {r['error']}"
    se = f"{100 * r['start_end']:5.1f}%" if "start_end" in r else "    -"
    return (f"{head}  {r['seconds']:8.2f} s  {r['peak_mb']:8.1f} MB  first+last {100 * r['first_last']:5.1f}%  "
            f"start/end {se}")


if __name__ == "__main__":
    main()
