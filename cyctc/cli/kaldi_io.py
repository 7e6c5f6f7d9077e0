"""Kaldi archive input/output for the command line, on top of kaldiio (the optional extra ``cyctc[kaldi]``).

kaldiio opens every Kaldi-style name (files, ``-`` for stdin/stdout, ``cmd |`` and ``| cmd`` pipes), parses
specifiers, reads binary and compressed matrices and scp indexes, and writes matrix archives. Three things are done
here instead, because kaldiio does them differently from Kaldi:

* int-vector archives (labels, alignments, decoded ids): Kaldi's text form is ``utt-id 3 17 5`` (one line, no
  brackets, possibly empty) and its binary form is ``\\0B`` + size-prefixed int32s; read and written here, both forms
  auto-detected per entry on reading, as Kaldi does;
* text matrices inside an ark: Kaldi writes integral values without a decimal point (``0``, ``1``), which kaldiio
  would read as an int matrix; parsed here as floats;
* per-utterance scalars (losses): Kaldi's ``BaseFloat`` archives, ``utt-id value`` in text, ``\\0B\\4<float32>`` in
  binary.
"""
import io
import struct
import warnings

import numpy as np


class KaldiIOError(Exception):
    """An archive, specifier or table that cannot be used; the message names it."""


class SpecifierError(KaldiIOError):
    """A malformed rspecifier or wspecifier: a usage error (exit status 2), found before anything is read."""


def kaldiio():
    """The kaldiio module, or KaldiIOError telling how to install it."""
    try:
        import kaldiio as mod
    except ImportError:
        raise KaldiIOError("reading and writing Kaldi archives needs kaldiio: pip install 'cyctc[kaldi]'") from None
    return mod


# ---------------------------------------------------------------------------------------------------- specifiers
_READ_OPTIONS = {"t", "o", "p", "s", "cs", "b"}  # Kaldi rspecifier options that do not change what is read


def parse_rspecifier(spec, what):
    """(kind, name) with kind "ark" or "scp" from an rspecifier such as ``ark:-``, ``ark,t:f.txt``, ``scp:f.scp``."""
    kind, opts, name = _split_specifier(spec, what)
    bad = opts - _READ_OPTIONS
    if bad:
        raise SpecifierError(f"{what}: unknown rspecifier option(s) {sorted(bad)} in {spec!r}")
    if kind not in ("ark", "scp"):
        raise SpecifierError(f"{what}: expected an rspecifier 'ark:NAME' or 'scp:NAME', got {spec!r}")
    return kind, name


def parse_wspecifier(spec, what):
    """(ark, scp, text) from a wspecifier such as ``ark:-``, ``ark,t:f.txt``, ``ark,scp:f.ark,f.scp``."""
    head, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SpecifierError(f"{what}: expected a wspecifier like 'ark:NAME', 'ark,t:NAME' or "
                           f"'ark,scp:A.ark,A.scp', got {spec!r}")
    opts = head.split(",")
    bad = set(opts) - {"ark", "scp", "t", "b", "f", "nf", "p"}
    if bad or "ark" not in opts:
        raise SpecifierError(f"{what}: expected a wspecifier like 'ark:NAME', 'ark,t:NAME' or "
                           f"'ark,scp:A.ark,A.scp', got {spec!r}")
    names = rest.split(",", 1) if "scp" in opts else [rest]
    if "scp" in opts and (len(names) != 2 or not all(names)):
        raise SpecifierError(f"{what}: 'ark,scp:' needs two names, 'ark,scp:A.ark,A.scp', got {spec!r}")
    # the order of the names follows the order of ark and scp in the options, as in Kaldi
    if "scp" in opts and opts.index("scp") < opts.index("ark"):
        names = names[::-1]
    return names[0], names[1] if "scp" in opts else None, "t" in opts


def _split_specifier(spec, what):
    head, sep, name = spec.partition(":")
    if not sep or not name:
        raise SpecifierError(f"{what}: expected an rspecifier 'ark:NAME' or 'scp:NAME', got {spec!r}")
    opts = set(head.split(","))
    kinds = opts & {"ark", "scp"}
    if len(kinds) != 1:
        raise SpecifierError(f"{what}: expected an rspecifier 'ark:NAME' or 'scp:NAME', got {spec!r}")
    (kind,) = kinds
    return kind, opts - kinds, name


def _open(name, mode, what):
    try:
        return kaldiio().utils.open_like_kaldi(name, mode)
    except OSError as e:
        raise KaldiIOError(f"{what}: cannot open {name!r}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------- low-level ark reading
def _read_key(f):
    """(key, terminator) of the next entry, terminator b" " or b"\n" (an empty text entry); (None, b"") at the end.
    Whitespace before a key is skipped."""
    out = bytearray()
    while True:
        c = f.read(1)
        if not c:
            return (out.decode("utf-8", "replace"), b"\n") if out else (None, b"")
        if c in b" \t\r\n":
            if out:
                return out.decode("utf-8", "replace"), b" " if c in b" \t" else b"\n"
            continue
        out += c


def _read_upto(f, n, chunk=1 << 24):
    """Up to ``n`` bytes of ``f``, fewer at its end. Read in chunks: a damaged header's count (up to 10 GB for an
    int32 vector) must not be allocated before the data that is really there has been seen."""
    if n <= chunk:
        return f.read(n)
    parts, got = [], 0
    while got < n:
        b = f.read(min(chunk, n - got))
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _read_binary_int_vector(f, key):
    hdr = f.read(6)  # 'B', size byte, int32 count (the '\0' was read by the caller)
    if len(hdr) != 6 or hdr[:1] != b"B" or hdr[1] != 4:
        raise KaldiIOError(f"utterance {key!r}: not a binary int32 vector")
    (n,) = struct.unpack("<i", hdr[2:])
    if n < 0:
        raise KaldiIOError(f"utterance {key!r}: negative vector size {n}")
    raw = _read_upto(f, 5 * n)
    if len(raw) != 5 * n:
        raise KaldiIOError(f"utterance {key!r}: truncated binary int32 vector")
    rec = np.frombuffer(raw, dtype=[("size", "i1"), ("value", "<i4")])
    if n and (rec["size"] != 4).any():
        raise KaldiIOError(f"utterance {key!r}: binary vector elements are not int32")
    return rec["value"].astype(np.int32)


def _text_tokens(line, key):
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise KaldiIOError(f"utterance {key!r}: the entry is neither Kaldi binary nor UTF-8 text") from None
    return text.replace("[", " ").replace("]", " ").split()


def iter_int_vectors(spec, what, symbols=None):
    """(key, int32 vector) pairs from an int-vector rspecifier (binary or text entries, ``ark`` or ``scp``).

    With ``symbols`` (a SymbolTable) the entries are text lines of symbols (``utt-id a b c``, as Kaldi's
    ``data/text``) and each value is a list of tokens; mapping them is the caller's job (so that an unknown symbol
    is reported for that utterance only).
    """
    kind, name = parse_rspecifier(spec, what)
    if kind == "scp":
        if symbols is not None:
            raise KaldiIOError(f"{what}: symbol labels are read from a text archive ('ark,t:text'), not from scp")
        yield from _iter_scp(name, what, _as_int_vector)
        return

    def read_value(f, key, term):
        first = b"\n" if term == b"\n" else f.read(1)
        if first == b"\0" and symbols is None:
            return _read_binary_int_vector(f, key)
        line = first if first in (b"\n", b"") else first + f.readline()
        tokens = _text_tokens(line, key)
        if symbols is not None:
            return tokens
        try:
            return np.array([int(t) for t in tokens], dtype=np.int32)
        except (ValueError, OverflowError):
            bad = next(t for t in tokens if not _is_int32(t))
            raise KaldiIOError(f"{what}: utterance {key!r}: {bad!r} is not an int32 (for symbols give "
                               f"--symbol-table)") from None

    yield from _iter_ark(name, what, read_value)


def _iter_ark(name, what, read_value):
    """(key, read_value(f, key, term)) of each entry of the archive ``name``, in order; an error names ``what``."""
    f = _open(name, "rb", what)
    try:
        while True:
            key, term = _read_key(f)
            if key is None:
                return
            yield key, read_value(f, key, term)
    except KaldiIOError as e:
        msg = str(e)
        raise KaldiIOError(msg if msg.startswith(what) else f"{what}: {msg}") from None
    finally:
        f.close()


def _is_int32(tok):
    try:
        return -2**31 <= int(tok) < 2**31
    except ValueError:
        return False


def _as_int_vector(key, v):
    v = np.asarray(v)
    if v.ndim != 1 or v.dtype.kind not in "iu":
        raise KaldiIOError(f"utterance {key!r}: expected an int vector, got {v.dtype} of shape {v.shape}")
    return v.astype(np.int32)


def _as_matrix(key, m):
    """A float array (a text matrix of integral values, which kaldiio reads as ints, becomes float32); its shape is
    checked by the caller, so that a wrong entry is reported for that utterance."""
    m = np.asarray(m)
    return m.astype(np.float32) if m.dtype.kind in "iub" else m


def _iter_scp(name, what, convert):
    """(key, value) of each ``utt-id rxfilename`` line of the scp ``name``, in order. An entry that cannot be read
    (its archive missing, truncated, or the offset pointing at no entry) raises KaldiIOError naming the utterance,
    the file it points at and the scp."""
    mod = kaldiio()
    f = _open(name, "rb", what)
    open_arks = {}  # kaldiio's cache of open archives (consecutive entries of one ark share a descriptor)
    try:
        for n, raw in enumerate(f, 1):
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise KaldiIOError(f"{what}: {name}:{n}: expected 'utt-id rxfilename', got {line!r}")
            key, rx = parts
            if len(open_arks) > 8:
                _close_all(open_arks)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    value = mod.load_mat(rx, fd_dict=open_arks)
                except OSError as e:
                    missing = e.filename if e.filename is not None else rx
                    raise KaldiIOError(f"{what}: utterance {key!r}: cannot read {missing!r} (listed in {name!r}): "
                                       f"{e.strerror or e}") from None
                except Exception as e:
                    why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                    raise KaldiIOError(f"{what}: utterance {key!r}: {rx!r} (listed in {name!r}) is truncated or "
                                       f"holds no readable entry there ({why})") from None
            try:
                value = convert(key, value)
            except KaldiIOError as e:
                raise KaldiIOError(f"{what}: {e} (listed in {name!r})") from None
            yield key, value
    finally:
        _close_all(open_arks)
        f.close()


def _close_all(files):
    for fd in files.values():
        try:
            fd.close()
        except OSError:
            pass
    files.clear()


def _read_text_matrix(f, first, key):
    buf = first + f.readline()
    while b"]" not in buf:
        more = f.readline()
        if not more:
            raise KaldiIOError(f"utterance {key!r}: text matrix without its closing ']'")
        buf += more
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError:
        raise KaldiIOError(f"utterance {key!r}: the entry is neither Kaldi binary nor UTF-8 text") from None
    open_at, close_at = text.find("["), text.rfind("]")
    if open_at < 0 or text[:open_at].strip() or text[close_at + 1:].strip():
        raise KaldiIOError(f"utterance {key!r}: malformed text matrix")
    rows = [r.split() for r in text[open_at + 1:close_at].split("\n")]
    rows = [r for r in rows if r]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    if len({len(r) for r in rows}) != 1:
        raise KaldiIOError(f"utterance {key!r}: text matrix rows of different lengths")
    try:
        return np.array(rows, dtype=np.float32)
    except ValueError as e:
        raise KaldiIOError(f"utterance {key!r}: malformed text matrix: {e}") from None


def iter_matrices(spec, what):
    """(key, float32/float64 (T, C) matrix) pairs from a matrix rspecifier (ark binary/compressed/text, or scp)."""
    kind, name = parse_rspecifier(spec, what)
    if kind == "scp":
        yield from _iter_scp(name, what, _as_matrix)
        return
    mod = kaldiio()

    def read_value(f, key, term):
        first = f.read(1) if term == b" " else b""
        if first == b"\0":
            try:
                m = mod.matio.read_matrix_or_vector(mod.utils.MultiFileDescriptor(io.BytesIO(first), f))
            except Exception as e:
                raise KaldiIOError(f"{what}: utterance {key!r}: malformed binary entry "
                                   f"({type(e).__name__}: {e})") from None
        elif first in (b"", b"\n"):
            raise KaldiIOError(f"{what}: utterance {key!r} has no matrix")
        else:
            m = _read_text_matrix(f, first, key)
        return _as_matrix(key, m)

    yield from _iter_ark(name, what, read_value)


# ------------------------------------------------------------------------------------------------------- writers
def write_failed(what, name, e):
    """The KaldiIOError of an output that cannot be written (a full disk, a closed device); a reader that left a
    pipe (BrokenPipeError) is passed on as it is: the command line ends quietly then."""
    if isinstance(e, BrokenPipeError):
        raise e
    return KaldiIOError(f"{what}: cannot write {name!r}: {e.strerror or e} (the output is incomplete)")


def _close_quietly(f):
    """Close ``f`` after a failed write (what is still buffered cannot be written either)."""
    try:
        f.close()
    except (OSError, ValueError):
        pass


class _Output:
    """What every writer does with its streams: writes and closes that turn OSError into KaldiIOError naming the
    output, once. After a failed write the streams are closed without another attempt to flush."""

    def __init__(self, what):
        self.what = what
        self.failed = False

    def _guard(self, name, fn, *args):
        if self.failed:
            raise KaldiIOError(f"{self.what}: {name!r} failed before")
        try:
            return fn(*args)
        except OSError as e:
            self.failed = True
            raise write_failed(self.what, name, e) from None

    def _flush_streams(self, streams):
        for f, name in streams:
            if f is not None:
                self._guard(name, f.flush)

    def _close_streams(self, streams):
        """Flush and close (stream, name) pairs; KaldiIOError for the first that fails (all are closed)."""
        error = None
        for f, name in streams:
            if f is None:
                continue
            if self.failed:
                _close_quietly(f)
                continue
            try:
                f.flush()
                f.close()
            except OSError as e:
                self.failed = True
                _close_quietly(f)
                if isinstance(e, BrokenPipeError):
                    raise
                error = error or write_failed(self.what, name, e)
        if error is not None:
            raise error


class _ArkWriter(_Output):
    """Common part of the writers: the ark stream (and its scp index), closed once."""

    def __init__(self, spec, what):
        super().__init__(what)
        ark, scp, self.text = parse_wspecifier(spec, what)
        self.ark_name, self.scp_name = ark, scp
        self.f = _open(ark, "wb", what)
        self.scp = _open(scp, "w", what) if scp is not None else None
        if self.scp is not None:
            try:
                self.f.tell()
            except (OSError, AttributeError):
                raise KaldiIOError(f"{what}: an scp index needs a regular ark file, not {ark!r}") from None

    def _entry(self, key, payload):
        if not key or any(c.isspace() for c in key):
            raise KaldiIOError(f"{self.what}: invalid utterance id {key!r}")
        self._guard(self.ark_name, self.f.write, key.encode("utf-8") + b" ")
        if self.scp is not None:
            self._guard(self.scp_name, self.scp.write, f"{key} {self.ark_name}:{self.f.tell()}\n")
        self._guard(self.ark_name, self.f.write, payload)

    def flush(self):
        self._flush_streams([(self.f, self.ark_name), (self.scp, self.scp_name)])

    def close(self):
        streams = [(self.f, self.ark_name), (self.scp, self.scp_name)]
        self.f = self.scp = None
        self._close_streams(streams)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class IntVectorWriter(_ArkWriter):
    """Kaldi int32-vector archive (alignments, decoded ids): ``utt-id 1 2 3`` lines, or binary."""

    def write(self, key, values):
        v = np.asarray(values, dtype=np.int32)
        if self.text:
            self._entry(key, (" ".join(map(str, v.tolist())) + "\n").encode())
            return
        rec = np.empty(len(v), dtype=[("size", "i1"), ("value", "<i4")])
        rec["size"] = 4
        rec["value"] = v
        self._entry(key, b"\0B\4" + struct.pack("<i", len(v)) + rec.tobytes())


class TokenWriter(_ArkWriter):
    """Kaldi token-vector archive (``utt-id a b c`` lines; text whatever the specifier says, as in Kaldi)."""

    def write(self, key, tokens):
        self._entry(key, (" ".join(tokens) + "\n").encode("utf-8"))


class ScalarWriter(_ArkWriter):
    """Kaldi BaseFloat archive: ``utt-id value`` lines (``ark,t:``), or binary float32 (``ark:``)."""

    def __init__(self, spec, what):
        check_scalar_wspecifier(spec, what)
        super().__init__(spec, what)

    def write(self, key, value):
        if self.text:
            self._entry(key, f"{format_float(value)}\n".encode())
        else:
            self._entry(key, b"\0B\4" + struct.pack("<f", float(value)))


def check_scalar_wspecifier(spec, what):
    """SpecifierError unless ``spec`` is a wspecifier of an ark without scp index (per-utterance values)."""
    if parse_wspecifier(spec, what)[1] is not None:
        raise SpecifierError(f"{what}: per-utterance values are written to an ark ('ark,t:loss.txt'), "
                             f"not with an scp index")


def format_float(value):
    """Shortest text that reads back as the same float32/float64 value (``inf``, ``nan`` as Kaldi prints them)."""
    return str(value if isinstance(value, (np.float32, np.float64)) else float(value))


class MatrixWriter(_Output):
    """Float matrix archive through kaldiio (``ark:``, ``ark,t:``, ``ark,scp:``, pipes)."""

    def __init__(self, spec, what):
        super().__init__(what)
        ark, scp, _ = parse_wspecifier(spec, what)
        self.names = (ark, scp)
        mod = kaldiio()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.helper = mod.WriteHelper(spec)
        except OSError as e:
            raise KaldiIOError(f"{what}: cannot open {spec!r}: {e.strerror or e}") from None
        except ValueError as e:
            raise KaldiIOError(f"{what}: {e}") from None

    def write(self, key, matrix):
        self._guard(self.names[0], self.helper, key, np.ascontiguousarray(matrix))

    def flush(self):
        if self.helper is not None:
            self._flush_streams([(self.helper.fark, self.names[0]), (self.helper.fscp, self.names[1])])

    def close(self):
        if self.helper is None:
            return
        h, self.helper = self.helper, None
        h.closed = True  # kaldiio's own close() is replaced by the guarded one below
        self._close_streams([(h.fark, self.names[0]), (h.fscp, self.names[1])])


class TextWriter(_Output):
    """A plain text output (Kaldi wxfilename: a file, ``-`` for stdout, or ``| cmd``)."""

    def __init__(self, name, what):
        super().__init__(what)
        self.name = name
        self.f = _open(name, "wb", what)

    def write_line(self, line):
        self._guard(self.name, self.f.write, (line + "\n").encode("utf-8"))

    def flush(self):
        self._flush_streams([(self.f, self.name)])

    def close(self):
        f, self.f = self.f, None
        self._close_streams([(f, self.name)])


# ------------------------------------------------------------------------------------------------- symbol tables
class SymbolTable:
    """A Kaldi symbol table (``words.txt``/``tokens.txt``): one ``symbol id`` pair per line."""

    def __init__(self, path):
        self.path = path
        self.to_id, self.to_sym = {}, {}
        f = _open(path, "rb", "--symbol-table")
        try:
            for n, raw in enumerate(f, 1):
                parts = raw.decode("utf-8", "replace").split()
                if not parts:
                    continue
                if len(parts) != 2 or not _is_int32(parts[1]):
                    raise KaldiIOError(f"--symbol-table {path}:{n}: expected 'symbol id', got {raw.strip()!r}")
                sym, i = parts[0], int(parts[1])
                if sym in self.to_id:
                    raise KaldiIOError(f"--symbol-table {path}:{n}: symbol {sym!r} appears twice")
                self.to_id[sym] = i
                self.to_sym.setdefault(i, sym)
        finally:
            f.close()
        if not self.to_id:
            raise KaldiIOError(f"--symbol-table {path}: no symbols")

    def ids(self, tokens):
        """int32 ids of the tokens; KeyError(first unknown token) if one is not in the table."""
        out = np.empty(len(tokens), dtype=np.int32)
        for k, t in enumerate(tokens):
            if t not in self.to_id:
                raise KeyError(t)
            out[k] = self.to_id[t]
        return out

    def symbols(self, ids):
        """Symbols of the ids; KeyError(first unknown id) if one is not in the table."""
        out = []
        for i in ids:
            i = int(i)
            if i not in self.to_sym:
                raise KeyError(i)
            out.append(self.to_sym[i])
        return out
