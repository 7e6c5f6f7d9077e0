"""Build of cyctc's C extensions. Metadata lives in pyproject.toml; this file only describes the extensions and
picks the flags for the compiler actually in use:

* a C compiler must work at all, or the build stops with a message saying so (wheels need none);
* OpenMP: GCC/Clang ``-fopenmp``; Apple clang ``-Xpreprocessor -fopenmp`` with libomp's headers and ``-lomp``
  (libomp found through CYCTC_LIBOMP_PREFIX, Homebrew, MacPorts or the active conda environment); MSVC ``/openmp``.
  CYCTC_OPENMP_CFLAGS / CYCTC_OPENMP_LDFLAGS replace that search with the flags given. Without OpenMP (none found, or
  CYCTC_NO_OPENMP=1) the build is single-threaded and says so; ``import cyctc`` then warns too, since pip hides build
  output. CYCTC_REQUIRE_OPENMP=1 (the release wheels) makes a missing OpenMP an error instead;
* floating point: no contraction of a*b+c into FMA on any compiler (results are the same bits on every machine);
* release builds: no debug information, symbols stripped, no RUNPATH pointing into the build machine's Python.
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import PlatformError


def _env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


# CYCTC_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer (see tox.ini, env "asan"); it keeps
# debug information and symbols for the reports
SANITIZE = _env_flag("CYCTC_SANITIZE")

EXTENSIONS = [
    Extension("cyctc._cpu", ["cyctc/_cpu.pyx", "cyctc/src/ctc.c"]),
    Extension("cyctc._decode", ["cyctc/_decode.pyx", "cyctc/src/decode.c"]),
]

NO_COMPILER = """\
cyctc: building from source needs a working C compiler, and {compiler!r} could not compile and link a trivial C
program ({error}).
  * Wheels need no compiler: `pip install cyctc` installs one on Linux (x86_64, aarch64; glibc or musl), macOS
    (x86_64, arm64) and Windows (AMD64) for CPython 3.9+; check that pip is recent (`pip install -U pip`) and that
    nothing like --no-binary forces a source build.
  * For a source build, install a compiler: Debian/Ubuntu `apt install gcc`, Fedora `dnf install gcc`, Alpine
    `apk add build-base`, macOS `xcode-select --install` (and `brew install libomp` for OpenMP), Windows "Build Tools
    for Visual Studio" with the "Desktop development with C++" workload.
"""

NO_OPENMP = """\
cyctc: WARNING: building WITHOUT OpenMP ({why}); every cyctc call will run on one thread. `import cyctc` will say so
too. For OpenMP: GCC or Clang with libgomp/libomp; on macOS `brew install libomp` (or CYCTC_LIBOMP_PREFIX=<prefix
holding include/omp.h and lib/libomp.dylib>); or give the flags in CYCTC_OPENMP_CFLAGS / CYCTC_OPENMP_LDFLAGS.
"""


def _try_build(compiler, source, compile_args=(), link_args=()):
    """Compile and link ``source`` as a program with these extra flags; None on success, else the error text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=list(compile_args))
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=list(link_args))
        except Exception as e:  # CompileError, LinkError, or a missing program (DistutilsExecError, OSError, ...)
            return str(e) or type(e).__name__
    return None


OMP_PROBE = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n<1;}\n"


def _libomp_prefixes():
    """Folders that may hold libomp (include/omp.h, lib/libomp.dylib) for Apple clang, most explicit first."""
    out = [os.environ.get("CYCTC_LIBOMP_PREFIX", "")]
    if shutil.which("brew"):
        try:
            out.append(subprocess.run(["brew", "--prefix", "libomp"], capture_output=True, text=True,
                                      timeout=60).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    out += ["/opt/homebrew/opt/libomp", "/usr/local/opt/libomp", os.environ.get("CONDA_PREFIX", "")]
    return [p for p in dict.fromkeys(out) if p and os.path.isfile(os.path.join(p, "include", "omp.h"))]


def _openmp_candidates(ctype):
    """(compile flags, link flags) to try in order, for this compiler type."""
    if "CYCTC_OPENMP_CFLAGS" in os.environ or "CYCTC_OPENMP_LDFLAGS" in os.environ:
        return [(shlex.split(os.environ.get("CYCTC_OPENMP_CFLAGS", "")),
                 shlex.split(os.environ.get("CYCTC_OPENMP_LDFLAGS", "")))]
    if ctype == "msvc":
        # OpenMP 2.0 (vcomp140.dll, part of the Visual C++ redistributable): what Cython's prange needs
        return [(["/openmp"], [])]
    plain = (["-fopenmp"], ["-fopenmp"])
    if sys.platform != "darwin":
        return [plain]
    # Apple clang: its driver rejects -fopenmp, which -Xpreprocessor hands to the compiler proper; the runtime
    # (libomp) comes separately.
    # The rpath lets a source build find a libomp whose install name is @rpath/libomp.dylib (conda's); delocate
    # copies libomp into release wheels and removes the rpath.
    apple = [(["-Xpreprocessor", "-fopenmp", f"-I{p}/include"], [f"-L{p}/lib", "-lomp", f"-Wl,-rpath,{p}/lib"])
             for p in _libomp_prefixes()]
    return apple + [plain] if os.environ.get("CYCTC_LIBOMP_PREFIX") else [plain] + apple


def _without_build_rpaths(cmd):
    """The link command without rpath entries pointing at Python's own library folder (from LDSHARED, e.g. pyenv's
    or conda's): an extension module never links libpython on these systems, and a wheel must not carry a path of
    the build machine."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    drop = {f"-Wl,-rpath,{libdir}", f"-Wl,-rpath={libdir}", f"-Wl,-R{libdir}", f"-R{libdir}"}
    return [arg for arg in cmd if arg not in drop]


class BuildExt(build_ext):
    def build_extensions(self):
        compiler, ctype = self.compiler, self.compiler.compiler_type
        exe = getattr(compiler, "compiler_so", None) or [getattr(compiler, "cc", ctype)]
        error = _try_build(compiler, "int main(void){return 0;}\n")
        if error is not None:
            raise PlatformError(NO_COMPILER.format(compiler=" ".join(map(str, exe[:1])), error=error.strip()))

        omp = None
        if _env_flag("CYCTC_NO_OPENMP"):
            why = "CYCTC_NO_OPENMP is set"
        else:
            omp = next((c for c in _openmp_candidates(ctype) if _try_build(compiler, OMP_PROBE, *c) is None), None)
            why = "the compiler cannot build an OpenMP program with the flags tried"
        if omp is None:
            if _env_flag("CYCTC_REQUIRE_OPENMP"):
                raise PlatformError(f"cyctc: CYCTC_REQUIRE_OPENMP is set but OpenMP is unavailable: {why}")
            sys.stderr.write(NO_OPENMP.format(why=why))

        if ctype == "msvc":
            # /fp:precise: no contraction into FMA (the default of Visual Studio 2022 17.0+ under /fp:precise, and x64
            # code without /arch:AVX2 has no FMA instruction to contract into); MSVC writes no debug info without /Zi
            flags, link_flags = ["/O2", "/fp:precise"], []
        else:
            # -fno-trapping-math lets loops with selects vectorise; -ffp-contract=off keeps a*b+c unfused, so results
            # are the same bits whatever the instruction set (the AVX2 and baseline clones) or the C mode of a C API build
            flags, link_flags = ["-O3", "-fno-trapping-math", "-ffp-contract=off"], []
            if SANITIZE:
                flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined",
                          "-O1"]
                link_flags += ["-fsanitize=address,undefined"]
            elif _env_flag("CYCTC_PROFILE"):
                pass  # keep debug information and symbols, for profilers (callgrind, perf); same code otherwise
            else:
                # release: no debug information (Python's CFLAGS carry -g), and the symbol table stripped at link
                flags.append("-g0")
                link_flags.append("-Wl,-S" if sys.platform == "darwin" else "-Wl,-s")
            compiler.linker_so = _without_build_rpaths(compiler.linker_so)
        for ext in self.extensions:
            ext.extra_compile_args += flags + (omp[0] if omp else [])
            ext.extra_link_args += link_flags + (omp[1] if omp else [])
        # the flags depend on the environment (CYCTC_*), which the "up to date" check cannot see: a build left in
        # build/ by CYCTC_NO_OPENMP=1 must not be reused by the next plain build
        self.force = True
        build_ext.build_extensions(self)


for ext in EXTENSIONS:
    ext.include_dirs.append(np.get_include())
    ext.define_macros.append(("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"))
    # built against numpy 2 (pyproject.toml), the extensions run on every numpy the package accepts (>= 1.21): numpy
    # 2.4's headers would otherwise target numpy >= 1.23 only
    ext.define_macros.append(("NPY_TARGET_VERSION", "NPY_1_21_API_VERSION"))

setup(
    ext_modules=cythonize(EXTENSIONS, compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt},
)
