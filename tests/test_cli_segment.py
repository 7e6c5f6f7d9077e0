"""``cyctc segment`` (and ``--memory-limit`` of ``cyctc align``) on archives made here, checked against the Python
API; bad inputs end with an error and no output file."""
import os
import sys

import numpy as np
import pytest

from cyctc import ctc_segment
from cyctc.cli import main

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _segment_synth import make_recording  # noqa: E402

kaldiio = pytest.importorskip("kaldiio", reason="kaldiio is not installed (pip install 'cyctc[kaldi]')")


def _run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    d = tmp_path_factory.mktemp("book")
    recs, text, utt2rec, truth = {}, [], [], {}
    for r in range(2):
        lp, utts, tr = make_recording(2500, speech_gaps=r == 1, seed=20 + r)
        recs[f"rec{r}"] = lp
        truth[f"rec{r}"] = (lp, utts, tr)
        for i, u in enumerate(utts):
            text.append(f"rec{r}-u{i:03d} " + " ".join(f"s{v}" for v in u))
            utt2rec.append(f"rec{r}-u{i:03d} rec{r}")
    kaldiio.save_ark(str(d / "recs.ark"), recs, scp=str(d / "recs.scp"))
    (d / "text").write_text("\n".join(text) + "\n")
    (d / "utt2rec").write_text("\n".join(utt2rec) + "\n")
    (d / "tokens.txt").write_text("\n".join(f"s{i} {i}" for i in range(32)) + "\n")
    np.save(d / "rec0.npy", recs["rec0"])
    return d, truth


def _lines(p):
    return p.read_text().splitlines()


@pytest.mark.parametrize("source", ["ark", "scp"])
def test_segment_writes_segments_ctm_and_confidence(book, tmp_path, source):
    d, truth = book
    rc = _run("segment", "--input-is", "log-probs", "--symbol-table", d / "tokens.txt", "--frame-shift", 0.02,
              "--utt2rec", d / "utt2rec", f"{source}:{d}/recs.{source}", d / "text", tmp_path / "segments",
              "--ctm", tmp_path / "ctm", "--confidence", tmp_path / "conf")
    assert rc == 0
    seg = [line.split() for line in _lines(tmp_path / "segments")]
    ctm = [line.split() for line in _lines(tmp_path / "ctm")]
    conf = dict(line.split() for line in _lines(tmp_path / "conf"))
    n = 0
    for rec, (lp, utts, tr) in truth.items():
        res = ctc_segment(lp, utts)
        mine = [s for s in seg if s[1] == rec]
        assert len(mine) == len(utts)
        for i, (utt, r, start, end) in enumerate(mine):
            assert utt == f"{rec}-u{i:03d}"
            assert start == f"{res.start[i] * 0.02:.2f}" and end == f"{res.end[i] * 0.02:.2f}"
            assert abs(float(conf[utt]) - res.confidence[i]) < 1e-6
            words = [c for c in ctm if c[0] == utt]
            assert [w[4] for w in words] == [f"s{v}" for v in utts[i]]
            assert all(w[1] == "1" and 0 <= float(w[5]) <= 1 for w in words)
            assert float(words[0][2]) == 0.0  # times from the utterance's start
            n += 1
    assert n == len(seg)


def test_segment_npy_read_in_place_and_prefix_rule(book, tmp_path):
    d, truth = book
    only0 = [line for line in _lines(d / "text") if line.startswith("rec0-")]
    (tmp_path / "text0").write_text("\n".join(only0) + "\n")
    rc = _run("segment", "--input-is", "log-probs", "--symbol-table", d / "tokens.txt", d / "rec0.npy",
              tmp_path / "text0", tmp_path / "segments", "--memory-limit", "64M")
    assert rc == 0
    lp, utts, _ = truth["rec0"]
    res = ctc_segment(lp, utts)
    assert [line.split()[2] for line in _lines(tmp_path / "segments")] == [f"{s * 0.01:.2f}" for s in res.start]


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace("s5", "nope", 1), "unknown symbol 'nope'"),
    (lambda t: t + "rec0-zzz\n", "is empty"),
    (lambda t: t + "rec9-u000 s1 s2\n", "no recording"),
    (lambda t: t + t.splitlines()[0] + "\n", "more than once"),
])
def test_segment_bad_text_writes_nothing(book, tmp_path, capsys, edit, match):
    d, _ = book
    (tmp_path / "text").write_text(edit((d / "text").read_text()))
    utt2rec = (d / "utt2rec").read_text() + "rec9-u000 rec9\nrec0-zzz rec0\n"
    (tmp_path / "utt2rec").write_text(utt2rec)
    rc = _run("segment", "--input-is", "log-probs", "--symbol-table", d / "tokens.txt", "--utt2rec",
              tmp_path / "utt2rec", f"ark:{d}/recs.ark", tmp_path / "text", tmp_path / "segments", "--ctm",
              tmp_path / "ctm")
    assert rc == 1
    assert match in capsys.readouterr().err
    assert not (tmp_path / "segments").exists() and not (tmp_path / "ctm").exists()


def test_segment_infeasible_or_over_budget_writes_nothing(book, tmp_path, capsys):
    d, _ = book
    text = (d / "text").read_text().splitlines()
    long = text[0].split()[0] + " " + " ".join(["s1 s2"] * 2000)  # 4000 labels in 2500 frames
    (tmp_path / "text").write_text("\n".join([long] + text[1:]) + "\n")
    rc = _run("segment", "--input-is", "log-probs", "--symbol-table", d / "tokens.txt", "--utt2rec",
              d / "utt2rec", f"ark:{d}/recs.ark", tmp_path / "text", tmp_path / "segments")
    assert rc == 1 and "do not fit" in capsys.readouterr().err and not (tmp_path / "segments").exists()
    rc = _run("segment", "--input-is", "log-probs", "--symbol-table", d / "tokens.txt", "--utt2rec",
              d / "utt2rec", "--memory-limit", "20K", f"ark:{d}/recs.ark", d / "text", tmp_path / "segments")
    assert rc == 1 and "minimum work space" in capsys.readouterr().err and not (tmp_path / "segments").exists()


@pytest.mark.parametrize("argv,match", [
    (["--memory-limit", "lots"], "--memory-limit"),
    (["--memory-limit", "0"], "--memory-limit"),
    (["--frame-shift", "0"], "--frame-shift"),
    (["--untranscribed-penalty", "-1"], "--untranscribed-penalty"),
    (["--num-threads", "0"], "--num-threads"),
])
def test_segment_usage_errors(book, tmp_path, capsys, argv, match):
    d, _ = book
    with pytest.raises(SystemExit) if argv[0] == "--memory-limit" else _nothing():
        rc = _run("segment", *argv, f"ark:{d}/recs.ark", d / "text", tmp_path / "segments")
        assert rc == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "segments").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_align_memory_limit(book, tmp_path, capsys):
    d, truth = book
    lp, utts, _ = truth["rec0"]
    kaldiio.save_ark(str(tmp_path / "u.ark"), {"a": lp[:600], "b": lp})
    (tmp_path / "lab.txt").write_text("a 1 2 3\nb " + " ".join(map(str, np.concatenate(utts[:3]))) + "\n")
    outs = []
    for lim in ("1G", "300K"):
        rc = _run("align", "--input-is", "log-probs", "--memory-limit", lim, f"ark:{tmp_path}/u.ark",
                  f"ark,t:{tmp_path}/lab.txt", f"ark,t:{tmp_path}/ali_{lim}.txt")
        assert rc == 0
        outs.append((tmp_path / f"ali_{lim}.txt").read_text())
    assert outs[0] == outs[1]
    rc = _run("align", "--input-is", "log-probs", "--memory-limit", "2K", f"ark:{tmp_path}/u.ark",
              f"ark,t:{tmp_path}/lab.txt", f"ark,t:{tmp_path}/ali.txt")
    err = capsys.readouterr().err
    assert rc == 1 and "over --memory-limit" in err and "minimum work space" in err


def test_loss_memory_limit(tmp_path, capsys, monkeypatch):
    """cyctc loss --memory-limit: the same losses and gradients under a budget that checkpoints the long utterance
    (and runs it alone: utterances over 20000 frames are never padded into a batch); an utterance whose minimum
    work space exceeds the limit is reported and skipped, the others written; a bad size is a usage error."""
    from cyctc.cli import common
    monkeypatch.setattr(common, "LONG_FRAMES", 500)
    rng = np.random.default_rng(4)
    mats = {"a": rng.standard_normal((300, 8)).astype(np.float32), "b": rng.standard_normal((3000, 8)).astype(np.float32)}
    kaldiio.save_ark(str(tmp_path / "x.ark"), mats)
    (tmp_path / "lab.txt").write_text("a 1 2 3\nb " + " ".join(str(v) for v in rng.integers(1, 8, 400)) + "\n")
    outs = []
    for lim in ("1G", "2M"):  # b with every row stored: 2.6 MB; its minimum: 1.4 MB
        rc = _run("loss", "--memory-limit", lim, f"ark:{tmp_path}/x.ark", f"ark,t:{tmp_path}/lab.txt",
                  f"ark,t:{tmp_path}/loss_{lim}.txt", f"ark:{tmp_path}/grad_{lim}.ark")
        assert rc == 0
        outs.append(((tmp_path / f"loss_{lim}.txt").read_text(),
                     dict(kaldiio.load_ark(str(tmp_path / f"grad_{lim}.ark")))))
    assert outs[0][0] == outs[1][0]
    for k in mats:
        assert np.array_equal(outs[0][1][k], outs[1][1][k])
    rc = _run("loss", "--memory-limit", "600K", f"ark:{tmp_path}/x.ark", f"ark,t:{tmp_path}/lab.txt",
              f"ark,t:{tmp_path}/loss.txt", f"ark:{tmp_path}/grad.ark")
    err = capsys.readouterr().err
    assert "over --memory-limit" in err and "'b'" in err
    assert (tmp_path / "loss.txt").read_text().split()[0] == "a"
    with pytest.raises(SystemExit):
        _run("loss", "--memory-limit", "lots", f"ark:{tmp_path}/x.ark", f"ark,t:{tmp_path}/lab.txt", "ark,t:-")
