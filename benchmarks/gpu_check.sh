#!/usr/bin/env bash
# benchmarks/gpu_check.sh -- the one command for a GPU machine without network: install cyctc from this checkout,
# run the GPU tests, benchmark against PyTorch's native CUDA CTC and cuDNN. Ends within its time limit, whatever hangs.
#
#   bash benchmarks/gpu_check.sh            # at most 8 minutes: the GPU tests, then every shape of the GPU grid
#   bash benchmarks/gpu_check.sh --quick    # at most 4 minutes: the GPU tests, then speech-char, long, one-long
#                                           # and the training batch
#
# Both fit one command of a lent GPU machine (10 minutes at most) with room for a rerun of --quick in its 15 minutes.
# Writes gpu_check_<stamp>.log (everything printed), bench_gpu_<quick|full>_<stamp>.json (rewritten after every
# shape, with the GPU, driver and commit) and pytest_gpu_<stamp>.xml into $OUT when it is set, else into
# benchmarks/results/ (where JSON and logs may be committed). Phases:
#   0. environment: GPU, driver, Python and library versions (setuptools included), checkout commit
#   1. install: python3 -m pip install --no-build-isolation --no-deps --no-index . (then --user); when pip cannot
#      (e.g. setuptools < 77 rejects pyproject.toml's PEP 639 license), a private copy of the checkout without
#      pyproject.toml (an in-place build needs no metadata) is built with setup.py build_ext --inplace by whatever
#      setuptools is installed, and put on PYTHONPATH
#   2. GPU tests: pytest -m gpu -v on the test files that use the marker, run from a directory outside the checkout;
#      each test limited by pytest-timeout when installed (and its stacks dumped by faulthandler either way), so one
#      hanging test does not hide the others' results
#   3. benchmark: benchmarks/bench_gpu.py; it stops starting shapes when its budget is spent, and the phase gets all
#      the time left
# Every command runs under a timeout that never reaches past the check's deadline (5 s are kept for the summary);
# a command stopped by it gets SIGINT first, so pytest still writes its report of the tests it ran.
# Exit status: 0 all good; 1 a GPU test failed or none ran; 2 cyctc could not be installed; 3 the benchmark measured
# nothing (no device, backend raised), failed on a shape or found cyctc's GPU results wrong; 64 a bad argument.
# Later phases run even when an earlier one failed (except after 2).
# Settings (environment; defaults full / --quick): PYTHON (python3), OUT, GPU_CHECK_TOTAL_S (480 / 240),
# GPU_CHECK_INSTALL_S (120 / 90), GPU_CHECK_TEST_S (150 / 90), GPU_CHECK_TEST_TIMEOUT_S (per test: 60),
# GPU_CHECK_SHAPES (space-separated; default: every shape / the quick ones).

set -u -o pipefail

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
mode=full
for arg in "$@"; do
    case "$arg" in
        --quick) mode=quick ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument: $arg (use --quick or nothing)" >&2; exit 64 ;;
    esac
done

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname -- "$here")
py=${PYTHON:-python3}
outdir=${OUT:-$root/benchmarks/results}
if [ "$mode" = quick ]; then
    total_s=${GPU_CHECK_TOTAL_S:-240}
    install_s=${GPU_CHECK_INSTALL_S:-90}
    test_s=${GPU_CHECK_TEST_S:-90}
else
    total_s=${GPU_CHECK_TOTAL_S:-480}
    install_s=${GPU_CHECK_INSTALL_S:-120}
    test_s=${GPU_CHECK_TEST_S:-150}
fi
per_test_s=${GPU_CHECK_TEST_TIMEOUT_S:-60}
shapes=${GPU_CHECK_SHAPES:-}
for setting in "GPU_CHECK_TOTAL_S=$total_s" "GPU_CHECK_INSTALL_S=$install_s" "GPU_CHECK_TEST_S=$test_s" \
               "GPU_CHECK_TEST_TIMEOUT_S=$per_test_s"; do
    case "${setting#*=}" in
        ''|*[!0-9]*|0)
            echo "gpu_check: ${setting%%=*} must be a positive whole number of seconds, got '${setting#*=}'" >&2
            exit 64 ;;
    esac
done

t_start=$SECONDS
deadline=$((t_start + total_s - 5))  # 5 s kept for the summary
mkdir -p -- "$outdir" || { echo "gpu_check: cannot create $outdir" >&2; exit 2; }
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$outdir/gpu_check_$stamp.log
json=$outdir/bench_gpu_${mode}_$stamp.json
junit=$outdir/pytest_gpu_$stamp.xml
work=$(mktemp -d "${TMPDIR:-/tmp}/cyctc_gpu_check.XXXXXX") || exit 2

# Everything printed goes to the terminal and the log, through tee. At exit the shell's ends of the pipe are closed
# and tee is waited for (at most 10 s), so the summary is in the log and the output before the script returns.
exec 3>&1 4>&2
exec > >(tee -a -- "$log") 2>&1
tee_pid=$!
# shellcheck disable=SC2317  # (run by the EXIT trap)
finish() {
    local rc=$?
    exec 1>&3 2>&4 3>&- 4>&-
    local _
    for _ in $(seq 100); do
        kill -0 "$tee_pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -rf -- "$work"
    exit "$rc"
}
trap finish EXIT

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_NO_INDEX=1 PYTHONUNBUFFERED=1
phase() { printf '\n=== %s (t = %d s) ===\n' "$1" "$((SECONDS - t_start))"; }
time_left() { echo $((deadline - SECONDS)); }
# bounded SECONDS CMD...: run CMD for at most SECONDS, and never past the deadline. The signal is INT, which Python
# turns into KeyboardInterrupt: pytest then still writes its report of the tests so far; KILL follows 5 s later (a
# hang inside a C call, e.g. waiting for the device, sees no Python signal)
bounded() {
    local limit=$1
    shift
    local room=$(($(time_left) - 5))
    [ "$room" -lt "$limit" ] && limit=$room
    if [ "$limit" -lt 1 ]; then
        echo "gpu_check: no time left for: $*"
        return 124
    fi
    timeout --signal=INT --kill-after=5 "$limit" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "gpu_check: timed out after $limit s: $*"
    fi
    return "$rc"
}
has_module() {  # has_module NAME: is the Python module NAME importable?
    bounded 30 "$py" - "$1" <<'EOF'
import importlib.util, sys
sys.exit(importlib.util.find_spec(sys.argv[1]) is None)
EOF
}

phase "0. environment ($mode check: at most $total_s s)"
echo "checkout: $root ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
git -C "$root" status --short 2>/dev/null | head -n 20
if command -v nvidia-smi >/dev/null 2>&1; then
    bounded 15 nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv
else
    echo "nvidia-smi: not found"
fi
bounded 40 "$py" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "scipy", "Cython", "pytest", "pytest_timeout", "hypothesis", "setuptools", "pip", "cupy",
             "torch"):
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
    echo "gpu_check: pip could not install the checkout (with setuptools < 77: pyproject.toml's PEP 639 license);"
    echo "gpu_check: building a private in-place copy without pyproject.toml instead (setup.py build_ext --inplace)"
    mkdir -p -- "$work/src"
    if git -C "$root" ls-files -z >/dev/null 2>&1; then
        git -C "$root" ls-files -z --cached --others --exclude-standard | (cd -- "$root" && xargs -0 cp --parents -t "$work/src")
    else
        cp -r -- "$root/." "$work/src"
    fi
    # pyproject.toml holds metadata and build requirements only: setup.py alone builds the extensions
    rm -f -- "$work/src/pyproject.toml"
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
    # per test: pytest-timeout fails a test that runs too long and goes on (when installed); faulthandler dumps every
    # thread's stack of a test still running 5 s later (a hang inside a CUDA call, which no Python signal interrupts)
    per_test=(-o "faulthandler_timeout=$((per_test_s + 5))")
    if has_module pytest_timeout; then
        per_test+=(-p timeout "--timeout=$per_test_s")
        echo "per-test limit: $per_test_s s (pytest-timeout)"
    else
        echo "per-test limit: none (pytest-timeout is not installed); stacks dumped after $((per_test_s + 5)) s"
    fi
    bounded "$test_s" "$py" -m pytest -m gpu -v -rfEs -p no:cacheprovider "${per_test[@]}" --junitxml="$junit" \
        "${gpu_tests[@]}"
    test_rc=$?
    # every GPU test skipped (no device seen, CuPy broken, ...) is a failed check, not a pass
    if [ "$test_rc" -eq 0 ] && ! bounded 30 "$py" - "$junit" <<'EOF'
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
# the phase gets all the time left; the benchmark stops starting shapes 50 s before its end (start-up and the
# training batch fit in that), and what it measured is in the JSON even if the phase is killed
bench_left=$(($(time_left) - 5))
budget_s=$((bench_left - 50))
[ "$budget_s" -lt 5 ] && budget_s=5
bench_args=(--json "$json" --budget-s "$budget_s")
[ "$mode" = quick ] && bench_args+=(--quick)
if [ -n "$shapes" ]; then
    read -r -a shape_list <<<"$shapes"
    bench_args+=(--shapes "${shape_list[@]}")
fi
bounded "$bench_left" "$py" "$root/benchmarks/bench_gpu.py" "${bench_args[@]}"
bench_rc=$?

phase "summary ($mode check)"
status=0
if [ "$test_rc" -ne 0 ]; then
    echo "GPU tests: FAILED (pytest status $test_rc)"
    status=1
else
    echo "GPU tests: passed"
fi
if [ "$bench_rc" -eq 2 ]; then
    echo "benchmark: FAILED: nothing measured (status 2; its message above says why)"
    [ "$status" -eq 0 ] && status=3
elif [ "$bench_rc" -ne 0 ]; then
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
