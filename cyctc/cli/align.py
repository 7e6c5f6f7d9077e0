"""``cyctc align``: CTC forced alignment of Kaldi matrix archives to a Kaldi alignment archive and a CTM."""
import numpy as np

from . import common
from ..segment import frame_shift_problem, time_format
from .kaldi_io import IntVectorWriter, TextWriter


EXAMPLES = """\
For each utterance of <logits-rspecifier> (Kaldi float matrices, T x C) whose id is in <labels-rspecifier>, finds
the most probable frame-level CTC path that spells the labels (Viterbi; scores are log-softmax normalised per
frame first) and writes it to <alignment-wspecifier> as a Kaldi int-vector alignment (one class id per frame,
blank frames included). With <ctm-wxfilename>, also writes one line per label segment in CTM form:
'utt-id 1 start duration label' (channel 1, times in seconds = frames * --frame-shift, the label's symbol when
--symbol-table is given).

Utterances without labels, with bad labels, or with no possible alignment (too few frames) are reported and
skipped; the exit status is 1 when none succeeded or a file failed (a malformed input, a full disk), 2 for usage
errors. Long utterances (an hour of frames) are aligned within --memory-limit by checkpointing; an utterance
whose smallest work space exceeds it is reported and skipped.

examples:
  # alignments as a binary archive and a CTM of the tokens
  cyctc align --symbol-table data/lang/tokens.txt ark:exp/logits.ark ark,t:data/train/text \\
      ark:exp/ali.ark exp/ali.ctm

  # log-probabilities from a pipe, integer labels, text alignments on stdout, 40 ms frames
  nnet-forward ... ark:- | cyctc align --input-is log-probs --frame-shift 0.04 ark:- ark:labels.ark ark,t:-

  # one job of a JOB=1:N split (see README)
  cyctc align scp:exp/split4/logits.JOB.scp ark:exp/labels.ark ark:exp/ali.JOB.ark exp/ali.JOB.ctm
"""


def add_arguments(p):
    p.usage = ("cyctc align [options] <logits-rspecifier> <labels-rspecifier> <alignment-wspecifier> "
               "[<ctm-wxfilename>]")
    p.epilog = EXAMPLES
    common.add_input_arguments(p)
    p.add_argument("alignment_wspecifier", metavar="alignment-wspecifier", help="e.g. ark:ali.ark or ark,t:-")
    p.add_argument("ctm_wxfilename", metavar="ctm-wxfilename", nargs="?", default=None,
                   help="optional text output of label segments, e.g. ali.ctm, - (stdout) or '| gzip -c > x.gz'")
    common.add_score_options(p)
    common.add_symbol_table_option(p, "labels are symbols ('utt-id a b c')",
                                   "; the CTM shows symbols. An unknown symbol skips its utterance")
    p.add_argument("--frame-shift", type=float, default=0.01,
                   help="seconds per frame for the CTM (default 0.01)")
    common.add_memory_limit_option(p)


def run(args):
    prog = "cyctc align"
    ctc_align, ctc_segments = common.import_api("align", ("ctc_align", "ctc_segments"), prog)
    msg = common.check_common_options(args, (("alignment_wspecifier", "alignment-wspecifier", "ark"),))
    if msg is None:
        msg = frame_shift_problem(args.frame_shift, "--frame-shift")
    if msg:
        return common.usage_error(prog, msg)
    tally = common.Tally(prog)
    table = common.symbol_table(args)
    labels, dup, labels_error = common.load_labels(args.labels_rspecifier, table)
    common.report_labels(tally, dup, labels_error)
    fmt = time_format(args.frame_shift)
    stats = {"logp": 0.0, "frames": 0}
    ali_w = IntVectorWriter(args.alignment_wspecifier, "alignment-wspecifier")
    ctm_w = None
    try:
        ctm_w = TextWriter(args.ctm_wxfilename, "ctm-wxfilename") if args.ctm_wxfilename else None

        def align(batch):
            x, T, lab, L = common.pad_batch(batch)
            blank = common.resolve_blank(args.blank, x.shape[2])
            res = ctc_align(x, lab, T, L, blank_index=blank, time_major=False, normalize=True,
                            num_threads=args.num_threads, memory_limit=args.memory_limit)
            for b, u in enumerate(batch):
                u.out = (res.path[b, :T[b]], float(res.log_prob[b]), bool(res.feasible[b]), blank)

        def write(u):
            if isinstance(u.out, str):
                tally.skip(u.key, "over --memory-limit", u.out)
                return False
            path, logp, feasible, blank = u.out
            if not feasible:
                if np.isnan(logp):
                    tally.skip(u.key, "non-finite", "non-finite scores")
                else:
                    tally.skip(u.key, "no alignment",
                               f"no alignment of {len(u.labels)} labels in {len(path)} frames")
                return False
            ali_w.write(u.key, path)
            if ctm_w is not None:
                for start, end, label in ctc_segments(path, blank=blank):
                    name = table.to_sym.get(label, str(label)) if table is not None else str(label)
                    ctm_w.write_line(f"{u.key} 1 {fmt.format(start * args.frame_shift)} "
                                     f"{fmt.format((end - start) * args.frame_shift)} {name}")
            return True

        def done(u):  # counted once its batch reached every output
            stats["logp"] += u.out[1]
            stats["frames"] += len(u.out[0])

        common.run_loop(args, tally, labels, lambda batch: common.in_groups(batch, align), write, (ali_w, ctm_w),
                        done)
    finally:
        common.close_outputs(tally, ali_w, ctm_w)
    extra = (f"average log-probability per frame {stats['logp'] / stats['frames']:.6g} over "
             f"{stats['frames']} frame(s)" if stats["frames"] else "")
    return tally.finish(extra)
