"""README.md, tried as a new user would: every fenced block runs as written.

The blocks run in document order in one scratch folder (so a block may use the files an earlier one wrote):

- ``python``: run in a fresh namespace, or after ``<!-- continues -->`` in the namespace of the Python block before;
- ``sh`` / ``bash``: run with ``bash -e -o pipefail``, with ``python`` and ``cyctc`` being the ones under test;
- ``<!-- file: NAME -->`` before a block: its text is written to NAME, for the blocks after it;
- ``<!-- signatures -->`` before a Python block: each ``cyctc.NAME(...)`` in it must be NAME's real signature;
- ``<!-- skip: needs a GPU -->``, ``<!-- skip: needs the network -->``: not run (the only two reasons accepted),
  but a skipped Python block must still parse;
- ``<!-- kaldi: cmd.sh utils/... -->``: the stand-ins below for a Kaldi recipe's files are put in the folder first;
- ``<!-- output: TEXT -->`` before a shell block: its standard output must contain TEXT;
- ``<!-- requires: torch jax -->``: the block runs where those modules import (an optional framework), and is
  skipped, saying which is missing, where they do not.

``pip install`` of this project itself (``.``, ``".[extra]"``, ``-e .``) is taken as done: the suite runs against
the installed cyctc. Any other ``pip`` call in a block that is not marked ``needs the network`` fails.
"""
import inspect
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cyctc
from conftest import toolchain_unavailable

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP_REASONS = ("needs a GPU", "needs the network")
LANGS = {"python", "sh", "bash", "c++"}

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(continues|signatures|skip|file|kaldi|output|requires)\s*(?::\s*(.*?))?\s*-->\s*$")


class Block:
    def __init__(self, line, lang, body, markers):
        self.line, self.lang, self.body, self.markers = line, lang, body, markers

    @property
    def id(self):
        return f"L{self.line}-{self.lang or 'plain'}"


def parse_blocks(text):
    """The fenced blocks of ``text``, each with the markers (HTML comment lines) right above its fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"README.md line {start + 1}: a fence that is never closed")
        body = textwrap.dedent("\n".join(line[len(indent):] if line.startswith(indent) else line
                                         for line in lines[start + 1:j])) + "\n"
        markers, k = {}, start - 1
        while k >= 0 and MARKER.match(lines[k]):
            name, value = MARKER.match(lines[k]).groups()
            markers[name] = value
            k -= 1
        blocks.append(Block(start + 1, lang, body, markers))
        i = j + 1
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ the conventions
def test_every_block_is_accounted_for():
    """Each block has a language this test runs, and its markers make sense; the README has blocks at all."""
    assert sum(b.lang == "python" for b in BLOCKS) >= 5 and sum(b.lang in ("sh", "bash") for b in BLOCKS) >= 4
    for b in BLOCKS:
        where = f"README.md line {b.line}"
        assert b.lang in LANGS, f"{where}: a ```{b.lang} block; give it one of {sorted(LANGS)} (and a marker)"
        if "skip" in b.markers:
            assert b.markers["skip"] in SKIP_REASONS, \
                f"{where}: skip reason {b.markers['skip']!r}; only {SKIP_REASONS} are accepted"
        if b.lang == "c++":
            assert "file" in b.markers, f"{where}: a C++ block must be a whole file, marked <!-- file: NAME -->"
        if "continues" in b.markers:
            before = [p for p in BLOCKS if p.line < b.line and p.lang == "python"]
            assert b.lang == "python" and before and not {"skip", "signatures"} & set(before[-1].markers), \
                f"{where}: <!-- continues --> must follow a Python block that runs"
        if "signatures" in b.markers:
            assert b.lang == "python" and set(b.markers) == {"signatures"}, f"{where}: signatures stand alone"
        if "requires" in b.markers:
            assert re.fullmatch(r"[\w.]+( [\w.]+)*", b.markers["requires"] or ""), f"{where}: requires: MODULE ..."
        if "output" in b.markers:
            assert b.lang in ("sh", "bash") and b.markers["output"], f"{where}: output: TEXT marks a shell block"


def test_skipped_python_blocks_parse():
    for b in BLOCKS:
        if b.lang == "python" and "signatures" not in b.markers:
            compile(b.body, f"README.md line {b.line}", "exec")


def _signatures(b):
    """(name, text) of each ``cyctc.NAME(...)`` of a signatures block."""
    parts = re.split(r"^(?=cyctc\.)", b.body, flags=re.M)
    return [(p[len("cyctc."):p.index("(")], p.strip()) for p in parts if p.strip()]


def test_signatures_are_the_real_ones():
    """A documented signature is the function's: names, order, kinds (positional / keyword-only), defaults."""
    documented = set()
    for b in BLOCKS:
        if "signatures" not in b.markers:
            continue
        for name, text in _signatures(b):
            ns = {}
            exec(compile("def " + text[len("cyctc."):] + ": pass", f"README.md line {b.line}", "exec"), ns)
            assert hasattr(cyctc, name), f"README.md line {b.line}: cyctc has no {name}"
            assert str(inspect.signature(ns[name])) == str(inspect.signature(getattr(cyctc, name))), \
                f"README.md line {b.line}: the documented signature of {name} is not the real one"
            documented.add(name)
    public = {n for n in cyctc.__all__ if inspect.isfunction(getattr(cyctc, n))}
    missing = public - documented
    assert not missing, f"public functions without a <!-- signatures --> block in README.md: {sorted(missing)}"


def _compile_lines(text, prefix=""):
    """The gcc / g++ command lines of ``text`` (lines starting with ``prefix``), comments dropped."""
    out = []
    for line in text.splitlines():
        if line.startswith(prefix):
            line = line[len(prefix):].split("#")[0].strip()
            if line.startswith(("gcc ", "g++ ")):
                out.append(" ".join(line.split()))
    return out


def test_the_header_compiles_as_the_readme_does():
    """cyctc.h's compile lines are the README's (which test_block_runs runs): -ffp-contract=off included."""
    readme = [line for b in BLOCKS if b.lang in ("sh", "bash") for line in _compile_lines(b.body)]
    header = _compile_lines((Path(cyctc.get_include()) / "cyctc.h").read_text(), " *     ")
    assert len(readme) == 2 and header == readme
    assert all("-ffp-contract=off" in line for line in readme)


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_within_the_readme_resolve():
    text = README.read_text(encoding="utf-8")
    in_fence, anchors = False, set()
    for line in text.splitlines():
        if FENCE.match(line) or line.strip() == "```":
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    targets = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert targets and not targets - anchors, f"links to no heading: {sorted(targets - anchors)}"


def test_slug_and_parser_on_a_sample():
    """The two helpers above, on a sample (so that the checks built on them can fail)."""
    assert _slug(" C API (embedding from C/C++)") == "c-api-embedding-from-cc"
    assert _slug("Use it from PyTorch, JAX and Keras") == "use-it-from-pytorch-jax-and-keras"
    sample = "text\n<!-- skip: needs a GPU -->\n```python\nx = 1\n```\n\n  ```sh\n  ls\n  ```\n"
    (a, b) = parse_blocks(sample)
    assert (a.line, a.lang, a.body, a.markers) == (3, "python", "x = 1\n", {"skip": "needs a GPU"})
    assert (b.lang, b.body, b.markers) == ("sh", "ls\n", {})


# ------------------------------------------------------------------------------------------------ running blocks
PIP_STUB = '''\
import re, sys
# test_readme's pip: the README's install of this project is done (the suite runs against the installed cyctc)
args = sys.argv[1:]
targets = [a for a in args[1:] if a != "-e"]
if args[:1] == ["install"] and targets and all(re.fullmatch(r"\\.(\\[[\\w,-]+\\])?", t) for t in targets):
    print("(test_readme: pip install " + " ".join(args[1:]) + ": the installed cyctc is used)")
    sys.exit(0)
sys.exit("test_readme: this block runs pip " + " ".join(args) + "; mark it <!-- skip: needs the network -->")
'''

# A Kaldi recipe's files, as far as the README uses them (run.pl: JOB=1:N LOG CMD..., each job's output to its log).
KALDI_STUBS = {
    "cmd.sh": "export train_cmd=utils/run.pl\n",
    "utils/split_scp.pl": '''\
import sys
lines = open(sys.argv[1]).read().splitlines(True)
outs = sys.argv[2:]
if len(outs) > len(lines):
    sys.exit("split_scp.pl: more parts than lines")
n, start = len(outs), 0
for k, out in enumerate(outs):
    end = start + len(lines) // n + (k < len(lines) % n)
    open(out, "w").writelines(lines[start:end])
    start = end
''',
    "utils/run.pl": '''\
import re, subprocess, sys
m = re.fullmatch(r"JOB=(\\d+):(\\d+)", sys.argv[1])
first, last = int(m.group(1)), int(m.group(2))
failed = 0
for job in range(first, last + 1):
    sub = lambda s: s.replace("JOB", str(job))
    with open(sub(sys.argv[2]), "w") as log:
        failed += subprocess.run([sub(a) for a in sys.argv[3:]], stdout=log, stderr=subprocess.STDOUT).returncode != 0
sys.exit(1 if failed else 0)
''',
}


def _script(path, source):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + source)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The scratch folder all blocks share, the PATH the shell blocks see, and the Python namespaces."""
    work = tmp_path_factory.mktemp("readme")
    bin_dir = tmp_path_factory.mktemp("readme-bin")
    _script(bin_dir / "pip", PIP_STUB)
    python = bin_dir / "python"  # a script, not a link: a link to a venv's python would leave the venv
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    scripts = Path(sys.executable).parent
    if not (scripts / "cyctc").exists():  # e.g. a Python whose scripts live elsewhere: the same entry point
        _script(bin_dir / "cyctc", "import sys\nfrom cyctc.cli import main\nsys.exit(main())\n")
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), str(scripts), os.environ.get("PATH", "")]))
    # namespace: the last Python block's, None when it did not run (then a block continuing it is skipped)
    return {"work": work, "env": env, "namespace": None}


def test_the_shell_blocks_use_the_cyctc_under_test(session):
    """`python` and `cyctc` in a shell block are this interpreter and its cyctc (not another one on PATH)."""
    if shutil.which("bash") is None:
        toolchain_unavailable("the README's shell blocks", "needs bash")
    r = subprocess.run(["bash", "-c", 'python -c "import cyctc; print(cyctc.__file__)"; command -v cyctc'],
                       cwd=session["work"], env=session["env"], capture_output=True, text=True, check=True)
    module, script = r.stdout.split()
    assert os.path.samefile(module, cyctc.__file__)
    with open(script) as f:
        first = f.readline().strip()
    assert first.startswith("#!")
    interp = first[2:]
    # this interpreter: its own path, its real path, or another name for it in the same folder (a venv's python3)
    assert interp in (sys.executable, os.path.realpath(sys.executable)) or (
        os.path.dirname(interp) == os.path.dirname(sys.executable) and os.path.samefile(interp, sys.executable))


def _needs_compiler(body, work):
    """A block that compiles C with OpenMP needs gcc and g++ that can (skipped where they cannot, as test_capi)."""
    if not re.search(r"^\s*(gcc|g\+\+) ", body, re.M):
        return
    if shutil.which("gcc") is None or shutil.which("g++") is None:
        toolchain_unavailable("the README's C API block", "needs gcc and g++ on PATH")
    probe = work / "probe_openmp.c"
    probe.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
    r = subprocess.run(["gcc", "-fopenmp", str(probe), "-o", str(work / "probe_openmp")], capture_output=True)
    if r.returncode != 0:
        toolchain_unavailable("the README's C API block", "gcc cannot compile with -fopenmp here")


RUN = [b for b in BLOCKS if "signatures" not in b.markers]  # those are checked by test_signatures_are_the_real_ones


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs(block, session, monkeypatch):
    work = session["work"]
    if "skip" in block.markers:
        pytest.skip(f"README.md line {block.line}: {block.markers['skip']}")
    if "file" in block.markers:
        (work / block.markers["file"]).write_text(block.body)
        return
    if block.lang == "python":
        previous, session["namespace"] = session["namespace"], None  # None until this block has run
        if "continues" in block.markers and previous is None:
            pytest.skip(f"README.md line {block.line} continues a block that did not run here")
    for module in (block.markers.get("requires") or "").split():
        pytest.importorskip(module, reason=f"README.md line {block.line} needs {module}, which is not installed")
    for name in (block.markers.get("kaldi") or "").split():
        assert name in KALDI_STUBS, f"README.md line {block.line}: no stand-in for {name}"
        if name.endswith(".sh"):
            (work / name).write_text(KALDI_STUBS[name])
        else:
            _script(work / name, KALDI_STUBS[name])
    monkeypatch.chdir(work)
    if block.lang == "python":
        namespace = previous if "continues" in block.markers else {"__name__": "__readme__"}
        exec(compile(block.body, f"README.md line {block.line}", "exec"), namespace)
        session["namespace"] = namespace
        return
    if shutil.which("bash") is None:
        toolchain_unavailable("the README's shell blocks", "needs bash")
    _needs_compiler(block.body, work)
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.body], cwd=work, env=session["env"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (f"README.md line {block.line}: exit status {r.returncode}\n--- stdout\n{r.stdout}"
                               f"\n--- stderr\n{r.stderr}")
    if "output" in block.markers:
        assert block.markers["output"] in r.stdout, f"README.md line {block.line}: stdout was\n{r.stdout}"
