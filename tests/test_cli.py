"""The ``cyctc`` command line on Kaldi archives made here with kaldiio, checked against the Python API.

Most runs call ``cyctc.cli.main`` in this process (fast); pipes, stdin/stdout and the installed entry points run
as subprocesses.
"""
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import sys

import numpy as np
import pytest

import cyctc
from cyctc.cli import COMMANDS, build_parser, main

try:
    import kaldiio
except ImportError:
    kaldiio = None

needs_kaldiio = pytest.mark.skipif(kaldiio is None, reason="kaldiio is not installed (pip install 'cyctc[kaldi]')")

C = 6
BLANK = 2  # in the middle: labels keep their class numbers on both sides of it
SYMBOLS = {"a": 0, "b": 1, "c": 3, "d": 4, "e": 5}  # ids of the non-blank classes (2 is the blank)


def _make_corpus(rng, dtype=np.float32):
    """Utterances of varied lengths; u3 has no labels, u5 is infeasible, u6 has empty labels."""
    feats, labels = {}, {}
    nonblank = np.array([c for c in range(C) if c != BLANK])
    for i, T in enumerate([9, 17, 4, 12, 25, 3, 7, 30]):
        key = f"u{i}"
        feats[key] = rng.normal(size=(T, C)).astype(dtype)
        L = {5: 3, 6: 0}.get(i, int(rng.integers(1, min(T, 6))))
        labels[key] = nonblank[rng.integers(0, len(nonblank), size=L)].astype(np.int32)
    labels["u5"] = np.array([0, 0, 1], dtype=np.int32)  # 3 frames cannot hold 'a a b' (needs 4)
    del labels["u3"]
    return feats, labels


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if kaldiio is None:
        pytest.skip("kaldiio is not installed (pip install 'cyctc[kaldi]')")
    d = tmp_path_factory.mktemp("corpus")
    feats, labels = _make_corpus(np.random.default_rng(3))
    kaldiio.save_ark(str(d / "feats.ark"), feats, scp=str(d / "feats.scp"))
    kaldiio.save_ark(str(d / "feats_text.ark"), feats, text=True)
    kaldiio.save_ark(str(d / "labels.ark"), labels, scp=str(d / "labels.scp"))   # Kaldi binary int vectors
    with open(d / "labels.txt", "w") as f:                                        # Kaldi text: 'utt-id 3 17 5'
        for k, v in labels.items():
            f.write(" ".join([k, *map(str, v.tolist())]) + "\n")
    inv = {i: s for s, i in SYMBOLS.items()}
    with open(d / "tokens.txt", "w") as f:
        f.write("<blk> 2\n" + "".join(f"{s} {i}\n" for s, i in SYMBOLS.items()))
    with open(d / "text", "w") as f:                                              # symbols, as data/text
        for k, v in labels.items():
            f.write(" ".join([k, *(inv[int(c)] for c in v)]) + "\n")
    return d, feats, labels


def _read_scalars(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, v = line.split()
            out[k] = v
    return out


def _python_loss(x, labels, blank=BLANK):
    loss, grad = cyctc.ctc_loss(labels[None], x[:, None], [len(labels)], blank_index=blank, return_grad=True,
                                num_threads=1)
    return loss[0], grad[:, 0]


def _expected(feats, labels):
    return {k: _python_loss(x, labels[k]) for k, x in feats.items() if k in labels}


def _check_losses(text, feats, labels):
    want = _expected(feats, labels)
    assert set(text) == set(want)
    for k, (loss, _) in want.items():
        assert np.float32(text[k]) == loss, k  # the text reads back as exactly the Python API's float32


def _run(*argv):
    return main([str(a) for a in argv])


def _cli(*argv, stdin=None, cwd=None):
    # run outside the source tree, so that `-m cyctc` imports the installed package
    return subprocess.run([sys.executable, "-m", "cyctc", *map(str, argv)], input=stdin, capture_output=True,
                          cwd=cwd or tempfile.gettempdir())


# ------------------------------------------------------------------------------------------------------------ loss
@needs_kaldiio
def test_loss_binary_archives_match_python(corpus, tmp_path, capsys):
    d, feats, labels = corpus
    rc = _run("loss", "--blank", BLANK, f"ark:{d}/feats.ark", f"ark:{d}/labels.ark", f"ark,t:{tmp_path}/loss.txt",
              f"ark:{tmp_path}/grad.ark")
    err = capsys.readouterr().err
    assert rc == 0
    _check_losses(_read_scalars(tmp_path / "loss.txt"), feats, labels)
    # the missing utterance is reported and counted; the infeasible one is written as inf
    assert "'u3': no labels; skipped" in err and "done 7 utterance(s), skipped 1 (1 no labels)" in err
    assert _read_scalars(tmp_path / "loss.txt")["u5"] == "inf"
    grads = dict(kaldiio.load_ark(str(tmp_path / "grad.ark")))
    for k, (_, g) in _expected(feats, labels).items():
        assert grads[k].dtype == np.float32
        np.testing.assert_array_equal(grads[k], g)
    assert not grads["u5"].any()


@needs_kaldiio
def test_loss_batch_size_does_not_change_results(corpus, tmp_path):
    d, _, _ = corpus
    outs = []
    for bs in (1, 3, 100):
        assert _run("loss", "--blank", BLANK, "--batch-size", bs, "--num-threads", 2, f"ark:{d}/feats.ark",
                    f"ark:{d}/labels.ark", f"ark:{tmp_path}/loss{bs}.ark", f"ark:{tmp_path}/grad{bs}.ark") == 0
        outs.append((open(tmp_path / f"loss{bs}.ark", "rb").read(), open(tmp_path / f"grad{bs}.ark", "rb").read()))
    assert outs[0] == outs[1] == outs[2]
    # the binary loss archive is Kaldi's BaseFloat format: 'utt-id \0B\4' + float32
    assert outs[0][0].startswith(b"u0 \0B\4") and len(outs[0][0]) == sum(len(f"u{i} ") + 7 for i in range(8) if i != 3)


@needs_kaldiio
def test_loss_text_archives_and_scp(corpus, tmp_path, capsys):
    d, feats, labels = corpus
    assert _run("loss", "--blank", BLANK, f"ark,t:{d}/feats_text.ark", f"ark,t:{d}/labels.txt",
                f"ark,t:{tmp_path}/a.txt", f"ark,t:{tmp_path}/g.txt") == 0
    _check_losses(_read_scalars(tmp_path / "a.txt"), feats, labels)
    grads = dict(kaldiio.load_ark(str(tmp_path / "g.txt")))
    for k, (_, g) in _expected(feats, labels).items():
        np.testing.assert_array_equal(grads[k], g)
    assert _run("loss", "--blank", BLANK, f"scp:{d}/feats.scp", f"scp:{d}/labels.scp", f"ark,t:{tmp_path}/b.txt",
                f"ark,scp:{tmp_path}/g.ark,{tmp_path}/g.scp") == 0
    assert open(tmp_path / "a.txt").read() == open(tmp_path / "b.txt").read()
    grads = dict(kaldiio.load_scp(str(tmp_path / "g.scp")))  # the scp index points into the ark
    for k, (_, g) in _expected(feats, labels).items():
        np.testing.assert_array_equal(grads[k], g)


@needs_kaldiio
def test_kaldi_text_quirks(tmp_path, capsys):
    """Integral values written without a decimal point, an empty label line, a label line of a text matrix."""
    x = np.array([[0, 1, -2], [1.5, 0, 0], [2, -1, 0.25]], dtype=np.float32)
    with open(tmp_path / "m.txt", "w") as f:
        f.write("a  [\n  0 1 -2 \n  1.5 0 0 \n  2 -1 0.25 ]\nb [ 0 0 0 ]\n")
    with open(tmp_path / "l.txt", "w") as f:
        f.write("a 1 2\nb\n")
    assert _run("loss", f"ark:{tmp_path}/m.txt", f"ark:{tmp_path}/l.txt", f"ark,t:{tmp_path}/o.txt") == 0
    got = _read_scalars(tmp_path / "o.txt")
    assert np.float32(got["a"]) == _python_loss(x, np.array([1, 2]), blank=0)[0]
    assert np.float32(got["b"]) == np.float32(np.log(3))  # no labels: all-blank path, one frame of 3 classes


@needs_kaldiio
def test_loss_pipes_stdin_stdout(corpus, tmp_path):
    d, feats, labels = corpus
    r = _cli("loss", "--blank", BLANK, f"ark:cat {d}/feats.ark |", f"ark:{d}/labels.ark", "ark,t:-",
             f"ark:| cat > {tmp_path}/grad.ark")
    assert r.returncode == 0, r.stderr
    text = dict(line.split() for line in r.stdout.decode().splitlines())
    _check_losses(text, feats, labels)
    grads = dict(kaldiio.load_ark(str(tmp_path / "grad.ark")))
    assert set(grads) == set(text)
    r2 = _cli("loss", "--blank", BLANK, "ark:-", f"ark,t:{d}/labels.txt", "ark,t:-",
              stdin=open(d / "feats.ark", "rb").read())
    assert r2.returncode == 0 and r2.stdout == r.stdout
    assert b"no labels" in r2.stderr and r2.stderr.count(b"\n") < 10  # no progress bar when stderr is a pipe


@needs_kaldiio
def test_symbol_table_and_unknown_symbol(corpus, tmp_path, capsys):
    d, feats, labels = corpus
    text = open(d / "text").read().replace("u1 ", "u1 zz ", 1)  # an unknown symbol in u1
    (tmp_path / "text").write_text(text)
    rc = _run("loss", "--blank", BLANK, "--symbol-table", d / "tokens.txt", f"ark:{d}/feats.ark",
              f"ark,t:{tmp_path}/text", f"ark,t:{tmp_path}/loss.txt")
    err = capsys.readouterr().err
    assert rc == 0
    assert "'u1': unknown symbol 'zz'" in err and "(1 bad labels, 1 no labels)" in err
    got = _read_scalars(tmp_path / "loss.txt")
    assert "u1" not in got
    _check_losses(got, {k: v for k, v in feats.items() if k != "u1"}, labels)


@needs_kaldiio
@pytest.mark.parametrize("damage", [b"", b"junk \0BQQ \4\0\0\0\0", b"junk hello world\n"])
def test_malformed_archive(corpus, tmp_path, capsys, damage):
    """A truncated archive, an unknown binary type, text that is no matrix: an error after what came before."""
    d, feats, labels = corpus
    raw = open(d / "feats.ark", "rb").read()
    at = raw.index(b"u2 ")
    bad = raw[:len(raw) - 50] if not damage else raw[:at] + damage + raw[at:]
    (tmp_path / "bad.ark").write_bytes(bad)
    rc = _run("loss", "--blank", BLANK, f"ark:{tmp_path}/bad.ark", f"ark:{d}/labels.ark", f"ark,t:{tmp_path}/o.txt")
    err = capsys.readouterr().err
    assert rc == 1
    assert "ERROR: logits-rspecifier" in err
    done = _read_scalars(tmp_path / "o.txt")
    assert "u0" in done and "u7" not in done  # what came before the damage is written


@needs_kaldiio
def test_bad_labels_and_nothing_succeeded(corpus, tmp_path, capsys):
    d, feats, labels = corpus
    (tmp_path / "l.txt").write_text("u0 1 9\nu1 2\nu2 x\n")
    rc = _run("loss", "--blank", BLANK, f"ark:{d}/feats.ark", f"ark,t:{tmp_path}/l.txt", f"ark,t:{tmp_path}/o.txt")
    err = capsys.readouterr().err
    assert rc == 1 and "'x' is not an int32" in err and "--symbol-table" in err
    (tmp_path / "l.txt").write_text("u0 1 9\nu1 2\n")
    rc = _run("loss", "--blank", BLANK, f"ark:{d}/feats.ark", f"ark,t:{tmp_path}/l.txt", f"ark,t:{tmp_path}/o.txt")
    err = capsys.readouterr().err
    assert rc == 1
    assert "label 9 is out of range for 6 classes" in err and "label 2 is the blank" in err
    assert "no utterance succeeded" in err and (tmp_path / "o.txt").read_text() == ""


@needs_kaldiio
def test_input_is_log_probs_and_probs(tmp_path):
    """log-probs: the same loss as the logits they came from; probs (float64): the chain-rule gradient w.r.t. the
    probabilities, checked by central differences through the Python API."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(8, 4))
    lp = x - np.log(np.exp(x).sum(1, keepdims=True))
    p = np.exp(lp)
    lab = np.array([1, 3, 1], dtype=np.int32)
    kaldiio.save_ark(str(tmp_path / "lp.ark"), {"a": lp.astype(np.float32)})
    kaldiio.save_ark(str(tmp_path / "p.ark"), {"a": p})  # float64 (DM) matrices
    kaldiio.save_ark(str(tmp_path / "l.ark"), {"a": lab})
    assert _run("loss", "--input-is", "log-probs", f"ark:{tmp_path}/lp.ark", f"ark:{tmp_path}/l.ark",
                f"ark,t:{tmp_path}/o1.txt") == 0
    assert np.float32(_read_scalars(tmp_path / "o1.txt")["a"]) == _python_loss(lp.astype(np.float32), lab, 0)[0]
    assert _run("loss", "--input-is", "probs", f"ark:{tmp_path}/p.ark", f"ark:{tmp_path}/l.ark",
                f"ark,t:{tmp_path}/o2.txt", f"ark:{tmp_path}/g.ark") == 0
    loss = float(_read_scalars(tmp_path / "o2.txt")["a"])
    assert loss == pytest.approx(_python_loss(x, lab, 0)[0], rel=1e-12)
    g = dict(kaldiio.load_ark(str(tmp_path / "g.ark")))["a"]
    assert g.dtype == np.float64
    eps = 1e-6
    for t, c in [(0, 0), (2, 1), (5, 3), (7, 2)]:
        hi, lo = p.copy(), p.copy()
        hi[t, c] += eps
        lo[t, c] -= eps
        fd = (_python_loss(np.log(hi), lab, 0)[0] - _python_loss(np.log(lo), lab, 0)[0]) / (2 * eps)
        assert g[t, c] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    # a probability of exactly 0 (a class the labels do not need): its gradient is 0, not nan or inf
    p0 = p.copy()
    p0[:, 2] = 0.0
    p0 /= p0.sum(1, keepdims=True)
    kaldiio.save_ark(str(tmp_path / "p0.ark"), {"a": p0})
    assert _run("loss", "--input-is", "probs", f"ark:{tmp_path}/p0.ark", f"ark:{tmp_path}/l.ark",
                f"ark,t:{tmp_path}/o3.txt", f"ark:{tmp_path}/g0.ark") == 0
    g0 = dict(kaldiio.load_ark(str(tmp_path / "g0.ark")))["a"]
    assert np.all(g0[:, 2] == 0) and np.isfinite(g0).all() and np.any(g0[:, [0, 1, 3]] != 0)


@needs_kaldiio
def test_usage_errors(corpus, tmp_path, capsys):
    d, _, _ = corpus
    # a malformed specifier is a usage error (2), found before anything is read or written
    assert _run("loss", f"{d}/feats.ark", f"ark:{d}/labels.ark", "ark,t:-") == 2
    assert "expected an rspecifier" in capsys.readouterr().err
    assert _run("loss", f"ark:{d}/feats.ark", f"ark:{d}/labels.ark", f"ark,scp:{tmp_path}/a,{tmp_path}/b") == 2
    assert "not with an scp index" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert _run("loss", "--num-threads", 0, f"ark:{d}/feats.ark", f"ark:{d}/labels.ark", "ark,t:-") == 2
    assert "--num-threads" in capsys.readouterr().err
    assert _run("loss", f"ark:{tmp_path}/nope.ark", f"ark:{d}/labels.ark", "ark,t:-") == 1
    assert "cannot open" in capsys.readouterr().err


@needs_kaldiio
def test_progress_bar_only_on_a_terminal(corpus, tmp_path, monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is not installed (pip install 'cyctc[kaldi]')")
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    d, _, _ = corpus
    for tty in (False, True):
        err = Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        assert _run("loss", "--blank", BLANK, "--batch-size", 2, f"ark:{d}/feats.ark", f"ark:{d}/labels.ark",
                    f"ark,t:{tmp_path}/o.txt") == 0
        monkeypatch.undo()
        text = err.getvalue()
        assert ("utt/s" in text) == tty  # tqdm's bar (cleared at the end) only on a terminal
        assert "done 7 utterance(s)" in text  # the summary is printed either way


def test_missing_kaldiio_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "kaldiio", None)  # import kaldiio now raises ImportError
    (tmp_path / "l.txt").write_text("a 1\n")
    assert _run("loss", f"ark:{tmp_path}/x.ark", f"ark,t:{tmp_path}/l.txt", f"ark,t:{tmp_path}/o.txt") == 1
    assert "pip install 'cyctc[kaldi]'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["loss", "align", "decode"])
def test_help_shows_an_example_pipeline(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "examples:" in out and f"cyctc {command} " in out and "ark:" in out and "JOB" in out


@pytest.mark.parametrize("command", [c[0] for c in COMMANDS])
def test_every_help_shows_examples_that_parse(command, capsys):
    """`cyctc COMMAND --help` of every command ends with examples, and each cyctc line among them is a valid call
    of that command (options and arguments as its parser takes them)."""
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out
    text = out.split("examples:", 1)[1].replace("\\\n", " ")  # continued lines joined
    calls = []
    for line in text.splitlines():
        for part in ([] if line.strip().startswith("#") else line.split("|")):
            words = shlex.split(part)
            while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value before the command
                words.pop(0)
            if words[:1] == ["cyctc"]:
                calls.append(words[1:])
    assert calls and all(c[0] == command for c in calls), calls
    for argv in calls:
        args = build_parser().parse_args(argv)
        assert args.command == command


def test_entry_points():
    exe = shutil.which("cyctc", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run([exe or "cyctc", "--version"], capture_output=True, text=True,
                       cwd=tempfile.gettempdir()) if exe else None
    if r is not None:
        assert r.returncode == 0 and r.stdout.strip() == f"cyctc {cyctc.__version__}"
    r = _cli("loss", "--help")
    assert r.returncode == 0 and b"<logits-rspecifier>" in r.stdout
    assert _cli().returncode == 2


# ---------------------------------------------------------------------------------------------- align and decode
def _has(module, name):
    try:
        return hasattr(__import__(f"cyctc.{module}", fromlist=[name]), name)
    except ImportError:
        return False


needs_align = pytest.mark.skipif(not _has("align", "ctc_align"), reason="cyctc.align is not in this build")
needs_decode = pytest.mark.skipif(not _has("decode", "ctc_greedy_decoder"), reason="cyctc.decode is not in this build")


@needs_kaldiio
@needs_align
def test_align_matches_python(corpus, tmp_path, capsys):
    from cyctc.align import ctc_align, ctc_segments

    d, feats, labels = corpus
    rc = _run("align", "--blank", BLANK, "--symbol-table", d / "tokens.txt", "--frame-shift", 0.025,
              "--batch-size", 3, f"scp:{d}/feats.scp", f"ark,t:{d}/text", f"ark:{tmp_path}/ali.ark",
              tmp_path / "ali.ctm")
    err = capsys.readouterr().err
    assert rc == 0
    assert "'u5': no alignment" in err and "'u3': no labels" in err
    ali = {k: v for k, v in kaldiio.load_ark(str(tmp_path / "ali.ark"))}
    assert set(ali) == set(labels) - {"u5"}
    inv = {i: s for s, i in SYMBOLS.items()}
    ctm = [line.split() for line in open(tmp_path / "ali.ctm")]
    want_ctm = []
    for k in sorted(ali):
        lab = labels[k]
        res = ctc_align(feats[k][None], lab[None], None, [len(lab)], blank_index=BLANK, normalize=True)
        np.testing.assert_array_equal(ali[k], res.path[0])
        assert ali[k].dtype == np.int32 and len(ali[k]) == len(feats[k])
        for s, e, c in ctc_segments(res.path[0], blank=BLANK):
            want_ctm.append([k, "1", f"{s * 0.025:.3f}", f"{(e - s) * 0.025:.3f}", inv[c]])
    assert sorted(ctm) == sorted(want_ctm)
    # text alignments on stdout through a pipe give the same paths
    r = _cli("align", "--blank", BLANK, f"ark:cat {d}/feats.ark |", f"ark:{d}/labels.ark", "ark,t:-")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.decode().splitlines():
        k, *ids = line.split()
        np.testing.assert_array_equal(np.array(ids, dtype=np.int32), ali[k])


@needs_kaldiio
@needs_decode
def test_decode_matches_python(corpus, tmp_path, capsys):
    from cyctc.decode import ctc_beam_search_decoder, ctc_greedy_decoder

    d, feats, _ = corpus
    assert _run("decode", "--blank", BLANK, "--batch-size", 3, f"ark:{d}/feats.ark",
                f"ark,t:{tmp_path}/greedy.txt") == 0
    assert _run("decode", "--blank", -1, "--method", "beam", "--beam-width", 8, f"ark:{d}/feats.ark",
                f"ark:{tmp_path}/beam.ark", "--scores-wspecifier", f"ark,t:{tmp_path}/scores.txt") == 0
    greedy = {}
    for line in open(tmp_path / "greedy.txt"):
        k, *ids = line.split()
        greedy[k] = [int(i) for i in ids]
    beam = {k: v.tolist() for k, v in kaldiio.load_ark(str(tmp_path / "beam.ark"))}
    scores = _read_scalars(tmp_path / "scores.txt")
    assert set(greedy) == set(beam) == set(feats)
    for k, x in feats.items():
        dec, _ = ctc_greedy_decoder(x[:, None], None, blank_index=BLANK)
        assert greedy[k] == dec[0].to_list()[0].tolist()
        dec, logp = ctc_beam_search_decoder(x[:, None], None, beam_width=8)
        assert beam[k] == dec[0].to_list()[0].tolist()
        assert np.float32(scores[k]) == logp[0, 0]


@needs_kaldiio
@needs_decode
def test_decode_beam_with_middle_blank_and_symbols(corpus, tmp_path, capsys):
    """--blank 2 with the beam decoder (whose blank is the last class) by permuting the classes; an id without a
    symbol is reported and its utterance skipped."""
    from cyctc.decode import ctc_beam_search_decoder

    d, feats, _ = corpus
    (tmp_path / "syms.txt").write_text("a 0\nb 1\nc 3\nd 4\n")  # no symbol for 5
    rc = _run("decode", "--blank", BLANK, "--method", "beam", "--beam-width", 8, "--symbol-table",
              tmp_path / "syms.txt", f"ark:{d}/feats.ark", f"ark,t:{tmp_path}/hyp.txt")
    err = capsys.readouterr().err
    inv = {0: "a", 1: "b", 3: "c", 4: "d", 5: None}
    order = [0, 1, 3, 4, 5, 2]
    want, unknown = {}, set()
    for k, x in feats.items():
        dec, _ = ctc_beam_search_decoder(x[:, None, order], None, beam_width=8)
        ids = [order[i] for i in dec[0].to_list()[0]]
        if 5 in ids:
            unknown.add(k)
        else:
            want[k] = [inv[i] for i in ids]
    assert unknown and want  # the data has both kinds
    assert rc == 0 and all(f"'{k}': decoded id 5 is not in" in err for k in unknown)
    got = {line.split()[0]: line.split()[1:] for line in open(tmp_path / "hyp.txt")}
    assert got == want
