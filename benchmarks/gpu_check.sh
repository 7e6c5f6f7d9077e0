#!/usr/bin/env bash
# benchmarks/gpu_check.sh -- the one command for a GPU machine (no network needed, about 8 minutes at most):
# install cyctc from this checkout, run the GPU tests, benchmark against PyTorch's native CUDA CTC and cuDNN.
#
#   bash benchmarks/gpu_check.sh
#
# Writes gpu_check_<stamp>.log (everything printed), bench_gpu_<stamp>.json and pytest_gpu_<stamp>.xml into $OUT
# when it is set, else into benchmarks/results/. Phases, each under its own timeout:
#   0. environment: GPU, driver, Python and library versions, checkout commit
#   1. install: python3 -m pip install --no-build-isolation --no-deps . (no index); fallbacks: --user, then a
#      private in-place build (setup.py build_ext --inplace) put on PYTHONPATH
#   2. GPU tests: pytest -m gpu on the test files that use the marker, run from a directory outside the checkout
#   3. benchmark: benchmarks/bench_gpu.py (stops starting new shapes when its budget is spent)
# Exit status: 0 all good; 1 a GPU test failed or none ran; 2 cyctc could not be installed; 3 the benchmark
# failed or found cyctc's GPU results wrong. Later phases run even when an earlier one failed (except after 2).
# Settings (environment): PYTHON (python3), OUT, GPU_CHECK_INSTALL_S (120), GPU_CHECK_TEST_S (150),
# GPU_CHECK_BENCH_S (180), GPU_CHECK_BENCH_BUDGET_S (120), GPU_CHECK_SHAPES (space-separated; default all).

set -u -o pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname -- "$here")
py=${PYTHON:-python3}
outdir=${OUT:-$root/benchmarks/results}
install_s=${GPU_CHECK_INSTALL_S:-120}
test_s=${GPU_CHECK_TEST_S:-150}
bench_s=${GPU_CHECK_BENCH_S:-180}
budget_s=${GPU_CHECK_BENCH_BUDGET_S:-120}
shapes=${GPU_CHECK_SHAPES:-}

mkdir -p -- "$outdir" || { echo "gpu_check: cannot create $outdir" >&2; exit 2; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$outdir/gpu_check_$stamp.log
json=$outdir/bench_gpu_$stamp.json
junit=$outdir/pytest_gpu_$stamp.xml
work=$(mktemp -d "${TMPDIR:-/tmp}/cyctc_gpu_check.XXXXXX") || exit 2
trap 'rm -rf -- "$work"' EXIT
exec > >(tee -a -- "$log") 2>&1

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
t_start=$SECONDS
phase() { printf '\n=== %s (t = %d s) ===\n' "$1" "$((SECONDS - t_start))"; }
bounded() {  # bounded SECONDS CMD...: run CMD, killed after SECONDS (and 10 s later if it ignores TERM)
    local limit=$1
    shift
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "gpu_check: timed out after $limit s: $*"
    fi
    return "$rc"
}

phase "0. environment"
echo "checkout: $root ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
git -C "$root" status --short 2>/dev/null | head -n 20
if command -v nvidia-smi >/dev/null 2>&1; then
    bounded 20 nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv
else
    echo "nvidia-smi: not found"
fi
bounded 60 "$py" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "scipy", "Cython", "pytest", "hypothesis", "setuptools", "cupy", "torch"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__}: {e})")
try:
    import cupy
    rt = cupy.cuda.runtime
    n = rt.getDeviceCount()
    v = lambda x: f"{x // 1000}.{x % 1000 // 10}"
    print(f"cupy: {n} device(s), driver CUDA {v(rt.driverGetVersion())}, runtime {v(rt.runtimeGetVersion())}")
    for i in range(n):
        p = rt.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        print(f"  device {i}: {name}, sm_{p['major']}{p['minor']}, {p['multiProcessorCount']} SMs, "
              f"{p['totalGlobalMem'] / 2**30:.0f} GiB")
except Exception as e:
    print(f"cupy devices: {type(e).__name__}: {e}")
try:
    import torch
    print(f"torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"cuda available {torch.cuda.is_available()}")
except Exception as e:
    print(f"torch: {type(e).__name__}: {e}")
EOF

phase "1. install cyctc from the checkout"
installed=0
cd -- "$root" || exit 2
install_end=$((SECONDS + install_s))
left() { local n=$((install_end - SECONDS)); [ "$n" -gt 10 ] && echo "$n" || echo 10; }  # the phase's time left
pip_install=("$py" -m pip install --no-build-isolation --no-deps --no-index)
if bounded "$(left)" "${pip_install[@]}" .; then
    installed=1
elif bounded "$(left)" "${pip_install[@]}" --user --break-system-packages .; then
    installed=1
else
    echo "gpu_check: pip could not install the checkout; building a private in-place copy instead"
    mkdir -p -- "$work/src"
    if git -C "$root" ls-files -z >/dev/null 2>&1; then
        git -C "$root" ls-files -z --cached --others --exclude-standard | (cd -- "$root" && xargs -0 cp --parents -t "$work/src")
    else
        cp -r -- "$root/." "$work/src"
    fi
    if (cd -- "$work/src" && bounded "$(left)" "$py" setup.py build_ext --inplace -q); then
        export PYTHONPATH="$work/src${PYTHONPATH:+:$PYTHONPATH}"
        installed=1
    fi
fi
mkdir -p -- "$work/run"
cd -- "$work/run" || exit 2
if [ "$installed" -eq 1 ] && bounded 60 "$py" -c "import cyctc; print('cyctc', cyctc.__version__, 'from', cyctc.__file__); cyctc.show_config()"; then
    :
else
    echo "gpu_check: FAILED: cyctc is not importable"
    exit 2
fi

phase "2. GPU tests (pytest -m gpu)"
mapfile -t gpu_tests < <(grep -l -E 'mark\.gpu' "$root"/tests/test_*.py)
test_rc=0
if [ "${#gpu_tests[@]}" -eq 0 ]; then
    echo "gpu_check: no test file uses the gpu marker"
    test_rc=1
else
    bounded "$test_s" "$py" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$junit" "${gpu_tests[@]}"
    test_rc=$?
    # every GPU test skipped (no device seen, CuPy broken, ...) is a failed check, not a pass
    if [ "$test_rc" -eq 0 ] && ! "$py" - "$junit" <<'EOF'
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
s = r if r.tag == "testsuite" else r.find("testsuite")
n, skipped = int(s.get("tests", 0)), int(s.get("skipped", 0))
print(f"gpu tests: {n} collected, {n - skipped} ran, {skipped} skipped")
sys.exit(0 if n - skipped > 0 else 1)
EOF
    then
        echo "gpu_check: no GPU test ran"
        test_rc=1
    fi
fi

phase "3. benchmark (bench_gpu.py)"
bench_args=(--json "$json" --budget-s "$budget_s")
if [ -n "$shapes" ]; then
    read -r -a shape_list <<<"$shapes"
    bench_args+=(--shapes "${shape_list[@]}")
fi
bounded "$bench_s" "$py" "$root/benchmarks/bench_gpu.py" "${bench_args[@]}"
bench_rc=$?

phase "summary"
status=0
if [ "$test_rc" -ne 0 ]; then
    echo "GPU tests: FAILED (pytest status $test_rc)"
    status=1
else
    echo "GPU tests: passed"
fi
if [ "$bench_rc" -ne 0 ]; then
    echo "benchmark: FAILED (status $bench_rc)"
    [ "$status" -eq 0 ] && status=3
else
    echo "benchmark: done"
fi
echo "log: $log"
[ -f "$json" ] && echo "benchmark JSON: $json"
[ -f "$junit" ] && echo "test report: $junit"
echo "total $((SECONDS - t_start)) s; exit status $status"
exit "$status"
