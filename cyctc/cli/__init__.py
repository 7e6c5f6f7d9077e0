"""The ``cyctc`` command line (also ``python -m cyctc``): Kaldi-style pipeline programs, one subcommand each.

Every subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> exit status``;
this module only builds the argparse tree, dispatches, and turns the errors every subcommand shares into messages
and exit statuses: 0 success, 1 failure (nothing succeeded, or a file could not be read or written), 2 usage error
(options, and malformed rspecifiers/wspecifiers).
"""
import argparse
import importlib
import os
import sys

from .. import __version__

# (name, module, one-line help); modules are imported when the parser is built, and import kaldiio only in run()
COMMANDS = (
    ("loss", "cyctc.cli.loss", "per-utterance CTC loss (and gradient) of Kaldi matrix archives"),
    ("align", "cyctc.cli.align", "CTC forced alignment to a Kaldi alignment archive (and a CTM of labels)"),
    ("segment", "cyctc.cli.segment", "find each utterance of a transcript in long recordings: Kaldi segments, CTM, "
                                     "confidence"),
    ("decode", "cyctc.cli.decode", "greedy or beam-search CTC decoding to Kaldi text"),
    ("demo", "cyctc.demo", "train a small numpy model with cyctc's loss on synthetic data"),
    ("config", "cyctc.cli.config", "print cyctc's build configuration"),
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cyctc", description="cyctc: CTC loss, alignment and decoding as Kaldi-style pipeline programs.",
        epilog="Run 'cyctc COMMAND --help' for a command's options and an example pipeline.")
    parser.add_argument("--version", action="version", version=f"cyctc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(run=mod.run)
        if name == "demo" and mod.__doc__:
            p.description = mod.__doc__
    return parser


def main(argv=None):
    """Entry point of the ``cyctc`` script; returns the exit status."""
    from .common import CommandError
    from .kaldi_io import KaldiIOError, SpecifierError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = int(args.run(args) or 0)
    except SpecifierError as e:
        print(f"cyctc {args.command}: ERROR: {e}", file=sys.stderr)
        rc = 2
    except (KaldiIOError, CommandError) as e:
        print(f"cyctc {args.command}: ERROR: {e}", file=sys.stderr)
        rc = 1
    except BrokenPipeError:  # e.g. '... ark,t:- | head': the reader left
        rc = 1
    except OSError as e:  # any other output that fails (e.g. 'cyctc demo > /dev/full')
        print(f"cyctc {args.command}: ERROR: {e.strerror or e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        return 130
    why = _settle_stdout()
    if why is not None and rc == 0:
        print(f"cyctc {args.command}: ERROR: cannot write to stdout: {why} (the output is incomplete)",
              file=sys.stderr)
        rc = 1
    return rc


def _settle_stdout():
    """Flush stdout now; None when that worked, else why not (e.g. "No space left on device"). When it cannot be
    written (a full disk, a reader that left), what is still buffered is dropped, so that the interpreter does not
    fail on it again at exit (a failing archive on stdout was reported with its output already)."""
    try:
        sys.stdout.flush()
        return None
    except (OSError, ValueError) as e:
        why = (e.strerror if isinstance(e, OSError) else None) or str(e)
        try:
            fd = sys.stdout.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        return why


if __name__ == "__main__":
    sys.exit(main())
