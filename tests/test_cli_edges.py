"""The command line when its files fail it (issue 13): every output on a full disk, every index entry pointing at
something missing or truncated, damaged and duplicated inputs, malformed specifiers, and scores at extreme
magnitudes. Each run must end with a clear error naming what failed (no traceback), the summary line, and the
documented exit status; whatever came before the damage is written.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import cyctc
from cyctc.cli import main

kaldiio = pytest.importorskip("kaldiio", reason="kaldiio is not installed (pip install 'cyctc[kaldi]')")

FULL = "/dev/full"  # every write fails with ENOSPC (Linux, and the BSDs)
needs_full = pytest.mark.skipif(not os.path.exists(FULL), reason="no /dev/full on this system")

C, BLANK = 5, 0
KEYS = [f"u{i}" for i in range(6)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("edges")
    rng = np.random.default_rng(0)
    feats = {k: rng.normal(size=(int(rng.integers(6, 12)), C)).astype(np.float32) for k in KEYS}
    labels = {k: rng.integers(1, C, size=int(rng.integers(1, 3))).astype(np.int32) for k in KEYS}
    kaldiio.save_ark(str(d / "feats.ark"), feats, scp=str(d / "feats.scp"))
    kaldiio.save_ark(str(d / "labels.ark"), labels, scp=str(d / "labels.scp"))
    with open(d / "labels.txt", "w") as f:
        for k, v in labels.items():
            f.write(" ".join([k, *map(str, v.tolist())]) + "\n")
    (d / "tokens.txt").write_text("".join(f"s{i} {i}\n" for i in range(C)))
    return d, feats, labels


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _read_scalars(path):
    with open(path) as f:
        return dict(line.split() for line in f)


def _summary_then_error(err, prog, what):
    """stderr names the output that failed, ends with the summary, and holds no traceback."""
    assert f"{prog}: ERROR: {what}: cannot write" in err and "No space left on device" in err, err
    assert f"{prog}: done " in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------ full disk


# (id, argv with {F} the scores, {L} the labels, {S} an output that works, {T} a scratch folder, {D} the data
# folder, and FULL the full device; the program; the output's name in its messages)
OUTPUT_CASES = [
    ("loss-text", ["loss", "{F}", "{L}", "ark,t:" + FULL], "cyctc loss", "loss-wspecifier"),
    ("loss-binary", ["loss", "{F}", "{L}", "ark:" + FULL], "cyctc loss", "loss-wspecifier"),
    ("grad-binary", ["loss", "{F}", "{L}", "{S}", "ark:" + FULL], "cyctc loss", "grad-wspecifier"),
    ("grad-text", ["loss", "{F}", "{L}", "{S}", "ark,t:" + FULL], "cyctc loss", "grad-wspecifier"),
    ("grad-ark-of-scp", ["loss", "{F}", "{L}", "{S}", "ark,scp:" + FULL + ",{T}/g.scp"], "cyctc loss",
     "grad-wspecifier"),
    ("grad-scp", ["loss", "{F}", "{L}", "{S}", "ark,scp:{T}/g.ark," + FULL], "cyctc loss", "grad-wspecifier"),
    ("ali-binary", ["align", "{F}", "{L}", "ark:" + FULL], "cyctc align", "alignment-wspecifier"),
    ("ali-text", ["align", "{F}", "{L}", "ark,t:" + FULL], "cyctc align", "alignment-wspecifier"),
    ("ctm", ["align", "{F}", "{L}", "ark:{T}/ali.ark", FULL], "cyctc align", "ctm-wxfilename"),
    ("hyp-binary", ["decode", "{F}", "ark:" + FULL], "cyctc decode", "transcription-wspecifier"),
    ("hyp-text", ["decode", "{F}", "ark,t:" + FULL], "cyctc decode", "transcription-wspecifier"),
    ("hyp-symbols", ["decode", "--symbol-table", "{D}/tokens.txt", "{F}", "ark,t:" + FULL], "cyctc decode",
     "transcription-wspecifier"),
    ("beam-scores-text", ["decode", "--method", "beam", "{F}", "{S}", "--scores-wspecifier", "ark,t:" + FULL],
     "cyctc decode", "--scores-wspecifier"),
    ("scores-binary", ["decode", "{F}", "{S}", "--scores-wspecifier", "ark:" + FULL], "cyctc decode",
     "--scores-wspecifier"),
]


@needs_full
@pytest.mark.parametrize("argv,prog,what", [c[1:] for c in OUTPUT_CASES], ids=[c[0] for c in OUTPUT_CASES])
def test_every_output_on_a_full_disk(data, tmp_path, capsys, argv, prog, what):
    d, _, _ = data
    fill = {"F": f"ark:{d}/feats.ark", "L": f"ark,t:{d}/labels.txt", "S": f"ark,t:{tmp_path}/ok.txt",
            "T": str(tmp_path), "D": str(d)}
    rc, err = _run(capsys, *[a.format(**fill) for a in argv])
    assert rc == 1
    _summary_then_error(err, prog, what)


@needs_full
def test_done_counts_only_what_reached_the_outputs(data, tmp_path, capsys):
    """Outputs are flushed after every batch: with the gradient on a full disk nothing is counted as done, and
    the losses of the batch that was written before the failure are in their file."""
    d, feats, labels = data
    rc, err = _run(capsys, "loss", "--batch-size", 1, f"ark:{d}/feats.ark", f"ark,t:{d}/labels.txt",
                   f"ark,t:{tmp_path}/loss.txt", "ark:" + FULL)
    assert rc == 1 and "done 0 utterance(s)" in err and "no utterance succeeded" in err
    _summary_then_error(err, "cyctc loss", "grad-wspecifier")
    rc, err = _run(capsys, "loss", "--batch-size", 2, f"ark:{d}/feats.ark", f"ark,t:{d}/labels.txt",
                   f"ark,t:{tmp_path}/loss.txt", f"ark:{tmp_path}/grad.ark")
    assert rc == 0 and "done 6 utterance(s)" in err


@needs_full
@pytest.mark.parametrize("command", ["loss", "align", "decode"])
def test_stdout_on_a_full_disk(data, command):
    """'ark,t:-' with stdout on a full device: the error names '-', the summary follows, exit 1, and nothing is
    left for the interpreter to fail on at exit."""
    d, _, _ = data
    argv = {"loss": [f"ark:{d}/feats.ark", f"ark,t:{d}/labels.txt", "ark,t:-"],
            "align": [f"ark:{d}/feats.ark", f"ark,t:{d}/labels.txt", "ark,t:-"],
            "decode": [f"ark:{d}/feats.ark", "ark,t:-"]}[command]
    with open(FULL, "wb") as full:
        r = subprocess.run([sys.executable, "-m", "cyctc", command, *argv], stdout=full, stderr=subprocess.PIPE,
                           cwd=tempfile.gettempdir())
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "cannot write '-': No space left on device" in err and f"cyctc {command}: done " in err
    assert "Traceback" not in err and "Exception ignored" not in err


@needs_full
def test_plain_stdout_on_a_full_disk():
    """A command printing plain text (config) to a full device: an error and exit 1, not a silent 0."""
    with open(FULL, "wb") as full:
        r = subprocess.run([sys.executable, "-m", "cyctc", "config"], stdout=full, stderr=subprocess.PIPE,
                           cwd=tempfile.gettempdir())
    err = r.stderr.decode()
    assert r.returncode == 1 and "cyctc config: ERROR: " in err and "No space left" in err, err
    assert "Traceback" not in err and "Exception ignored" not in err


@needs_full
def test_stdout_failing_only_at_the_last_flush(monkeypatch, capsys):
    """Output that fits stdout's buffer fails only when main() flushes it at the end (as under the sanitizers,
    where `cyctc config` writes nothing before that): the error still says why, and the status is 1."""
    full = open(FULL, "w", buffering=1 << 16)
    monkeypatch.setattr(sys, "stdout", full)
    try:
        rc = main(["config"])
    finally:
        monkeypatch.undo()
        full.close()
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "cyctc config: ERROR: cannot write to stdout: No space left on device (the output is incomplete)" in err


@needs_full
def test_summary_counts_only_what_was_written(data, tmp_path, capsys):
    """On a full disk the summary's counts (infinite losses, average loss, aligned frames, decoded symbols) cover
    only utterances whose batch reached every output: here none."""
    d, feats, _ = data
    long_labels = tmp_path / "labels.txt"  # u0 infeasible: more labels than frames
    long_labels.write_text("".join(f"{k} " + " ".join(["1", "2"] * (12 if k == "u0" else 1)) + "\n" for k in KEYS))
    rc, err = _run(capsys, "loss", f"ark:{d}/feats.ark", f"ark,t:{long_labels}", "ark,t:" + FULL)
    assert rc == 1 and "done 0 utterance(s)" in err and "loss is inf" in err, err
    assert "infinite" not in err and "average loss" not in err, err
    rc, err = _run(capsys, "loss", f"ark:{d}/feats.ark", f"ark,t:{long_labels}", f"ark,t:{tmp_path}/loss.txt")
    assert rc == 0 and "1 infinite and 0 nan loss(es) written" in err and "average loss per frame" in err, err
    rc, err = _run(capsys, "align", f"ark:{d}/feats.ark", f"ark,t:{d}/labels.txt", "ark:" + FULL)
    assert rc == 1 and "done 0 utterance(s)" in err and "average log-probability" not in err, err
    rc, err = _run(capsys, "decode", f"ark:{d}/feats.ark", "ark:" + FULL)
    assert rc == 1 and "done 0 utterance(s)" in err and "; 0 symbol(s) decoded" in err, err


# ------------------------------------------------------------------------------------- broken index entries


def _scp_with(d, tmp, replace):
    """feats.scp with entry u2 rewritten by ``replace(rxfilename)``."""
    lines = []
    for line in open(d / "feats.scp"):
        key, rx = line.split()
        lines.append(f"{key} {replace(rx) if key == 'u2' else rx}\n")
    (tmp / "x.scp").write_text("".join(lines))
    return f"scp:{tmp}/x.scp"


@pytest.mark.parametrize("command", ["loss", "align", "decode"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "offset", "garbage"])
def test_scores_scp_entry_pointing_at_something_broken(data, tmp_path, capsys, damage, command):
    """The message names the utterance, the file its entry points at and the scp (not just the scp, which
    exists); the utterances before it are written; exit 1."""
    d, feats, _ = data
    raw = open(d / "feats.ark", "rb").read()
    (tmp_path / "short.ark").write_bytes(raw[: raw.index(b"u3 ") - 40])   # ends inside u2's matrix
    (tmp_path / "junk.ark").write_bytes(b"\0BQQ " + bytes(range(64)))    # no Kaldi type
    repl = {"missing": lambda rx: f"{tmp_path}/gone.ark:{rx.split(':')[1]}",
            "truncated": lambda rx: f"{tmp_path}/short.ark:{rx.split(':')[1]}",
            "offset": lambda rx: f"{d}/feats.ark:{len(raw) + 1000}",
            "garbage": lambda rx: f"{tmp_path}/junk.ark:0"}[damage]
    spec = _scp_with(d, tmp_path, repl)
    labels = [] if command == "decode" else [f"ark,t:{d}/labels.txt"]
    rc, err = _run(capsys, command, spec, *labels, f"ark,t:{tmp_path}/o.txt")
    assert rc == 1 and "Traceback" not in err
    assert "logits-rspecifier: utterance 'u2'" in err and f"{tmp_path}/x.scp" in err
    if damage == "missing":
        assert f"cannot read '{tmp_path}/gone.ark'" in err and "No such file" in err
    assert [line.split()[0] for line in open(tmp_path / "o.txt")] == ["u0", "u1"]
    assert f"cyctc {command}: done 2 utterance(s)" in err


def test_labels_scp_entry_pointing_at_a_missing_archive(data, tmp_path, capsys):
    d, _, _ = data
    lines = open(d / "labels.scp").read().splitlines()
    lines[3] = lines[3].split()[0] + f" {tmp_path}/gone.ark:9"
    (tmp_path / "l.scp").write_text("\n".join(lines) + "\n")
    rc, err = _run(capsys, "loss", f"ark:{d}/feats.ark", f"scp:{tmp_path}/l.scp", f"ark,t:{tmp_path}/o.txt")
    assert rc == 1
    assert f"labels-rspecifier: utterance 'u3': cannot read '{tmp_path}/gone.ark'" in err
    assert set(_read_scalars(tmp_path / "o.txt")) == {"u0", "u1", "u2"}  # labels read before the damage


def test_truncated_labels_archive_keeps_what_was_read(data, tmp_path, capsys):
    """Everything before the damage is written: the utterances whose labels were read are scored; the error names
    the labels archive; exit 1. A labels archive damaged before its first entry stops the run."""
    d, feats, labels = data
    raw = open(d / "labels.ark", "rb").read()
    (tmp_path / "l.ark").write_bytes(raw[: raw.index(b"u4 ") + 9])  # ends inside u4's vector
    rc, err = _run(capsys, "align", f"ark:{d}/feats.ark", f"ark:{tmp_path}/l.ark", f"ark,t:{tmp_path}/ali.txt")
    assert rc == 1
    assert "ERROR: labels-rspecifier: utterance 'u4': " in err and "skipped 2 (2 no labels)" in err
    assert {line.split()[0] for line in open(tmp_path / "ali.txt")} == {"u0", "u1", "u2", "u3"}
    assert "done 4 utterance(s)" in err
    (tmp_path / "l0.ark").write_bytes(raw[:9])
    rc, err = _run(capsys, "loss", f"ark:{d}/feats.ark", f"ark:{tmp_path}/l0.ark", f"ark,t:{tmp_path}/o.txt")
    assert rc == 1 and "labels-rspecifier" in err and not (tmp_path / "o.txt").exists()


def test_missing_files_are_named(data, tmp_path, capsys):
    d, _, _ = data
    for argv, name in [
        (["loss", f"scp:{tmp_path}/none.scp", f"ark,t:{d}/labels.txt", "ark,t:-"], "none.scp"),
        (["loss", f"ark:{d}/feats.ark", f"scp:{tmp_path}/none.scp", "ark,t:-"], "none.scp"),
        (["align", "--symbol-table", f"{tmp_path}/none.txt", f"ark:{d}/feats.ark", f"ark,t:{d}/labels.txt",
          "ark,t:-"], "none.txt"),
    ]:
        rc, err = _run(capsys, *argv)
        assert rc == 1 and f"{tmp_path}/{name}" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------- duplicates, usage


def test_duplicate_score_ids_are_warned_and_skipped(data, tmp_path, capsys):
    d, feats, labels = data
    text = open(d / "feats.scp").read()
    (tmp_path / "dup.scp").write_text(text + text.splitlines()[1] + "\n")
    for argv in (["loss", f"scp:{tmp_path}/dup.scp", f"ark,t:{d}/labels.txt", f"ark,t:{tmp_path}/o.txt"],
                 ["decode", f"scp:{tmp_path}/dup.scp", f"ark,t:{tmp_path}/o.txt"]):
        rc, err = _run(capsys, *argv)
        assert rc == 0
        assert "'u1': appears again in the scores" in err and "skipped 1 (1 duplicate)" in err
        keys = [line.split()[0] for line in open(tmp_path / "o.txt")]
        assert keys == KEYS  # each utterance once, from its first entry


@pytest.mark.parametrize("argv", [
    ["loss", "ARK", "LAB", "loss.txt"], ["loss", "ARK", "LAB", "ark,t:loss.txt", "grad.ark"],
    ["loss", "ARK", "LAB", "scp:loss.scp"], ["loss", "ARK", "LAB", "ark,scp:l.ark,l.scp"],
    ["align", "ARK", "LAB", "ali.ark"], ["decode", "ARK", "hyp.txt"], ["decode", "ARK", "t:hyp.txt"],
    ["decode", "ARK", "ark,t:hyp.txt", "--scores-wspecifier", "scores.txt"],
    ["loss", "feats.ark", "LAB", "ark,t:loss.txt"], ["align", "ARK", "ark,x:labels.txt", "ark:ali.ark"],
])
def test_malformed_specifiers_are_usage_errors(data, tmp_path, capsys, monkeypatch, argv):
    """A wspecifier without 'ark:' (or an rspecifier without 'ark:'/'scp:') is a usage error: exit 2, before
    anything is read or created."""
    d, _, _ = data
    monkeypatch.chdir(tmp_path)
    argv = [{"ARK": f"ark:{d}/feats.ark", "LAB": f"ark,t:{d}/labels.txt"}.get(a, a) for a in argv]
    rc, err = _run(capsys, *argv)
    assert rc == 2, err
    assert "specifier: " in err and "Traceback" not in err  # names the argument
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------- magnitudes


@pytest.mark.parametrize("shift", [1e8, 1e12, 1e30])
def test_decode_and_align_outputs_are_shift_invariant(tmp_path, capsys, shift):
    """float64 (DM) score matrices shifted by a constant give the outputs of the same matrices with each frame's
    maximum subtracted exactly: the same alignments, CTM, hypotheses and scores, to the last bit of the text."""
    rng = np.random.default_rng(1)
    x = {f"u{i}": rng.normal(size=(8, C)) * 3 + shift for i in range(3)}
    ref = {k: v - v.max(axis=1, keepdims=True) for k, v in x.items()}
    kaldiio.save_ark(str(tmp_path / "x.ark"), x)
    kaldiio.save_ark(str(tmp_path / "r.ark"), ref)
    (tmp_path / "l.txt").write_text("u0 1 2\nu1 3\nu2 4 4\n")
    outs = {}
    for name in ("x", "r"):
        a = [f"ark:{tmp_path}/{name}.ark"]
        assert main(["align", *a, f"ark,t:{tmp_path}/l.txt", f"ark,t:{tmp_path}/{name}.ali",
                     f"{tmp_path}/{name}.ctm"]) == 0
        for method in ("greedy", "beam"):
            assert main(["decode", "--method", method, *a, f"ark,t:{tmp_path}/{name}.{method}",
                         "--scores-wspecifier", f"ark,t:{tmp_path}/{name}.{method}.scores"]) == 0
        outs[name] = [open(tmp_path / f"{name}{ext}").read()
                      for ext in (".ali", ".ctm", ".greedy", ".greedy.scores", ".beam", ".beam.scores")]
    capsys.readouterr()
    assert outs["x"] == outs["r"]
    scores = [float(line.split()[1]) for line in outs["x"][3].splitlines()]
    assert all(np.isfinite(scores)) and all(s < 0 for s in scores)
    if shift >= 1e30:  # uniform frames: the best path's log-probability is T log(1/C)
        np.testing.assert_allclose(scores, 8 * np.log(1 / C), rtol=1e-15)


# ------------------------------------------------------------------------------------------------ option values


@pytest.mark.parametrize("argv,option", [
    (["decode", "--method", "beam", "--beam-width", "2000000000", "ARK", "ark,t:hyp.txt"], "--beam-width"),
    (["decode", "--method", "beam", "--beam-width", "0", "ARK", "ark,t:hyp.txt"], "--beam-width"),
    (["align", "--frame-shift", "inf", "ARK", "LAB", "ark:ali.ark", "ctm.txt"], "--frame-shift"),
    (["align", "--frame-shift", "1e-9", "ARK", "LAB", "ark:ali.ark", "ctm.txt"], "--frame-shift"),
    (["align", "--frame-shift", "nan", "ARK", "LAB", "ark:ali.ark"], "--frame-shift"),
    (["segment", "--frame-shift", "inf", "ARK", "TEXT", "segments"], "--frame-shift"),
    (["segment", "--frame-shift", "1e-300", "ARK", "TEXT", "segments"], "--frame-shift"),
])
def test_bad_option_values_are_usage_errors(data, tmp_path, capsys, monkeypatch, argv, option):
    """--beam-width beyond the decoder's limit and --frame-shift inf once ended in a traceback after the inputs
    were read (ValueError / IndexError); a frame shift below 1e-6 wrote every time as 0.00. Now: exit 2, the option
    named, nothing created."""
    d, _, _ = data
    monkeypatch.chdir(tmp_path)
    (d / "text.txt").write_text("u0 1 2\n")
    argv = [{"ARK": f"ark:{d}/feats.ark", "LAB": f"ark,t:{d}/labels.txt", "TEXT": f"{d}/text.txt"}.get(a, a)
            for a in argv]
    rc, err = _run(capsys, *argv)
    assert rc == 2, err
    assert f"ERROR: {option}" in err and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []


def test_int_vector_header_with_a_huge_count(data, tmp_path, capsys):
    """A binary int-vector entry whose header claims 2**31 - 1 elements (a damaged archive) once made the reader
    allocate 10 GB before reading: MemoryError and a traceback under a memory limit. Now the entry is reported as
    truncated, without allocating for the claim."""
    import resource
    import struct

    d, _, _ = data
    lab = tmp_path / "lab.ark"
    lab.write_bytes(b"u0 \0B\x04" + struct.pack("<i", 2**31 - 1) + b"\x04\x01\x00\x00\x00")

    def limit_memory():  # the claim (10 GB) cannot be allocated in the child
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))

    out = subprocess.run([sys.executable, "-m", "cyctc", "loss", f"ark:{d}/feats.ark", f"ark:{lab}",
                          f"ark,t:{tmp_path}/loss.txt"], capture_output=True, text=True, timeout=300,
                         preexec_fn=limit_memory, cwd=str(tmp_path))
    err = out.stderr
    assert out.returncode == 1 and "utterance 'u0': truncated binary int32 vector" in err, err
    assert "Traceback" not in err, err
