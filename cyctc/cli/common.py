"""What the Kaldi-style subcommands share: common options, the per-utterance reading loop (labels looked up by
utterance id, problems reported and skipped), batching by padding, score conversion, progress and the final tally.
"""
import sys

import numpy as np

from .kaldi_io import (KaldiIOError, SpecifierError, SymbolTable, check_scalar_wspecifier, iter_int_vectors,
                       iter_matrices, parse_rspecifier, parse_wspecifier)

INPUT_KINDS = ("logits", "log-probs", "probs")


class CommandError(Exception):
    """A subcommand cannot run (exit status 1); the message says why."""


def import_api(module, names, prog):
    """The named functions of cyctc.<module>, or CommandError when this build does not have them."""
    import importlib

    try:
        mod = importlib.import_module(f"cyctc.{module}")
        return [getattr(mod, n) for n in names]
    except (ImportError, AttributeError) as e:
        raise CommandError(f"{prog} needs cyctc.{module} ({', '.join(names)}), which this build of cyctc "
                           f"lacks: {e}") from None


# ------------------------------------------------------------------------------------------------------- options
def add_input_arguments(p, labels=True):
    """The positional inputs every command starts with: the scores (and the labels) rspecifiers."""
    p.add_argument("logits_rspecifier", metavar="logits-rspecifier", help="e.g. ark:logits.ark, ark:-, scp:x.scp")
    if labels:
        p.add_argument("labels_rspecifier", metavar="labels-rspecifier",
                       help="int-vector archive or text 'utt-id 3 17 5' lines, e.g. ark,t:labels.txt")


def add_symbol_table_option(p, what, then=""):
    """--symbol-table FILE ('symbol id' lines); ``what`` says what the command maps through it, ``then`` ends the
    help."""
    p.add_argument("--symbol-table", default=None, metavar="FILE",
                   help=f"{what}, mapped through FILE ('symbol id' lines){then}")


def symbol_table(args):
    """The --symbol-table, read once (None without one); KaldiIOError when it cannot be read."""
    return SymbolTable(args.symbol_table) if args.symbol_table else None


def add_score_options(p, batch_default=16):
    p.add_argument("--input-is", choices=INPUT_KINDS, default="logits",
                   help="what the matrices hold (default: logits). log-probs are used as they are (their softmax "
                        "is themselves); probs are used as log(probs)")
    p.add_argument("--blank", type=int, default=0,
                   help="blank class (default 0); negative counts from the number of classes (-1: the last)")
    p.add_argument("--batch-size", type=int, default=batch_default,
                   help=f"utterances computed together (default {batch_default}); results do not depend on it")
    p.add_argument("--num-threads", type=int, default=None,
                   help="threads (default: all usable cores, or OMP_NUM_THREADS); n < 0 counts back from the "
                        "core count; results do not depend on it")


def _memory_size(text):
    import argparse

    from .._memory import parse_size

    try:
        return parse_size(text, "--memory-limit")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_memory_limit_option(p):
    """--memory-limit SIZE: the work space of each computation (bytes, or 512M, 2G; parsed by cyctc._memory), into
    ``args.memory_limit`` (None: CYCTC_MEMORY_LIMIT from the environment, else 1 GiB)."""
    p.add_argument("--memory-limit", type=_memory_size, default=None, metavar="SIZE",
                   help="work space of each computation: bytes, or a number with a unit K, M, G (e.g. 512M); "
                        "default: CYCTC_MEMORY_LIMIT from the environment, else 1G. Long utterances are checkpointed "
                        "to fit; results do not depend on it")


def check_common_options(args, outputs=()):
    """The usage error of the shared options and of the specifiers (a message for ``usage_error``, exit status 2),
    or None. ``outputs``: (attribute, name, kind) of the command's outputs, kind "scalar" (an ark of per-utterance
    values, no scp index), "ark" (any wspecifier) or "file" (a wxfilename, not checked); absent ones are skipped."""
    from .._threads import resolve_num_threads

    try:
        for attr, what in (("logits_rspecifier", "logits-rspecifier"), ("labels_rspecifier", "labels-rspecifier")):
            if getattr(args, attr, None) is not None:
                parse_rspecifier(getattr(args, attr), what)
        for attr, what, kind in outputs:
            spec = getattr(args, attr, None)
            if spec is None or kind == "file":
                continue
            if kind == "scalar":
                check_scalar_wspecifier(spec, what)
            else:
                parse_wspecifier(spec, what)
    except SpecifierError as e:
        return str(e)

    specs = [getattr(args, n, None) for n in ("logits_rspecifier", "labels_rspecifier")]
    if all(s is not None and s.partition(":")[2].strip() == "-" for s in specs):
        return "the scores and the labels cannot both be read from stdin"
    if args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    try:
        args.num_threads = resolve_num_threads(args.num_threads)
    except (TypeError, ValueError) as e:
        return f"--num-threads: {e}"
    return None


def usage_error(prog, msg):
    print(f"{prog}: ERROR: {msg}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------------------ reporting
class Tally:
    """Warnings and counts of one run, printed to stderr Kaldi-style; ``finish`` gives the exit status."""

    def __init__(self, prog):
        self.prog = prog
        self.done = 0
        self.matched = 0  # utterances whose labels were found
        self.skipped = {}
        self.failed = False
        self._bar = None

    def _print(self, line):
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def warn(self, msg):
        self._print(f"{self.prog}: WARNING: {msg}")

    def error(self, msg):
        self.failed = True
        self._print(f"{self.prog}: ERROR: {msg}")

    def info(self, msg):
        self._print(f"{self.prog}: {msg}")

    def skip(self, key, why, detail):
        """Report utterance ``key`` as skipped; ``why`` is the reason counted in the summary."""
        self.skipped[why] = self.skipped.get(why, 0) + 1
        self.warn(f"utterance {key!r}: {detail}; skipped")

    def progress(self, iterable):
        """``iterable`` with a tqdm bar on stderr when stderr is a terminal (and tqdm is installed)."""
        if not sys.stderr.isatty():
            return iterable
        try:
            from tqdm import tqdm
        except ImportError:
            return iterable
        self._bar = tqdm(iterable, desc=self.prog, unit="utt", file=sys.stderr, leave=False)
        return self._bar

    def finish(self, extra=""):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        n_skip = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        self.info(f"done {self.done} utterance(s), skipped {n_skip}" + (f" ({reasons})" if reasons else "") +
                  (f"; {extra}" if extra else ""))
        if self.done == 0:
            self.error("no utterance succeeded")
        return 1 if self.failed or self.done == 0 else 0


# ------------------------------------------------------------------------------------------------- score handling
def log_softmax(x):
    """Row-wise log-softmax in x's dtype (computed in float64)."""
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = (x64 - m) - np.log(np.sum(np.exp(x64 - m), axis=1, keepdims=True))  # shift-invariant
    return out.astype(x.dtype)


def to_logits(mat, input_is):
    """The scores cyctc takes (a softmax over classes is applied) from a matrix of ``input_is`` values."""
    if input_is == "probs":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(mat)
    return mat


def resolve_blank(blank, C):
    """The blank in [0, C), or None when --blank does not fit C classes."""
    if -C <= blank < C:
        return blank % C
    return None


# -------------------------------------------------------------------------------------------------------- labels
def load_labels(spec, table=None):
    """({utt-id: int32 labels, or a str saying why that utterance's labels are unusable}, number of duplicate ids
    dropped (the first of each is kept), the KaldiIOError that ended the reading or None) from an rspecifier, the
    labels being symbols mapped through ``table`` (see symbol_table) when it is not None.

    A damaged labels archive keeps what was read before the damage: the caller scores those utterances and
    reports the error (exit status 1). When nothing was read it raises."""
    out = {}
    dup = 0
    try:
        for key, value in iter_int_vectors(spec, "labels-rspecifier", symbols=table):
            if key in out:
                dup += 1
                continue
            if table is not None:
                try:
                    value = table.ids(value)
                except KeyError as e:
                    value = f"unknown symbol {e.args[0]!r} (not in {table.path})"
            out[key] = value
    except KaldiIOError as e:
        if not out or isinstance(e, SpecifierError):
            raise  # nothing to score
        return out, dup, e
    return out, dup, None


def report_labels(tally, dup, error):
    """Warn about duplicate label ids; report a damaged labels archive (the run goes on with what was read)."""
    if dup:
        tally.warn(f"{dup} duplicate utterance id(s) in the labels; the first of each was used")
    if error is not None:
        tally.error(f"{error}; scoring the utterances whose labels were read before it")


def label_problem(labels, C, blank):
    """Why ``labels`` cannot be scored with C classes and this blank, or None."""
    if isinstance(labels, str):
        return labels
    bad = labels[(labels < 0) | (labels >= C)]
    if bad.size:
        return f"label {int(bad[0])} is out of range for {C} classes"
    if (labels == blank).any():
        return f"label {blank} is the blank (--blank {blank})"
    return None


# ------------------------------------------------------------------------------------------------------ utterances
class Utt:
    """One utterance on its way through a subcommand."""

    __slots__ = ("key", "mat", "x", "labels", "out")

    def __init__(self, key, mat, x, labels=None):
        self.key, self.mat, self.x, self.labels, self.out = key, mat, x, labels, None


def utterances(args, tally, labels=None):
    """Utt objects from ``args.logits_rspecifier``, each with its labels looked up by id when ``labels`` is given.

    An utterance id seen before is reported and skipped (the first entry counts), and so are utterances without
    labels, with a matrix that is not (T, C) float, a --blank that does not fit, or unusable labels. A malformed
    archive raises KaldiIOError (after everything before it).
    """
    seen = set()
    for key, mat in tally.progress(iter_matrices(args.logits_rspecifier, "logits-rspecifier")):
        if key in seen:
            tally.skip(key, "duplicate", "appears again in the scores (its first entry was used)")
            continue
        seen.add(key)
        if mat.ndim != 2 or mat.dtype.kind != "f":
            tally.skip(key, "bad input", f"expected a float matrix (T x C), got {mat.dtype} of shape {mat.shape}")
            continue
        C = mat.shape[1]
        if C < 1:
            tally.skip(key, "bad input", "the matrix has no columns")
            continue
        blank = resolve_blank(args.blank, C)
        if blank is None:
            tally.skip(key, "bad input", f"--blank {args.blank} does not fit {C} classes")
            continue
        lab = None
        if labels is not None:
            lab = labels.get(key)
            if lab is None:
                tally.skip(key, "no labels", "no labels")
                continue
            tally.matched += 1
            why = label_problem(lab, C, blank)
            if why is not None:
                tally.skip(key, "bad labels", why)
                continue
        yield Utt(key, mat, to_logits(mat, args.input_is), lab)


def batches(utts, size):
    """Lists of at most ``size`` consecutive utterances with the same class count and dtype. When the source raises,
    the batch read so far is yielded first."""
    batch = []
    try:
        for u in utts:
            if batch and (len(batch) >= size or u.x.shape[1] != batch[0].x.shape[1] or u.x.dtype != batch[0].x.dtype):
                yield batch
                batch = []
            batch.append(u)
    except KaldiIOError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def pad_batch(batch):
    """Batch-major (B, Tmax, C) scores (zero padded), logit lengths (B,), labels (B, max(Lmax, 1)), lengths (B,)."""
    B, C = len(batch), batch[0].x.shape[1]
    T = np.array([u.x.shape[0] for u in batch], dtype=np.int32)
    x = np.zeros((B, max(int(T.max()), 0), C), dtype=batch[0].x.dtype)
    for b, u in enumerate(batch):
        x[b, :T[b]] = u.x
    if batch[0].labels is None:
        return x, T, None, None
    L = np.array([len(u.labels) for u in batch], dtype=np.int32)
    lab = np.zeros((B, max(int(L.max()), 1)), dtype=np.int32)
    for b, u in enumerate(batch):
        lab[b, :L[b]] = u.labels
    return x, T, lab, L


def close_outputs(tally, *writers):
    """Close the writers (None skipped); an output that cannot be flushed (a full disk) is reported as an error of
    the run, whose summary still follows."""
    for w in writers:
        if w is None:
            continue
        try:
            w.close()
        except KaldiIOError as e:
            tally.error(str(e))


LONG_FRAMES = 20000  # utterances longer than this are computed one at a time (never padded into a batch)


def in_groups(batch, fn):
    """``fn(group)`` over the batch: the utterances of at most LONG_FRAMES frames together, each longer one alone
    (padding the others to an hour's length would copy them whole). An utterance whose work space alone exceeds
    --memory-limit gets its MemoryError's message as ``u.out``; the command's write reports and skips it."""
    short = [u for u in batch if u.x.shape[0] <= LONG_FRAMES]
    groups = ([short] if short else []) + [[u] for u in batch if u.x.shape[0] > LONG_FRAMES]
    for group in groups:
        try:
            fn(group)
        except MemoryError:  # one utterance needs more than --memory-limit: find it, compute the others
            for u in group:
                try:
                    fn([u])
                except MemoryError as e:
                    u.out = str(e)


def run_loop(args, tally, labels, compute, write, outputs, done=None):
    """Read, batch, ``compute(batch)`` (fills each Utt.out), ``write(utt)`` in input order (returning False when it
    skipped the utterance), then flush the ``outputs`` (writers, None skipped): an utterance counts as done once
    its batch reached them all, and only then is ``done(utt)`` called (what a summary counts). Read errors are
    reported after everything before them is written; a write error (a full disk) ends the loop with an error
    naming the output. The tally holds the outcome."""
    outputs = [w for w in outputs if w is not None]
    try:
        for batch in batches(utterances(args, tally, labels), args.batch_size):
            compute(batch)
            written = [u for u in batch if write(u) is not False]  # False: write() reported and skipped it
            for w in outputs:
                w.flush()
            tally.done += len(written)
            if done is not None:
                for u in written:
                    done(u)
    except KaldiIOError as e:
        tally.error(str(e))
