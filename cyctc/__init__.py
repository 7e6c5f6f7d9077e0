"""cyctc: fast, exact CTC loss, gradient, decoding and alignment for numpy and CuPy arrays."""
import os as _os


def _load_extensions():
    """Import the compiled extensions first, so that a cyctc without them fails with one clear message (not a
    circular-import error from whichever module needed them first), and warn once when they have no OpenMP."""
    try:
        from . import _cpu, _decode  # noqa: F401
    except ImportError:
        from importlib.machinery import EXTENSION_SUFFIXES

        here = _os.path.dirname(_os.path.abspath(__file__))
        built = any(_os.path.isfile(_os.path.join(here, "_cpu" + s)) for s in EXTENSION_SUFFIXES)
        if built or not _os.path.isfile(_os.path.join(here, "..", "pyproject.toml")):
            raise  # extensions that exist but cannot load (or an installed cyctc without them): the error says why
        raise ImportError(
            f"cyctc was imported from its source tree ({_os.path.dirname(here)}), where its compiled extensions "
            "(cyctc/_cpu, cyctc/_decode) have not been built. Python imports this folder before any installed cyctc "
            "when it is the current directory (or on PYTHONPATH). Either run Python (or `pytest tests`) from another "
            "folder, so that the installed cyctc is used (`pip install .` installs it), or build the extensions in "
            "place with `pip install -e .`.") from None
    if not _cpu.openmp_enabled() and _os.environ.get("CYCTC_NO_OPENMP", "") in ("", "0"):
        import warnings

        warnings.warn(
            "cyctc was built without OpenMP (the compiler had none, or CYCTC_NO_OPENMP=1 was set at build time): "
            "every call runs on one thread. The release wheels have OpenMP; see README, Install (From source). Set "
            "CYCTC_NO_OPENMP=1 to silence this warning when single-threaded is what you want.",
            RuntimeWarning, stacklevel=3)


_load_extensions()

from .align import ctc_align, ctc_segments
from .decode import ctc_beam_search_decoder, ctc_decode, ctc_greedy_decoder
from .labels import ctc_unique_labels
from .segment import ctc_segment
from .loss import ctc_batch_cost, ctc_loss, ctc_loss_v1

__version__ = "0.1.0"

__all__ = ["ctc_loss", "ctc_loss_v1", "ctc_batch_cost", "ctc_unique_labels", "ctc_greedy_decoder", "ctc_beam_search_decoder", "ctc_decode",
           "ctc_align", "ctc_segments", "ctc_segment", "show_config", "get_include", "get_sources", "__version__"]


def get_include():
    """Folder of ``cyctc.h``, the public C API header (see README: embedding from C/C++)."""
    return _os.path.join(_os.path.dirname(__file__), "include")


def get_sources():
    """Absolute paths of the C files a C/C++ program compiles (C99, or as C++17) to use ``cyctc.h``.

    They sit next to the headers they include (``src/*.h``); compile them with the same OpenMP flag as the program
    (``-fopenmp``), or without one for a single-threaded build. See README: embedding from C/C++.
    """
    src = _os.path.join(_os.path.dirname(__file__), "src")
    return [_os.path.join(src, name) for name in ("ctc.c", "capi.c")]


def _backends():
    from . import _cpu
    from ._threads import resolve_num_threads

    rows = [("cpu", True, f"OpenMP {'on' if _cpu.openmp_enabled() else 'off (built single-threaded)'}, "
                          f"default threads {resolve_num_threads(None)}")]
    try:
        from .cuda import _backend

        rows.append(("cuda", _backend.available(), _backend.reason()))
    except ImportError as e:
        rows.append(("cuda", False, f"not built in: {e}"))
    return rows


def show_config():
    """Print the version, whether OpenMP is on, the default thread count and which backends are available."""
    from . import _cpu
    from ._memory import ENV_VAR, resolve_memory_limit
    from ._threads import resolve_num_threads

    print(f"cyctc {__version__}")
    print(f"  OpenMP: {'on' if _cpu.openmp_enabled() else 'off (built without OpenMP: single-threaded)'}")
    print(f"  default num_threads: {resolve_num_threads(None)}")
    print(f"  memory_limit: {resolve_memory_limit(None)} bytes of work space per call "
          f"({'from ' + ENV_VAR if _os.environ.get(ENV_VAR, '').strip() else 'the default, 1 GiB'})")
    for name, ok, why in _backends():
        print(f"  backend {name}: {'available' if ok else 'unavailable'} ({why})")
