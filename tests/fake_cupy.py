"""A numpy-backed stand-in for the part of CuPy that cyctc's glue uses, which counts what real CuPy would do.

It lets the CPU test suite run the CuPy code paths of ``cyctc.loss``, ``cyctc._args``, ``cyctc.decode`` and the
backend glue of ``cyctc.cuda._backend`` (with the kernels stubbed) and count, per call:

* ``syncs``: device-to-host transfers, i.e. every operation after which real CuPy has waited for the device:
  ``ndarray.get()``, ``cupy.asnumpy``, ``int()/float()/bool()/operator.index()/item()/tolist()`` of an array, indexing
  or assigning through a boolean mask, ``nonzero``/``flatnonzero``/``argwhere`` (their result size lives on the
  device). Iterating over an array (each element is an ``item()``) counts one per element.
* ``h2d``: host-to-device copies (``cupy.asarray`` of a host array; asynchronous in CuPy: staged through pinned
  memory, no sync).
* ``ops``: device operations (allocations, elementwise/reduction kernels, copies): a proxy for CuPy's per-call
  launch overhead.

Arrays live on fake device 0 unless created under ``with Device(1):``. Implicit conversion to numpy
(``np.asarray(fake_array)``) raises ``TypeError`` exactly as CuPy does, so a silent host round trip cannot hide.

Compiled kernels: ``Kernel(name)`` is a no-op stand-in for what ``_backend.get_function`` returns, with the
shared-memory attributes the glue reads through ``cuda.driver.funcGetAttribute`` (the real kernel's by default).

Install it with ``install(monkeypatch)``: it replaces ``sys.modules["cupy"]`` (and ``cupyx``) for one test.
"""

import contextlib
import operator
import sys
import types
import weakref

import numpy as np

COUNTS = {"syncs": 0, "h2d": 0, "ops": 0}
_current_device = [0]


def reset():
    for k in COUNTS:
        COUNTS[k] = 0


def _sync(n=1):
    COUNTS["syncs"] += n


def _op(n=1):
    COUNTS["ops"] += n


class Device:
    def __init__(self, id=None):
        self.id = _current_device[0] if id is None else int(id)
        self._prev = []

    def __enter__(self):
        self._prev.append(_current_device[0])
        _current_device[0] = self.id
        return self

    def __exit__(self, *exc):
        _current_device[0] = self._prev.pop()
        return False

    def synchronize(self):
        _sync()

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


class _Memory:
    def __init__(self, a):
        self.ptr = a.__array_interface__["data"][0]


def _unwrap(v):
    if isinstance(v, ndarray):
        return v._a
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(u) for u in v)
    return v


def _wrap(a, device=None):
    if isinstance(a, np.ndarray) or isinstance(a, np.generic):
        return ndarray(np.asarray(a), device)
    return a


class ndarray:
    """Numpy data that pretends to live on a device."""

    __array_priority__ = 1000

    def __init__(self, a, device=None):
        self._a = a
        self._dev = _current_device[0] if device is None else device

    @property
    def device(self):
        return Device(self._dev)

    # metadata (host-side in CuPy: free)
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    data = property(lambda self: _Memory(self._a))
    T = property(lambda self: ndarray(self._a.T, self._dev))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"fake_cupy.ndarray({self._a!r}, device={self._dev})"

    # transfers
    def get(self, stream=None):
        _sync()
        return self._a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (fake cupy); use .get()")

    def _scalar(self):
        _sync()
        return self._a

    def __int__(self):
        return int(self._scalar())

    def __float__(self):
        return float(self._scalar())

    def __bool__(self):
        return bool(self._scalar())

    def __index__(self):
        return operator.index(self._scalar().item() if self._a.ndim == 0 else self._scalar())

    def item(self):
        return self._scalar().item()

    def tolist(self):
        return self._scalar().tolist()

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    # views and copies
    def _same(self, a, op=True):
        if op:
            _op()
        return ndarray(a, self._dev)

    def astype(self, dtype, copy=True, order="K"):
        if not copy and np.dtype(dtype) == self._a.dtype:
            return self
        return self._same(self._a.astype(dtype, order=order))

    def copy(self):
        return self._same(self._a.copy())

    def view(self, dtype=None):
        return self._same(self._a.view(dtype), op=False)

    def swapaxes(self, a, b):
        return self._same(self._a.swapaxes(a, b), op=False)

    def transpose(self, *axes):
        return self._same(self._a.transpose(*axes), op=False)

    def reshape(self, *shape, order="C"):
        r = self._a.reshape(*shape, order=order)
        return self._same(r, op=r.base is None and r.size > 0)

    def ravel(self):
        r = self._a.ravel()
        return self._same(r, op=r.base is None and r.size > 0)

    def _index(self, key):
        key = _unwrap(key)
        ks = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, np.ndarray) and k.dtype == bool for k in ks):
            _sync()  # the result's size lives on the device
        if any(isinstance(k, (np.ndarray, list)) for k in ks):
            _op()
        return key

    def __getitem__(self, key):
        r = self._a[self._index(key)]
        return self._same(np.asarray(r) if np.isscalar(r) or isinstance(r, np.generic) else r, op=False)

    def __setitem__(self, key, value):
        _op()
        self._a[self._index(key)] = _unwrap(value)

    # reductions
    def _reduce(self, name, *args, **kwargs):
        _op()
        return self._same(np.asarray(getattr(self._a, name)(*_unwrap(args), **kwargs)), op=False)

    def sum(self, *a, **k):
        return self._reduce("sum", *a, **k)

    def max(self, *a, **k):
        return self._reduce("max", *a, **k)

    def min(self, *a, **k):
        return self._reduce("min", *a, **k)

    def any(self, *a, **k):
        return self._reduce("any", *a, **k)

    def all(self, *a, **k):
        return self._reduce("all", *a, **k)

    def cumsum(self, *a, **k):
        return self._reduce("cumsum", *a, **k)

    def argmax(self, *a, **k):
        return self._reduce("argmax", *a, **k)

    def nonzero(self):
        _sync()
        _op()
        return tuple(self._same(v, op=False) for v in np.nonzero(self._a))


def _binary(name):
    f = getattr(operator, name)

    def method(self, other):
        if isinstance(other, ndarray) and other._dev != self._dev:
            raise ValueError("fake cupy: operands on different devices")
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise TypeError("fake cupy: operand is a numpy array (CuPy refuses implicit host arrays)")
        _op()
        return ndarray(np.asarray(f(self._a, _unwrap(other))), self._dev)

    def rmethod(self, other):
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise TypeError("fake cupy: operand is a numpy array (CuPy refuses implicit host arrays)")
        _op()
        return ndarray(np.asarray(f(_unwrap(other), self._a)), self._dev)
    return method, rmethod


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and_", "or_", "xor", "lt", "le", "gt", "ge",
           "eq", "ne"):
    _m, _r = _binary(_n)
    _dn = _n.rstrip("_")
    setattr(ndarray, f"__{_dn}__", _m)
    if _dn not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(ndarray, f"__r{_dn}__", _r)
ndarray.__hash__ = None


def _unary(f):
    def method(self):
        _op()
        return ndarray(np.asarray(f(self._a)), self._dev)
    return method


ndarray.__neg__ = _unary(operator.neg)
ndarray.__invert__ = _unary(operator.invert)
ndarray.__abs__ = _unary(abs)


# ---------------------------------------------------------------------------------------------------------------
# module functions

def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError("fake cupy: foreign device arrays are not supported")
    COUNTS["h2d"] += 1
    _op()
    return ndarray(np.array(a, dtype=dtype, order=order or "K"))


array = asarray


def asnumpy(a, stream=None):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        return asarray(np.ascontiguousarray(a, dtype=dtype))
    if a._a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    _op()
    return ndarray(np.ascontiguousarray(a._a, dtype=dtype), a._dev)


def _creator(f):
    def make(*args, **kwargs):
        _op()
        return ndarray(f(*_unwrap(args), **kwargs))
    return make


empty = _creator(np.zeros)  # defined contents: a stubbed kernel that writes nothing leaves zeros
zeros = _creator(np.zeros)
ones = _creator(np.ones)
full = _creator(np.full)
arange = _creator(np.arange)


def empty_like(a, dtype=None):
    _op()
    return ndarray(np.zeros_like(a._a, dtype=dtype), a._dev)


def _fn(f, sync=False):
    def call(*args, **kwargs):
        devs = {v._dev for v in args if isinstance(v, ndarray)}
        if len(devs) > 1:
            raise ValueError("fake cupy: operands on different devices")
        if any(isinstance(v, np.ndarray) and v.ndim > 0 for v in args):
            raise TypeError(f"fake cupy: {f.__name__} got a numpy array (CuPy refuses implicit host arrays)")
        if sync:
            _sync()
        _op()
        r = f(*_unwrap(args), **kwargs)
        dev = devs.pop() if devs else None
        if isinstance(r, tuple):
            return tuple(_wrap(v, dev) for v in r)
        return _wrap(np.asarray(r), dev)
    call.__name__ = f.__name__
    return call


for _name in ("log", "exp", "log1p", "isposinf", "isneginf", "isfinite", "isnan", "maximum", "minimum", "where",
              "take_along_axis", "cumsum", "logical_and", "logical_or", "logical_not", "abs", "round", "sum"):
    globals()[_name] = _fn(getattr(np, _name))
flatnonzero = _fn(np.flatnonzero, sync=True)
argwhere = _fn(np.argwhere, sync=True)
unique = _fn(np.unique, sync=True)


def nonzero(a):
    return a.nonzero()


def concatenate(arrays, axis=0):
    return _fn(lambda *v: np.concatenate(v, axis=axis))(*arrays)


def stack(arrays, axis=0):
    return _fn(lambda *v: np.stack(v, axis=axis))(*arrays)


def bincount(x, minlength=0):
    return _fn(lambda v: np.bincount(v, minlength=minlength))(x)


for _t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64", "bool_",
           "dtype", "errstate", "nan", "inf", "intp"):
    globals()[_t] = getattr(np, _t)


def get_array_module(*args):
    return sys.modules[__name__]


# cupy.cuda
class _Stream:
    def __init__(self, non_blocking=False):
        self.ptr = 0

    def synchronize(self):
        _sync()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _device_count():
    return 2


class Kernel:
    """A compiled kernel (what ``cyctc.cuda._backend.get_function`` returns), stubbed: a call launches nothing and
    is recorded in ``calls`` as (grid, block, args, shared_mem). Its attributes are read through ``cuda.driver``, as
    CuPy's are; by default those of the real kernel: static shared memory from ptxas's report for cyctc_chain
    (``_backend.STATIC_SHARED``), none for the others, and CUDA's default dynamic maximum, 48 KiB less the static."""

    def __init__(self, name="", shared_size_bytes=None, max_dynamic_shared_size_bytes=None):
        from cyctc.cuda import _backend

        if shared_size_bytes is None:
            chain = name.startswith("cyctc_chain<")
            shared_size_bytes = _backend.STATIC_SHARED["float64" if "double" in name else "float32"] if chain else 0
        if max_dynamic_shared_size_bytes is None:
            max_dynamic_shared_size_bytes = _backend.SHARED_LIMIT - shared_size_bytes
        self.name = name
        self.attributes = {_FUNC_ATTRIBUTES["shared_size_bytes"]: shared_size_bytes,
                           _FUNC_ATTRIBUTES["max_dynamic_shared_size_bytes"]: max_dynamic_shared_size_bytes}
        self.calls = []
        self.ptr = id(self)
        _KERNELS[self.ptr] = self

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


_FUNC_ATTRIBUTES = {"shared_size_bytes": 1, "max_dynamic_shared_size_bytes": 8}  # CUfunction_attribute values
_KERNELS = weakref.WeakValueDictionary()


def _func_get_attribute(attribute, ptr):
    return _KERNELS[ptr].attributes[attribute]


driver = types.SimpleNamespace(
    CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES=_FUNC_ATTRIBUTES["shared_size_bytes"],
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=_FUNC_ATTRIBUTES["max_dynamic_shared_size_bytes"],
    funcGetAttribute=_func_get_attribute,
)

cuda = types.SimpleNamespace(
    Device=Device, Stream=_Stream, is_available=lambda: True,
    get_current_stream=lambda: _Stream(),
    runtime=types.SimpleNamespace(getDeviceCount=_device_count, getDevice=lambda: _current_device[0]),
    driver=driver,
)

ndarray.__module__ = "cupy"  # cyctc recognises CuPy arrays by their class's module
Device.__module__ = "cupy.cuda.device"


@contextlib.contextmanager
def _allow_synchronize(allow):
    yield


def install(monkeypatch):
    """Make ``import cupy`` return this module for the current test; returns it (counters reset)."""
    mod = sys.modules[__name__]
    cupyx = types.ModuleType("cupyx")
    cupyx.allow_synchronize = _allow_synchronize
    monkeypatch.setitem(sys.modules, "cupy", mod)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    _current_device[0] = 0
    reset()
    return mod

