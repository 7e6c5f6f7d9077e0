import glob
import json
import os

import numpy as np
import pytest

try:  # every test needs cyctc: one clear message (e.g. run from the source tree, unbuilt) instead of one per module
    import cyctc  # noqa: F401
except ImportError as e:
    pytest.exit(f"cannot import cyctc: {e}", returncode=pytest.ExitCode.USAGE_ERROR)

DATA = os.path.join(os.path.dirname(__file__), "data")


def toolchain_unavailable(what, reason):
    """A tool a test needs is missing: skip, except under CI (environment variable CI set and non-empty), where the
    test must run and so fails. The release wheels' tests run with CI="" (pyproject.toml, [tool.cibuildwheel])."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run {what}: {reason}")
    pytest.skip(reason)


def load_case(path):
    d = np.load(path)
    case = {k: d[k] for k in d.files}
    case["api"] = str(d["api"])
    case["options"] = json.loads(str(d["options"]))
    case["name"] = os.path.basename(path)
    return case


def case_paths(api=None, errors=None):
    out = []
    for p in sorted(glob.glob(os.path.join(DATA, "*.npz"))):
        d = np.load(p)
        if api is not None and str(d["api"]) != api:
            continue
        if errors is not None and (("expected_error" in d.files) != errors):
            continue
        out.append(p)
    return out


def sparse_labels(case):
    import scipy.sparse as sp

    idx = case["labels_indices"]
    return sp.coo_matrix((case["labels_values"], (idx[:, 0], idx[:, 1])), shape=tuple(case["labels_shape"]))


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"threads{n}")
def nthreads(request):
    return request.param
