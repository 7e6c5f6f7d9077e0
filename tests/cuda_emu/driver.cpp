// driver.cpp -- run cyctc's CUDA kernels on the CPU through emu.h, following a launch plan written by the tests.
//
// Build (tests/test_cuda_emulation.py does it): g++ -std=c++20 -O2 -pthread -I<dir of kernels.inc> driver.cpp
// kernels.inc is generated from cyctc.cuda._backend: it #includes every .cu file and defines
//   EMU_KERNEL_TABLE(X)  X("name<expr>", name<expr>) for every kernel name expression the backend launches.
// Usage: driver PLAN MODE [SEED]      MODE: THREADS | FIBER_FWD | FIBER_REV | FIBER_RAND
// PLAN is a text file, one directive a line (the plan that cyctc.cuda._backend.launch_config computed):
//   buffer NAME DTYPE COUNT FILE|-     allocate COUNT elements (float32 float64 int32 int64); FILE: raw bytes to
//                                      load, '-': poison (0xFF bytes: NaN / -1), as cupy.empty may hold anything
//   launch KERNEL GX GY GZ BX BY BZ SHARED_BYTES NARGS ARG...
//                                      ARG: buf:NAME | null:0 | i32:V | i64:V | f64:V; every argument is checked against
//                                      the kernel's C++ signature (kind, width, pointee type), so a plan that does
//                                      not match the kernel fails here instead of corrupting memory on a GPU
//   output NAME FILE                   write the buffer's raw bytes after all launches
// With EMU_TIMING set in the environment, the time of each launch goes to stderr. Every launch also writes
//   emu-barriers KERNEL N            N: the most __syncthreads any thread of any block passed (emu::max_block_barriers)
// to stderr. EMU_FTZ=1: flush float subnormals to zero (MXCSR FTZ + DAZ), as CUDA's -ftz=true.
#include "emu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define EMU_HAVE_MXCSR 1
#endif

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels.inc"

namespace {

struct Buffer {
  std::string dtype;
  std::vector<unsigned char> bytes;
};
using Buffers = std::map<std::string, Buffer>;

struct Arg {
  std::string kind, value;
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "driver: %s\n", msg.c_str());
  std::exit(2);
}

std::size_t dtype_size(const std::string& d) {
  if (d == "float32" || d == "int32") return 4;
  if (d == "float64" || d == "int64") return 8;
  die("unknown dtype " + d);
}

template <class E>
const char* dtype_of() {
  using U = std::remove_cv_t<E>;
  if constexpr (std::is_same_v<U, float>) return "float32";
  else if constexpr (std::is_same_v<U, double>) return "float64";
  else if constexpr (std::is_same_v<U, int>) return "int32";
  else if constexpr (std::is_same_v<U, long long>) return "int64";
  else return "?";
}

template <class P>
P convert(const Arg& a, Buffers& bufs, std::size_t pos, const std::string& kname) {
  const std::string where = kname + " argument " + std::to_string(pos) + ": ";
  if constexpr (std::is_pointer_v<P>) {
    if (a.kind == "null") return nullptr;
    if (a.kind != "buf") die(where + "expected a buffer, got " + a.kind);
    auto it = bufs.find(a.value);
    if (it == bufs.end()) die(where + "unknown buffer " + a.value);
    if (it->second.dtype != dtype_of<std::remove_pointer_t<P>>())
      die(where + "buffer " + a.value + " is " + it->second.dtype + ", kernel wants " +
          dtype_of<std::remove_pointer_t<P>>());
    return reinterpret_cast<P>(it->second.bytes.data());
  } else if constexpr (std::is_same_v<P, int>) {
    if (a.kind != "i32") die(where + "expected i32, got " + a.kind);
    return (int)std::stoll(a.value);
  } else if constexpr (std::is_same_v<P, long long>) {
    if (a.kind != "i64") die(where + "expected i64, got " + a.kind);
    return std::stoll(a.value);
  } else if constexpr (std::is_same_v<P, double>) {
    if (a.kind != "f64") die(where + "expected f64, got " + a.kind);
    return std::strtod(a.value.c_str(), nullptr);
  } else {
    static_assert(sizeof(P) == 0, "unsupported kernel parameter type");
  }
}

using Launcher = std::function<void(const std::string&, dim3, dim3, std::size_t, const std::vector<Arg>&, Buffers&)>;

template <class... A>
Launcher make_launcher(void (*k)(A...)) {
  return [k](const std::string& name, dim3 g, dim3 b, std::size_t shm, const std::vector<Arg>& args, Buffers& bufs) {
    if (args.size() != sizeof...(A))
      die(name + ": plan gives " + std::to_string(args.size()) + " arguments, kernel takes " +
          std::to_string(sizeof...(A)));
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      std::tuple<A...> tup{convert<A>(args[I], bufs, I, name)...};
      std::apply([&](auto... a) { emu::launch(k, g, b, shm, a...); }, tup);
    }(std::index_sequence_for<A...>{});
  };
}

const std::map<std::string, Launcher>& kernels() {
#define EMU_ENTRY(str, fn) {str, make_launcher(&fn)},
  static const std::map<std::string, Launcher> table{EMU_KERNEL_TABLE(EMU_ENTRY)};
#undef EMU_ENTRY
  return table;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) die("usage: driver PLAN MODE [SEED]");
  const std::string m = argv[2];
  emu::mode = m == "THREADS" ? emu::THREADS : m == "FIBER_FWD" ? emu::FIBER_FWD : m == "FIBER_REV" ? emu::FIBER_REV
            : m == "FIBER_RAND" ? emu::FIBER_RAND : (die("unknown mode " + m), emu::THREADS);
  if (argc > 3) emu::seed = (unsigned)std::stoul(argv[3]);
  if (const char* f = std::getenv("EMU_FTZ"); f && std::string(f) == "1") {
#ifdef EMU_HAVE_MXCSR
    _mm_setcsr(_mm_getcsr() | 0x8040);
#else
    die("EMU_FTZ=1 needs x86 (MXCSR)");
#endif
  }
  std::ifstream plan(argv[1]);
  if (!plan) die(std::string("cannot read ") + argv[1]);
  Buffers bufs;
  std::string line;
  while (std::getline(plan, line)) {
    std::istringstream in(line);
    std::string what;
    if (!(in >> what) || what[0] == '#') continue;
    if (what == "buffer") {
      std::string name, dtype, file;
      std::size_t count;
      in >> name >> dtype >> count >> file;
      Buffer& buf = bufs[name];
      buf.dtype = dtype;
      buf.bytes.assign(count * dtype_size(dtype), 0xFF);
      if (file != "-") {
        std::ifstream f(file, std::ios::binary);
        f.read(reinterpret_cast<char*>(buf.bytes.data()), (std::streamsize)buf.bytes.size());
        if (!f || f.peek() != EOF) die("buffer " + name + ": " + file + " does not hold exactly " +
                                       std::to_string(buf.bytes.size()) + " bytes");
      }
    } else if (what == "launch") {
      std::string name;
      unsigned gx, gy, gz, bx, by, bz;
      std::size_t shm, nargs;
      in >> name >> gx >> gy >> gz >> bx >> by >> bz >> shm >> nargs;
      std::vector<Arg> args(nargs);
      for (auto& a : args) {
        std::string tok;
        in >> tok;
        const auto colon = tok.find(':');
        if (colon == std::string::npos) die("bad argument " + tok);
        a.kind = tok.substr(0, colon);
        a.value = tok.substr(colon + 1);
      }
      if (!in) die("bad launch line: " + line);
      auto it = kernels().find(name);
      if (it == kernels().end()) die("kernel " + name + " is not in the table");
      const auto t0 = std::chrono::steady_clock::now();
      it->second(name, dim3(gx, gy, gz), dim3(bx, by, bz), shm, args, bufs);
      std::fprintf(stderr, "emu-barriers %s %d\n", name.c_str(), emu::max_block_barriers);
      if (std::getenv("EMU_TIMING"))
        std::fprintf(stderr, "%s: %.3f s\n", name.c_str(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    } else if (what == "output") {
      std::string name, file;
      in >> name >> file;
      auto it = bufs.find(name);
      if (it == bufs.end()) die("unknown output " + name);
      std::ofstream f(file, std::ios::binary);
      f.write(reinterpret_cast<const char*>(it->second.bytes.data()), (std::streamsize)it->second.bytes.size());
      if (!f) die("cannot write " + file);
    } else {
      die("unknown directive " + what);
    }
  }
  return 0;
}
