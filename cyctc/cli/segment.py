"""``cyctc segment``: find each utterance of a transcript in long recordings (Kaldi segments, CTM, confidence)."""
import os

import numpy as np

from . import common
from .kaldi_io import KaldiIOError, TextWriter, iter_matrices

EXAMPLES = """\
Each matrix of <logits-rspecifier> (Kaldi float matrices, T x C, or one .npy file) is a whole recording; the
utterances of <text> (Kaldi text: 'utt-id tok tok ...', in the order they are spoken) that belong to it are found
in it with cyctc.ctc_segment: exact best path over the recording, audio the text does not contain (before, between
and after the utterances) absorbed by untranscribed states. Writes <segments-wxfilename> (Kaldi segments:
'utt-id recording-id start end', seconds = frames * --frame-shift), and optionally a CTM of the labels
('utt-id 1 start duration label confidence', times from the utterance's start as Kaldi's CTMs of segmented data, or
from the recording's start with --recording-times) and the confidence of each utterance ('utt-id confidence').

An utterance belongs to the recording named in --utt2rec ('utt-id recording-id' lines), or without it to the
recording whose id, followed by '-' or '_', begins the utterance id (Kaldi's naming).

Bad input is an error before anything is written: a malformed text or --utt2rec, an unknown symbol, an empty
utterance, an utterance of no recording, a malformed archive. A recording without utterances, or whose utterances
do not fit its frames, is reported and skipped. Exit status 0 when every recording with utterances was segmented,
1 otherwise (then nothing is written), 2 for usage errors.

examples:
  # an hour of audio held as logits, token symbols, segments + CTM + confidences
  cyctc segment --symbol-table data/lang/tokens.txt --frame-shift 0.02 --utt2rec data/book/utt2rec \\
      ark:exp/book_logits.ark data/book/text data/book/segments --ctm data/book/ctm --confidence data/book/conf

  # one recording saved with numpy (T x C log-probabilities), read in place
  cyctc segment --input-is log-probs lecture.npy text segments
"""


def add_arguments(p):
    p.usage = "cyctc segment [options] <logits-rspecifier> <text> <segments-wxfilename>"
    p.epilog = EXAMPLES
    common.add_input_arguments(p, labels=False)
    p.add_argument("text", help="Kaldi text of the utterances in spoken order ('utt-id tok ...'): a file, or an "
                                "rspecifier such as ark,t:-")
    p.add_argument("segments_wxfilename", metavar="segments-wxfilename", help="Kaldi segments output, e.g. segments")
    p.add_argument("--ctm", default=None, metavar="WXFILENAME", help="also write a CTM of every label")
    p.add_argument("--confidence", default=None, metavar="WXFILENAME",
                   help="also write 'utt-id confidence' lines (the smallest posterior of the utterance's labels)")
    p.add_argument("--utt2rec", default=None, metavar="FILE", help="'utt-id recording-id' lines")
    p.add_argument("--input-is", choices=common.INPUT_KINDS, default="logits",
                   help="what the matrices hold (default: logits, log-softmax applied); log-probs are used as they "
                        "are; probs as log(probs)")
    p.add_argument("--blank", type=int, default=0,
                   help="blank class (default 0); negative counts from the number of classes (-1: the last)")
    p.add_argument("--num-threads", type=int, default=None, help="threads (default: all usable cores)")
    p.add_argument("--frame-shift", type=float, default=0.01, help="seconds per frame (default 0.01)")
    p.add_argument("--recording-times", action="store_true",
                   help="CTM times from the start of the recording (default: from the start of the utterance)")
    p.add_argument("--untranscribed-penalty", type=float, default=0.0,
                   help="cost (nats) of each frame left untranscribed, below the frame's best class (default 0)")
    common.add_symbol_table_option(p, "the text holds symbols", "; the CTM shows symbols")
    common.add_memory_limit_option(p)


def _spec(text):
    """A plain file name becomes a text-archive rspecifier."""
    head = text.split(":", 1)[0]
    if ":" in text and all(part in ("ark", "scp", "t", "b", "o", "s", "cs", "p", "f", "nf", "ns", "ncs")
                           for part in head.split(",")):
        return text
    return "ark,t:" + text


def _read_utt2rec(path):
    out = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise KaldiIOError(f"--utt2rec {path}:{n}: expected 'utt-id recording-id', got {line.strip()!r}")
                if parts[0] in out:
                    raise KaldiIOError(f"--utt2rec {path}:{n}: utterance {parts[0]!r} appears twice")
                out[parts[0]] = parts[1]
    except OSError as e:
        raise KaldiIOError(f"--utt2rec: cannot read {path}: {e.strerror or e}") from None
    return out


def _recordings(spec):
    """(key, matrix) of each recording: a .npy file (memory-mapped, read in place) or a matrix rspecifier."""
    if spec.endswith(".npy") and ":" not in spec:
        try:
            m = np.load(spec, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise KaldiIOError(f"logits-rspecifier: cannot read {spec}: {e}") from None
        yield os.path.splitext(os.path.basename(spec))[0], m
        return
    yield from iter_matrices(spec, "logits-rspecifier")


def run(args):
    prog = "cyctc segment"
    (ctc_segment,) = common.import_api("segment", ("ctc_segment",), prog)
    from ..segment import ctm_lines, frame_shift_problem, segments_lines

    msg = None
    msg = frame_shift_problem(args.frame_shift, "--frame-shift")
    if msg is not None:
        pass
    elif not (np.isfinite(args.untranscribed_penalty) and args.untranscribed_penalty >= 0):
        msg = f"--untranscribed-penalty must be a finite number >= 0, got {args.untranscribed_penalty}"
    if msg is None:
        from .._threads import resolve_num_threads

        try:
            args.num_threads = resolve_num_threads(args.num_threads)
        except (TypeError, ValueError) as e:
            msg = f"--num-threads: {e}"
    if msg is None and not args.logits_rspecifier.endswith(".npy"):
        try:
            from .kaldi_io import parse_rspecifier

            parse_rspecifier(args.logits_rspecifier, "logits-rspecifier")
        except KaldiIOError as e:
            msg = str(e)
    if msg is None:
        for name in (args.segments_wxfilename, args.ctm, args.confidence):
            if name is not None and name.startswith(("ark", "scp")) and ":" in name:
                msg = f"outputs are plain text files (a file name, - or '| cmd'), got {name!r}"
    if msg:
        return common.usage_error(prog, msg)
    tally = common.Tally(prog)
    table = common.symbol_table(args)

    # the whole text first: any problem in it is an error before anything is computed or written
    texts, dup, err = common.load_labels(_spec(args.text), table)
    if err is not None:
        raise err
    if dup:
        raise KaldiIOError(f"text {args.text}: {dup} utterance id(s) appear more than once")
    for key, v in texts.items():
        if isinstance(v, str):
            raise KaldiIOError(f"text {args.text}: utterance {key!r}: {v}")
        if len(v) == 0:
            raise KaldiIOError(f"text {args.text}: utterance {key!r} is empty (an utterance needs a label to be found)")
    utt2rec = _read_utt2rec(args.utt2rec) if args.utt2rec else None
    if utt2rec is not None:
        missing = [k for k in texts if k not in utt2rec]
        if missing:
            raise KaldiIOError(f"--utt2rec {args.utt2rec}: utterance {missing[0]!r} of the text has no recording")

    pending = dict(texts)
    seg_out, ctm_out, conf_out = [], [], []
    seen = set()
    failed = False
    for key, mat in tally.progress(_recordings(args.logits_rspecifier)):
        if key in seen:
            raise KaldiIOError(f"logits-rspecifier: recording {key!r} appears twice")
        seen.add(key)
        if utt2rec is not None:
            ids = [u for u in pending if utt2rec[u] == key]
        else:
            ids = [u for u in pending if u.startswith((key + "-", key + "_"))]
        if not ids:
            tally.warn(f"recording {key!r}: no utterances in the text; skipped")
            continue
        for u in ids:
            del pending[u]
        if mat.ndim != 2 or mat.dtype.kind != "f" or mat.shape[1] < 1:
            raise KaldiIOError(f"logits-rspecifier: recording {key!r}: expected a float matrix (T x C), got "
                               f"{mat.dtype} of shape {mat.shape}")
        C = mat.shape[1]
        blank = common.resolve_blank(args.blank, C)
        if blank is None:
            raise KaldiIOError(f"recording {key!r}: --blank {args.blank} does not fit {C} classes")
        utts = [texts[u] for u in ids]
        for u, lab in zip(ids, utts):
            why = common.label_problem(lab, C, blank)
            if why is not None:
                raise KaldiIOError(f"text {args.text}: utterance {u!r}: {why}")
        x = common.to_logits(mat, args.input_is)
        try:
            res = ctc_segment(x, utts, blank_index=blank, normalize=args.input_is == "logits",
                              num_threads=args.num_threads, memory_limit=args.memory_limit,
                              untranscribed_penalty=args.untranscribed_penalty)
        except MemoryError as e:
            tally.error(f"recording {key!r}: {e}")
            failed = True
            continue
        if not res.feasible:
            why = ("non-finite scores" if np.isnan(res.log_prob) else
                   f"its {len(ids)} utterances ({sum(map(len, utts))} labels) do not fit its {mat.shape[0]} frames")
            tally.error(f"recording {key!r}: {why}")
            failed = True
            continue
        seg_out += segments_lines(res, ids, key, args.frame_shift)
        if args.ctm:
            ctm_out += ctm_lines(res, ids, utts, args.frame_shift, table.to_sym if table is not None else None,
                                 recording_times=args.recording_times)
        conf_out += [f"{u} {c:.6f}" for u, c in zip(ids, res.confidence.tolist())]
        tally.done += len(ids)
    if pending:
        tally.error(f"{len(pending)} utterance(s) of the text belong to no recording read (first: "
                    f"{next(iter(pending))!r})")
        failed = True
    if failed:
        tally.info(f"nothing written ({tally.done} utterance(s) of the other recordings were segmented)")
        tally.done = 0
        return tally.finish() or 1
    writers = []
    try:
        for name, lines, what in ((args.segments_wxfilename, seg_out, "segments-wxfilename"),
                                  (args.ctm, ctm_out, "--ctm"), (args.confidence, conf_out, "--confidence")):
            if name is None:
                continue
            w = TextWriter(name, what)
            writers.append(w)
            for line in lines:
                w.write_line(line)
    finally:
        common.close_outputs(tally, *writers)
    return tally.finish()
