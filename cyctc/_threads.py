"""The single thread-count rule used by every CPU entry point."""
import os
import operator

from . import _cpu

# max_threads() is never below this: a count up to it is granted as asked, without looking up the affinity
MIN_MAX_THREADS = 8


def usable_cores():
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads():
    """The most threads one call starts: 4 per usable core, at least 8 (results never depend on the count, and
    asking OpenMP for tens of thousands of threads crashes the process when thread creation fails)."""
    return max(MIN_MAX_THREADS, 4 * usable_cores())


def resolve_num_threads(num_threads):
    """Turn the public ``num_threads`` argument into a positive thread count.

    None: all usable cores (OpenMP's default, i.e. OMP_NUM_THREADS when set, capped at the usable cores);
    n > 0: n threads, at most ``max_threads()``; n < 0: counts back from the usable cores (-1 = all, -2 = all but
    one), at least 1; 0: ValueError. Without OpenMP every call runs on 1 thread.
    """
    if type(num_threads) is int and 0 < num_threads <= MIN_MAX_THREADS:  # the usual case: no system call
        return num_threads if _cpu.openmp_enabled() else 1
    if num_threads is None:
        n = min(_cpu.omp_max_threads(), usable_cores())
    else:
        if isinstance(num_threads, bool):
            raise TypeError("num_threads must be an int or None, got bool")
        try:
            n = operator.index(num_threads)
        except TypeError:
            raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}") from None
        if n == 0:
            raise ValueError("num_threads must be a nonzero int or None (0 is not a thread count)")
        if n < 0:
            n = max(1, usable_cores() + 1 + n)
    if not _cpu.openmp_enabled():
        return 1
    return max(1, min(n, max_threads()))
