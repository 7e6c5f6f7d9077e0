"""``cyctc decode``: greedy or beam-search CTC decoding of Kaldi matrix archives to Kaldi text."""
import numpy as np

from . import common
from .kaldi_io import IntVectorWriter, ScalarWriter, TokenWriter

EXAMPLES = """\
Decodes each utterance of <logits-rspecifier> (Kaldi float matrices, T x C) and writes 'utt-id id id ...' to
<transcription-wspecifier> (a Kaldi int-vector archive: text with ark,t:, else binary), or 'utt-id sym sym ...'
(always text, as Kaldi's token archives) with --symbol-table.

--method greedy: the best path (arg-max class per frame, runs merged, blanks removed). --method beam: prefix beam
search (TensorFlow's ctc_beam_search_decoder; scores are log-softmax normalised per frame), keeping --beam-width
prefixes. The blank is --blank (default 0) for both. --scores-wspecifier writes 'utt-id log-probability' of each
output: the beam's score, or for greedy the log-probability of the best path.

Decoded ids missing from the symbol table are reported and their utterance skipped; the exit status is 1 when
none succeeded or a file failed (a malformed input, a full disk), 2 for usage errors.

examples:
  # greedy decoding to words through the lexicon's symbol table
  cyctc decode --symbol-table data/lang/words.txt ark:exp/logits.ark ark,t:exp/hyp.txt

  # beam search on log-probabilities from a pipe, ids on stdout, then scored with Kaldi's compute-wer
  nnet-forward ... ark:- | cyctc decode --method beam --beam-width 16 --input-is log-probs ark:- ark,t:- \\
      | compute-wer --mode=present ark:data/test/text_int ark:-

  # one job of a JOB=1:N split (see README)
  cyctc decode scp:exp/split4/logits.JOB.scp ark,t:exp/hyp.JOB.txt
"""


def add_arguments(p):
    p.usage = "cyctc decode [options] <logits-rspecifier> <transcription-wspecifier>"
    p.epilog = EXAMPLES
    common.add_input_arguments(p, labels=False)
    p.add_argument("transcription_wspecifier", metavar="transcription-wspecifier",
                   help="e.g. ark,t:hyp.txt or ark,t:-")
    common.add_score_options(p)
    p.add_argument("--method", choices=("greedy", "beam"), default="greedy", help="decoder (default greedy)")
    p.add_argument("--beam-width", type=int, default=100, help="prefixes kept by --method beam (default 100)")
    common.add_symbol_table_option(p, "write symbols instead of ids")
    p.add_argument("--scores-wspecifier", default=None, metavar="WSPECIFIER",
                   help="also write 'utt-id log-probability' of each output, e.g. ark,t:scores.txt")


def _decoder(args):
    ctc_greedy_decoder, ctc_beam_search_decoder = common.import_api(
        "decode", ("ctc_greedy_decoder", "ctc_beam_search_decoder"), "cyctc decode")

    def greedy(x, T, blank):
        decoded, _ = ctc_greedy_decoder(x, T, merge_repeated=True, blank_index=blank, time_major=False,
                                        num_threads=args.num_threads)
        # the best path's log-probability: sum over frames of the largest normalised score
        logp = common.log_softmax(x.reshape(-1, x.shape[2])).reshape(x.shape).max(axis=2)
        logp = np.where(np.arange(x.shape[1]) < T[:, None], logp.astype(np.float64), 0.0).sum(axis=1)
        return decoded[0].to_list(), logp

    def beam(x, T, blank):
        C = x.shape[2]
        order = np.array([c for c in range(C) if c != blank] + [blank])  # the beam decoder's blank is C - 1
        xs = x[:, :, order] if blank != C - 1 else x
        decoded, logp = ctc_beam_search_decoder(xs, T, beam_width=args.beam_width, top_paths=1,
                                                merge_repeated=False, time_major=False,
                                                num_threads=args.num_threads)
        seqs = [order[s] for s in decoded[0].to_list()]
        return seqs, logp[:, 0].astype(np.float64)

    return greedy if args.method == "greedy" else beam


def run(args):
    prog = "cyctc decode"
    msg = common.check_common_options(args, (("transcription_wspecifier", "transcription-wspecifier", "ark"),
                                                 ("scores_wspecifier", "--scores-wspecifier", "scalar")))
    if msg is None:
        from .._decode_args import beam_sizes

        try:  # the API's own rule (>= 1, not absurdly large), before any input is read
            beam_sizes(args.beam_width, 1)
        except (TypeError, ValueError) as e:
            msg = f"--{e}".replace("beam_width", "beam-width", 1)
    if msg:
        return common.usage_error(prog, msg)
    decode = _decoder(args)
    tally = common.Tally(prog)
    table = common.symbol_table(args)
    if table is not None:
        out_w = TokenWriter(args.transcription_wspecifier, "transcription-wspecifier")
    else:
        out_w = IntVectorWriter(args.transcription_wspecifier, "transcription-wspecifier")
    score_w = None
    stats = {"symbols": 0}
    try:
        score_w = ScalarWriter(args.scores_wspecifier, "--scores-wspecifier") if args.scores_wspecifier else None

        def compute(batch):
            x, T, _, _ = common.pad_batch(batch)
            seqs, logp = decode(x, T, common.resolve_blank(args.blank, x.shape[2]))
            for b, u in enumerate(batch):
                u.out = (np.asarray(seqs[b], dtype=np.int32), logp[b])

        def write(u):
            ids, logp = u.out
            if table is not None:
                try:
                    out_w.write(u.key, table.symbols(ids))
                except KeyError as e:
                    tally.skip(u.key, "unknown symbol", f"decoded id {e.args[0]} is not in {table.path}")
                    return False
            else:
                out_w.write(u.key, ids)
            if score_w is not None:
                score_w.write(u.key, u.x.dtype.type(logp))
            return True

        def done(u):  # counted once its batch reached every output
            stats["symbols"] += len(u.out[0])

        common.run_loop(args, tally, None, compute, write, (out_w, score_w), done)
    finally:
        common.close_outputs(tally, out_w, score_w)
    return tally.finish(f"{stats['symbols']} symbol(s) decoded")
