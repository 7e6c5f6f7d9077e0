"""``cyctc loss``: per-utterance CTC loss of Kaldi matrix archives, and optionally the gradient matrices."""
import numpy as np

from . import common
from .kaldi_io import MatrixWriter, ScalarWriter

EXAMPLES = """\
Computes -log p(labels | scores) for each utterance of <logits-rspecifier> (Kaldi float matrices, T x C) whose
id is in <labels-rspecifier> (Kaldi int vectors, binary, or text 'utt-id 3 17 5' lines), writing 'utt-id loss' to
<loss-wspecifier> and, if given, the gradient matrices (T x C) to <grad-wspecifier>.

Gradient: with --input-is logits or log-probs it is d loss / d scores = softmax(scores) - occupancy (for
log-probs this is PyTorch's convention, right when back-propagated through the log-softmax that made them); with
--input-is probs it is d loss / d probs = (probs / sum(probs) - occupancy) / probs by the chain rule through
log (written as 0 where a probability is exactly 0, where it is undefined). Infeasible utterances (fewer frames
than labels plus repeats) get loss inf and gradient 0; non-finite scores give nan.

Utterances without labels (or with labels out of range, or equal to the blank) are reported and skipped; the
exit status is 1 when none succeeded or a file failed (a malformed input, a full disk), 2 for usage errors.

examples:
  # labels from Kaldi's data/text through a symbol table; losses as text on stdout
  cyctc loss --symbol-table data/lang/tokens.txt ark:exp/nnet/logits.ark ark,t:data/train/text ark,t:-

  # log-softmax outputs of a model, integer labels, gradient back to a binary archive with an scp index
  nnet-forward ... ark:- | cyctc loss --input-is log-probs --blank 0 ark:- ark:data/train/labels.ark \\
      ark,t:exp/loss.txt ark,scp:exp/grad.ark,exp/grad.scp

  # one job of a JOB=1:N split (see README)
  cyctc loss scp:exp/split4/logits.JOB.scp ark:exp/labels.ark ark,t:exp/loss.JOB.txt

  # hour-long utterances with their gradients in at most 2 GiB of work space (rows checkpointed to fit)
  cyctc loss --memory-limit 2G scp:exp/long/logits.scp ark:exp/long/labels.ark ark,t:loss.txt ark:grad.ark
"""


def add_arguments(p):
    p.usage = "cyctc loss [options] <logits-rspecifier> <labels-rspecifier> <loss-wspecifier> [<grad-wspecifier>]"
    p.epilog = EXAMPLES
    common.add_input_arguments(p)
    p.add_argument("loss_wspecifier", metavar="loss-wspecifier", help="e.g. ark,t:loss.txt or ark,t:- (text)")
    p.add_argument("grad_wspecifier", metavar="grad-wspecifier", nargs="?", default=None,
                   help="optional, e.g. ark:grad.ark or ark,scp:grad.ark,grad.scp")
    common.add_score_options(p)
    common.add_symbol_table_option(p, "labels are symbols ('utt-id a b c', as Kaldi's data/text)",
                                   "; an unknown symbol skips its utterance")
    common.add_memory_limit_option(p)


def _compute(args, want_grad):
    import cyctc

    def compute(batch):
        x, T, lab, L = common.pad_batch(batch)
        blank = common.resolve_blank(args.blank, x.shape[2])
        out = cyctc.ctc_loss(lab, x, L, T, logits_time_major=False, blank_index=blank, return_grad=want_grad,
                             num_threads=args.num_threads, memory_limit=args.memory_limit)
        loss, grad = out if want_grad else (out, None)
        for b, u in enumerate(batch):
            g = None
            if want_grad:
                g = grad[b, :T[b]]
                if args.input_is == "probs":  # chain rule through log: d/dp = d/dlog(p) / p
                    with np.errstate(divide="ignore", invalid="ignore"):
                        g = np.where(u.mat > 0, g / u.mat, 0.0).astype(u.mat.dtype)
            u.out = (loss[b], g)

    return lambda batch: common.in_groups(batch, compute)


def run(args):
    prog = "cyctc loss"
    msg = common.check_common_options(args, (("loss_wspecifier", "loss-wspecifier", "scalar"),
                                                 ("grad_wspecifier", "grad-wspecifier", "ark")))
    if msg:
        return common.usage_error(prog, msg)
    tally = common.Tally(prog)
    labels, dup, labels_error = common.load_labels(args.labels_rspecifier, common.symbol_table(args))
    common.report_labels(tally, dup, labels_error)
    want_grad = args.grad_wspecifier is not None
    loss_w = ScalarWriter(args.loss_wspecifier, "loss-wspecifier")
    grad_w = None
    stats = {"sum": 0.0, "frames": 0, "inf": 0, "nan": 0}
    try:
        grad_w = MatrixWriter(args.grad_wspecifier, "grad-wspecifier") if want_grad else None

        def write(u):
            if isinstance(u.out, str):
                tally.skip(u.key, "over --memory-limit", u.out)
                return False
            loss, g = u.out
            loss_w.write(u.key, loss)
            if grad_w is not None:
                grad_w.write(u.key, g)
            if np.isnan(loss):
                tally.warn(f"utterance {u.key!r}: loss is nan (non-finite scores)")
            elif np.isinf(loss):
                tally.warn(f"utterance {u.key!r}: loss is inf (infeasible: {u.mat.shape[0]} frames for "
                           f"{len(u.labels)} labels)")

        def done(u):  # counted once its batch reached every output
            loss = u.out[0]
            if np.isnan(loss):
                stats["nan"] += 1
            elif np.isinf(loss):
                stats["inf"] += 1
            else:
                stats["sum"] += float(loss)
                stats["frames"] += u.mat.shape[0]

        common.run_loop(args, tally, labels, _compute(args, want_grad), write, (loss_w, grad_w), done)
    finally:
        common.close_outputs(tally, loss_w, grad_w)
    unused = len(labels) - tally.matched
    extra = (f"average loss per frame {stats['sum'] / stats['frames']:.6g} over {stats['frames']} frame(s)"
             if stats["frames"] else "")
    if stats["inf"] or stats["nan"]:
        extra += f"{'; ' if extra else ''}{stats['inf']} infinite and {stats['nan']} nan loss(es) written"
    if unused > 0 and not tally.failed:
        tally.info(f"{unused} utterance(s) have labels but no scores")
    return tally.finish(extra)
