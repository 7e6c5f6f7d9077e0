"""The single work-space budget rule used by every entry point that takes ``memory_limit``.

The budget bounds the work space one call allocates (the recursion's rows, checkpoints, back-pointers, per-thread
scratch, log-space rows), not its inputs or outputs (the gradient is as large as the logits whatever the budget).
"""
import operator
import os
import re

DEFAULT_MEMORY_LIMIT = 1 << 30  # 1 GiB
# budgets are signed 64-bit byte counts in the kernels; any larger one is no bound at all and means the same
MAX_MEMORY_LIMIT = 1 << 62
ENV_VAR = "CYCTC_MEMORY_LIMIT"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text, what):
    """A byte count from text: an integer, or a number with a unit K, M, G or T (powers of 1024; "KiB", "MB" and
    "1.5G" are read the same way). ValueError naming ``what`` otherwise."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{what} must be a positive number of bytes, optionally with a unit K, M, G or T "
                         f"(e.g. 512M, 2G), got {text!r}")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{what} must be a positive number of bytes, got {text!r}")
    return min(n, MAX_MEMORY_LIMIT)


def resolve_memory_limit(memory_limit):
    """Turn the public ``memory_limit`` argument into a positive byte count.

    None: ``CYCTC_MEMORY_LIMIT`` from the environment when set (bytes, or with a unit: 512M, 2G), else 1 GiB;
    n > 0: n bytes (at most ``MAX_MEMORY_LIMIT``: a larger budget bounds nothing either). A bool, a non-integer or a count <= 0 raises TypeError / ValueError naming ``memory_limit``.
    """
    if memory_limit is None:
        env = os.environ.get(ENV_VAR, "").strip()
        return parse_size(env, ENV_VAR) if env else DEFAULT_MEMORY_LIMIT
    if isinstance(memory_limit, bool):
        raise TypeError("memory_limit must be an int (bytes) or None, got bool")
    try:
        n = operator.index(memory_limit)
    except TypeError:
        raise TypeError(f"memory_limit must be an int (bytes) or None, got {type(memory_limit).__name__}") from None
    if n <= 0:
        raise ValueError(f"memory_limit must be a positive number of bytes, got {n}")
    return min(n, MAX_MEMORY_LIMIT)


def budget_error(func, need, limit):
    """The MemoryError of a budget below the smallest work space a call can run in."""
    return MemoryError(f"{func}: memory_limit of {limit} bytes is below the minimum work space this call needs, "
                       f"{need} bytes ({need / (1 << 20):.1f} MiB); raise memory_limit (or {ENV_VAR}) to at least "
                       f"that")
