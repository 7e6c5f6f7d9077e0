// emu.h -- run CUDA kernel source as host C++, to test cyctc's .cu files on machines without a GPU.
// Build: g++ -std=c++20 -O2 -pthread [-fsanitize=thread]. Evolved from shared/design/emu_prototype.h.
//
// Blocks run one after another; the threads of a block run in one of these modes (emu::mode):
//   THREADS     a pool of nthr std::threads per launch, emu::Barrier for __syncthreads / warp syncs: real
//               concurrency, so ThreadSanitizer names racing lines (exited threads drop out of barriers, as sm_70+).
//   FIBER_FWD / FIBER_REV / FIBER_RAND   one OS thread, fibres (a small stack switch on x86-64, ucontext elsewhere)
//               run barrier to barrier, a warp at a time (the first, last or a seeded random warp; a warp runs on
//               through warp barriers up to the next block barrier), threads in forward, reverse or random order:
//               deterministic; FWD + RAND catch missing barriers.
// __shared__ = static storage in ELF section emu_shared; it and dynamic shared memory are poisoned with 0xFF bytes
// (NaN for floating types, -1 for ints) before every block so that stale values cannot hide a race.
// Checked launch limits: <= 1024 threads per block, static + dynamic shared memory <= 48 KiB (the amount a CUDA
// launch gets without an opt-in attribute), grid.y / grid.z <= 65535. A deadlock (a thread waiting at a barrier that
// can never complete) aborts with a message.
// __syncthreads_or is a barrier like __syncthreads. emu::max_block_barriers: after a launch, the most block barriers
// any thread of any block passed (the critical path in barrier steps; the driver reports it).
// Flush-to-zero: the driver can set the x86 MXCSR FTZ and DAZ bits (environment EMU_FTZ=1), which fibres and threads
// inherit: float arithmetic then flushes subnormal results and inputs to 0 as nvcc's -ftz=true does (double
// arithmetic too, which the GPU does not flush: use it for float32 plans only).
// Not emulated: warp-synchronous code without __syncwarp / shuffles, shuffle masks (the whole warp must call),
// fast-math intrinsics (host libm stands in), memory-model effects beyond barriers.
#pragma once
#include <math.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>
#include <ucontext.h>

#define EMU_H 1
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ __attribute__((section("emu_shared"))) static
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dyn_ptr())
#define threadIdx emu::tIdx
#define blockIdx emu::bIdx
#define blockDim emu::bDim
#define gridDim emu::gDim
#define warpSize 32
#define __syncthreads() emu::block_sync()
#define __syncthreads_or(pred) emu::block_sync_or(pred)
#define __syncwarp(...) emu::warp_sync()
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __fdividef(a, b) ((a) / (b))
#define __ldg(p) (*(p))
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
inline long long __double_as_longlong(double f) { long long i; std::memcpy(&i, &f, 8); return i; }
extern "C" char __start_emu_shared[] __attribute__((weak)), __stop_emu_shared[] __attribute__((weak));

namespace emu {
// Central barrier on one atomic generation word (C++20 atomic wait/notify, i.e. futex on Linux): fewer atomic
// operations per arrival than std::barrier, which matters with hundreds of threads on two cores. Happens-before
// comes from the acquire/release atomics, so ThreadSanitizer understands it. `on_phase` runs on the last arriver
// before the others are released; arrive_and_drop leaves for good (as an exited CUDA thread leaves barriers).
template <class F = void (*)()>
class Barrier {
 public:
  explicit Barrier(int n, F on_phase = nullptr) : pending_(n), expected_(n), on_phase_(on_phase) {}
  void arrive_and_wait() {
    const unsigned g = gen_.load(std::memory_order_acquire);
    if (!arrive())
      while (gen_.load(std::memory_order_acquire) == g) gen_.wait(g, std::memory_order_acquire);
  }
  void arrive_and_drop() {
    expected_.fetch_sub(1, std::memory_order_relaxed);
    arrive();
  }

 private:
  bool arrive() {  // true for the last arrival of the phase, which completes it
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) != 1) return false;
    if constexpr (!std::is_pointer_v<F>) on_phase_();
    else if (on_phase_) on_phase_();
    pending_.store(expected_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    return true;
  }
  std::atomic<int> pending_, expected_;
  std::atomic<unsigned> gen_{0};
  F on_phase_;
};

enum Mode { THREADS, FIBER_FWD, FIBER_REV, FIBER_RAND };
inline Mode mode = FIBER_FWD;
inline unsigned seed = 12345;  // FIBER_RAND schedule
inline thread_local dim3 tIdx;
inline thread_local int tid = 0;
inline dim3 bIdx, bDim, gDim;
inline int nthr = 0;
inline std::vector<unsigned char> dyn;  // dynamic shared memory of the running block
inline unsigned char* dyn_ptr() { return dyn.data(); }
inline std::vector<unsigned long long> xch;  // shuffle slots, two per thread
inline std::vector<unsigned> shfl_calls;     // per thread: shuffles done in this block (selects the slot half)
inline std::unique_ptr<Barrier<>> bbar;
inline std::vector<std::unique_ptr<Barrier<>>> wbar;
inline std::function<void()> body;
// barrier accounting: __syncthreads (and __syncthreads_or) passed per thread in the running block; the largest
// count over the threads of each block, and the largest over the blocks of the launch (emu::max_block_barriers)
inline std::vector<int> barriers_passed;
inline int max_block_barriers = 0;
// __syncthreads_or: three rotating slots (slot k % 3 is written before barrier k, read after it, and cleared after
// barrier k + 1, by which time every thread has read it and none can write it again before barrier k + 2)
inline std::atomic<int> or_slot[3];
inline std::vector<unsigned> or_calls;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emu: %s\n", what);
  std::abort();
}

// ---- fibres ----
// x86-64: a 20-instruction stack switch (callee-saved registers, MXCSR, x87 control word); ucontext's
// swapcontext makes a sigprocmask system call on every switch, which dominated the run time. Elsewhere: ucontext.
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
#define EMU_FAST_SWITCH 1
extern "C" void emu_ctx_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl emu_ctx_switch
  .type emu_ctx_switch, @function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch, .-emu_ctx_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

struct Fiber {
#ifdef EMU_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  std::unique_ptr<char[]> stack;
  int state = 0, on = -1;  // state 0 ready, 1 waiting at group `on`, 2 done
};
constexpr std::size_t kFiberStack = 1 << 17;
inline std::vector<Fiber> fib;
#ifdef EMU_FAST_SWITCH
inline void* sched_sp = nullptr;
#else
inline ucontext_t sched;
#endif
inline std::vector<int> arrived, alive;  // per sync group: 0 = block, 1 + w = warp w

inline void set_tid(int t) {
  tid = t;
  tIdx = dim3(t % bDim.x, t / bDim.x % bDim.y, t / (bDim.x * bDim.y));
}
inline void release(int g) {  // the last arrival of a group wakes the group
  if (arrived[g] && arrived[g] == alive[g]) {
    arrived[g] = 0;
    for (auto& f : fib)
      if (f.state == 1 && f.on == g) f.state = 0;
  }
}
inline void to_scheduler() {
#ifdef EMU_FAST_SWITCH
  emu_ctx_switch(&fib[tid].sp, sched_sp);
#else
  swapcontext(&fib[tid].ctx, &sched);
#endif
}
inline void fiber_wait(int g) {
  fib[tid].state = 1;
  fib[tid].on = g;
  ++arrived[g];
  release(g);
  to_scheduler();
}
inline void block_sync() {
  ++barriers_passed[tid];
  mode == THREADS ? bbar->arrive_and_wait() : fiber_wait(0);
}
inline int block_sync_or(int pred) {
  const unsigned k = or_calls[tid]++;
  if (pred) or_slot[k % 3].store(1, std::memory_order_relaxed);
  block_sync();
  const int r = or_slot[k % 3].load(std::memory_order_relaxed);
  or_slot[(k + 2) % 3].store(0, std::memory_order_relaxed);
  return r;
}
inline void finish_block() {  // record the block's barrier count
  int m = 0;
  for (int c : barriers_passed) m = c > m ? c : m;
  max_block_barriers = m > max_block_barriers ? m : max_block_barriers;
}
inline void warp_sync() { mode == THREADS ? wbar[tid / 32]->arrive_and_wait() : fiber_wait(1 + tid / 32); }
inline void fiber_entry() {  // exited threads leave their groups
  body();
  fib[tid].state = 2;
  --alive[0];
  --alive[1 + tid / 32];
  release(0);
  release(1 + tid / 32);
}
#ifdef EMU_FAST_SWITCH
[[noreturn]] inline void fiber_trampoline() {
  fiber_entry();
  to_scheduler();  // a finished fibre is never resumed
  std::abort();
}
#endif
inline void start_fiber(Fiber& f) {
  if (!f.stack) f.stack.reset(new char[kFiberStack]);
#ifdef EMU_FAST_SWITCH
  // initial frame, popped by emu_ctx_switch: [mxcsr|fpucw] r15 r14 r13 r12 rbx rbp, then `ret` into the trampoline
  // with the stack aligned as after a call
  auto top = (reinterpret_cast<std::uintptr_t>(f.stack.get()) + kFiberStack) & ~std::uintptr_t(15);
  auto* w = reinterpret_cast<std::uint64_t*>(top);
  w[-1] = 0;
  w[-2] = reinterpret_cast<std::uint64_t>(&fiber_trampoline);
  for (int i = 3; i <= 8; ++i) w[-i] = 0;
  std::uint32_t ctl[2];
  asm volatile("stmxcsr %0" : "=m"(ctl[0]));
  asm volatile("fnstcw %0" : "=m"(ctl[1]));
  std::memcpy(&w[-9], ctl, 8);
  f.sp = &w[-9];
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.get();
  f.ctx.uc_stack.ss_size = kFiberStack;
  f.ctx.uc_stack.ss_flags = 0;
  f.ctx.uc_link = &sched;
  makecontext(&f.ctx, fiber_entry, 0);
#endif
}
inline void resume(int t) {
  set_tid(t);
#ifdef EMU_FAST_SWITCH
  emu_ctx_switch(&sched_sp, fib[t].sp);
#else
  swapcontext(&sched, &fib[t].ctx);
#endif
}
inline void run_block_fibers(std::mt19937& rng) {
  const int nw = (nthr + 31) / 32;
  if ((int)fib.size() < nthr) fib.resize(nthr);
  arrived.assign(1 + nw, 0);
  alive.assign(1 + nw, 0);
  alive[0] = nthr;
  for (int t = 0; t < nthr; ++t) {
    ++alive[1 + t / 32];
    fib[t].state = 0;
    fib[t].on = -1;
    start_fiber(fib[t]);
  }
  std::vector<int> ready, run;
  for (;;) {
    ready.clear();
    for (int t = 0; t < nthr; ++t)
      if (fib[t].state == 0) ready.push_back(t);
    if (ready.empty()) break;
    // Warp at a time: one warp (the first, last or a random one with a ready thread) runs its ready fibres to their
    // next barrier, in the chosen order; it is picked again while it only passes warp barriers, so a warp runs ahead
    // of the others up to the next block barrier (as a GPU warp may): a missing __syncthreads shows.
    const int pick = mode == FIBER_FWD ? ready.front() : mode == FIBER_REV ? ready.back()
                   : ready[std::uniform_int_distribution<int>(0, (int)ready.size() - 1)(rng)];
    run.clear();
    for (int t : ready)
      if (t / 32 == pick / 32) run.push_back(t);
    if (mode == FIBER_REV) std::reverse(run.begin(), run.end());
    if (mode == FIBER_RAND) std::shuffle(run.begin(), run.end(), rng);
    for (int t : run)
      if (fib[t].state == 0) resume(t);
  }
  for (int t = 0; t < nthr; ++t)
    if (fib[t].state != 2) {
      std::fprintf(stderr, "emu: deadlock, thread %d waits at a barrier it can never pass\n", t);
      std::abort();
    }
}

// ---- thread pool (THREADS mode): one pool per launch, reused for every block ----
inline void new_block_barriers() {
  const int nw = (nthr + 31) / 32;
  bbar = std::make_unique<Barrier<>>(nthr);
  wbar.clear();
  for (int w = 0; w < nw; ++w) wbar.push_back(std::make_unique<Barrier<>>(nthr - 32 * w < 32 ? nthr - 32 * w : 32));
}

template <class EachBlock>
void for_blocks(dim3 grid, EachBlock&& each) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) each(dim3(x, y, z));
}

inline void prepare_block(dim3 b, std::size_t dyn_bytes) {
  bIdx = b;
  dyn.assign(dyn_bytes, 0xFF);
  if (__start_emu_shared) std::memset(__start_emu_shared, 0xFF, __stop_emu_shared - __start_emu_shared);
  std::fill(xch.begin(), xch.end(), ~0ull);
  std::fill(shfl_calls.begin(), shfl_calls.end(), 0u);
  std::fill(barriers_passed.begin(), barriers_passed.end(), 0);
  std::fill(or_calls.begin(), or_calls.end(), 0u);
  for (auto& o : or_slot) o.store(0, std::memory_order_relaxed);
}

template <class K, class... A>
void launch(K kernel, dim3 grid, dim3 block, std::size_t dyn_bytes, A... args) {
  gDim = grid;
  bDim = block;
  nthr = (int)(block.x * block.y * block.z);
  const std::size_t static_bytes = __start_emu_shared ? (std::size_t)(__stop_emu_shared - __start_emu_shared) : 0;
  if (nthr < 1 || nthr > 1024) fail("block size out of range (1..1024 threads)");
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535) fail("grid size out of range");
  if (static_bytes + dyn_bytes > 48 * 1024) fail("more than 48 KiB of shared memory");
  xch.assign(2 * (std::size_t)nthr, 0);
  shfl_calls.assign(nthr, 0);
  barriers_passed.assign(nthr, 0);
  or_calls.assign(nthr, 0);
  max_block_barriers = 0;
  body = [&] { kernel(args...); };
  if (mode == THREADS) {
    // one pool for the whole launch; the completion step of the pool barrier sets up the next block
    std::vector<dim3> blocks;
    for_blocks(grid, [&](dim3 b) { blocks.push_back(b); });
    std::size_t next = 0;
    bool stop = false;
    auto next_block = [&]() noexcept {
      if (next > 0) finish_block();
      if (next == blocks.size()) {
        stop = true;
        return;
      }
      prepare_block(blocks[next++], dyn_bytes);
      new_block_barriers();
    };
    Barrier<decltype(next_block)> pool_bar(nthr, next_block);
    std::vector<std::thread> pool;
    for (int t = 0; t < nthr; ++t)
      pool.emplace_back([&, t] {
        for (;;) {
          pool_bar.arrive_and_wait();
          if (stop) return;
          set_tid(t);
          body();
          bbar->arrive_and_drop();  // exited threads leave the block's barriers
          wbar[t / 32]->arrive_and_drop();
        }
      });
    for (auto& th : pool) th.join();
  } else {
    std::mt19937 rng(seed);
    for_blocks(grid, [&](dim3 b) {
      prepare_block(b, dyn_bytes);
      run_block_fibers(rng);
      finish_block();
    });
  }
}

template <class T, class F>
T shfl(T v, F src_of, int width) {
  // Exchange through per-thread slots. Consecutive shuffles alternate between two slot halves, so one warp barrier
  // per shuffle suffices: a lane cannot write the half it reads from again before passing the next barrier, which
  // every lane reaches only after its read.
  static_assert(sizeof(T) <= 8);
  const int lane = tid % 32, base = tid - lane % width, src = src_of(lane % width);
  unsigned long long* slots = xch.data() + (shfl_calls[tid]++ & 1) * nthr;
  T r = v;
  std::memcpy(&slots[tid], &v, sizeof(T));
  warp_sync();
  if (src >= 0 && src < width && base + src < nthr) std::memcpy(&r, &slots[base + src], sizeof(T));
  return r;
}
}  // namespace emu

template <class T>
T __shfl_down_sync(unsigned, T v, unsigned d, int w = 32) {
  return emu::shfl(v, [&](int l) { return l + (int)d; }, w);
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned d, int w = 32) {
  return emu::shfl(v, [&](int l) { return l - (int)d; }, w);
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int m, int w = 32) {
  return emu::shfl(v, [&](int l) { return l ^ m; }, w);
}
template <class T>
T __shfl_sync(unsigned, T v, int s, int w = 32) {
  return emu::shfl(v, [&](int) { return s % w; }, w);
}
// __reduce_max_sync (sm_80 redux.sync): one exchange through the shuffle slots (one warp barrier), the whole warp
// calling; each lane then reads the slots of all its warp's lanes
inline int __reduce_max_sync(unsigned, int v) {
  using namespace emu;
  const int lane = tid % 32, base = tid - lane;
  unsigned long long* slots = xch.data() + (shfl_calls[tid]++ & 1) * nthr;
  std::memcpy(&slots[tid], &v, sizeof v);
  warp_sync();
  int m = v;
  for (int l = 0; l < 32 && base + l < nthr; ++l) {
    int o;
    std::memcpy(&o, &slots[base + l], sizeof o);
    m = o > m ? o : m;
  }
  return m;
}
// __any_sync (vote.any): a warp-wide OR through the same exchange, the whole warp calling
inline int __any_sync(unsigned mask, int pred) { return __reduce_max_sync(mask, pred ? 1 : 0); }
template <class T> T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T> T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T> T atomicCAS(T* p, T cmp, T v) { std::atomic_ref<T>(*p).compare_exchange_strong(cmp, v); return cmp; }
