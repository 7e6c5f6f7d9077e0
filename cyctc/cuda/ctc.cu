// cyctc/cuda/ctc.cu -- CTC loss and gradient kernels (CuPy RawModule, NVRTC; also host C++ via tests/cuda_emu/emu.h).
//
// Notation: B batch, T frames (x.shape[1]), C classes, L label length, S = 2*Lmax + 1 extended states (the row
// stride of the state buffers; example b uses its first 2*L_b + 1 states: blank, l1, blank, ..., lL, blank).
// x is a (B, T, C) view whose class axis is contiguous; sx_b / sx_t are its batch / frame strides in elements
// (time-major input arrives as a strided view, never copied). grad has the same kind of view.
// Every kernel computes in the input's own precision R (float for float32, double for float64); float32 kernels use
// double only for a few per-example scalars (the loss, the log-space fallback's row offsets, the gradient scale).
//
// Pipeline (three launches, in this order, planned by cyctc/cuda/_backend.py launch_config()):
//   1. cyctc_rows<T>   one warp per valid (b, t) row, fully parallel: m = max_c x, s = sum_c exp(x - m) (one read of
//                      the row), and the probabilities p = exp(x - m) / s of the example's blank and label classes
//                      (prob, (B, T, W), W = prob_width(Lmax): [0] blank, [1 + PAD + k] label k, PAD = K / 2 leading
//                      and trailing columns of NaN, as are the labels k >= L and, in frame t, the labels no alignment
//                      can use then (k < L - T_b + t or k > t: "dead", see the chains)). A class of nonzero probability whose p
//                      falls below TH (4 x the smallest normal, exp flushed to 0 under -ftz included) is stored as
//                      the negative marker -2^ep (p < 2^ep), so that every product the recursion forms with it is a
//                      detected flush whose magnitude bounds what was lost; a class of probability 0 (logit -inf)
//                      is stored as NaN (see the chains' "no probability"). A row holding NaN or +inf, or only
//                      -inf, is marked non-finite (m = NaN).
//   2. cyctc_chain<T, K, TILED>   the forward and backward chains of every example, concurrently (B x ndir chains):
//                      K consecutive chain states per thread in registers with one binary exponent per such
//                      block, neighbours through warp shuffles, shared memory only at warp boundaries; a chain of
//                      at most 32 K states is one warp (several to a block, no block barrier), a longer one a
//                      block (one __syncthreads() per frame), tiled in global memory beyond 512 blocks (TILED).
//                      The backward chain is the forward chain run on the reversed frames and the reversed
//                      extended label, so one code path serves both. Scaled linear space with exponents per state
//                      block (the scheme of cyctc/src/ctc.h, "Scaling"); flushes are detected per state and
//                      bounded by shadow rows that run only after the first one; a direction whose bound is not
//                      negligible is recomputed in log space. Details at the kernel (section 2 below).
//                      Forward chains write the loss; with a gradient, forward rows alpha_t(s) go to arows and
//                      backward rows beta_t(s) (the sum of the successors, before frame t's probability) to brows,
//                      with each state block's exponent in aexp / bexp; fmt[dir, b] says linear (0) or log (1).
//   3. cyctc_grad<T>   one warp per (b, t) row: gamma_t(s) = alpha beta / sum_s alpha beta (normalised per frame,
//                      so the rows' scales cancel), grad = grad_scale[b] * (exp(x - m) / s - occupancy). Occupancy
//                      of a class is a fixed-order sum over the states that carry it (class -> states map lmap,
//                      built by the forward chains). No atomics: identical bits on every call. Rows t >=
//                      logit_length and examples with an infinite loss get exactly 0; valid rows of a NaN loss NaN.
// No #include: NVRTC is given no include path. INFINITY is not defined under NVRTC: see cyctc_ctc::inf<R>().

#if defined(__CUDACC__)
#define CYCTC_UNROLL _Pragma("unroll")
#else  // host C++ (tests/cuda_emu): the compiler unrolls as it likes
#define CYCTC_UNROLL
#endif

// SASS markers for benchmarks/sass_report.py: CYCTC_MARK(1) opens the body of a chain kernel's per-frame loop on the
// scaled path, CYCTC_MARK(2) closes it. They become PMTRIG instructions only when the source is compiled with
// -DCYCTC_SASS_MARKERS (the report's own build); the shipped kernels have none.
#if defined(CYCTC_SASS_MARKERS) && defined(__CUDA_ARCH__)
#define CYCTC_MARK(n) asm volatile("pmevent " #n ";")
#else
#define CYCTC_MARK(n)
#endif

#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char cyctc_smem_[];   \
  T* name = reinterpret_cast<T*>(cyctc_smem_)
#endif

namespace cyctc_ctc {

// ---- precision-dependent constants and helpers (R = float or double) ----
template <typename R> struct Num;
template <> struct Num<float> {
  static __device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
  static __device__ __forceinline__ float nan() { return __int_as_float(0x7fc00000); }
  static __device__ __forceinline__ float th() { return __int_as_float(3 << 23); }    // 2^-124 = 4 x FLT_MIN
  typedef int Bits;  // an integer of the same width
  static __device__ __forceinline__ int bits(float v) { return __float_as_int(v); }
  static __device__ __forceinline__ float from_bits(int b) { return __int_as_float(b); }
  static constexpr int tol_bits = 32;
  static constexpr int head = 120;
  static constexpr int min_exp = -126;  // pow2's smallest argument; chain blocks keep their maximum near 2^head
  static constexpr int pad = 4;         // NaN columns on each side of a probability row's labels: K / 2 (K = 8)
  // binary exponent e of v > 0 (v = f 2^e, f in [0.5, 1)); 0 for v == 0. v is never subnormal here.
  static __device__ __forceinline__ int expo(float v) { return v > 0.f ? ((__float_as_int(v) >> 23) & 0xff) - 126 : 0; }
  // exponent field of v >= 0 (expo(v) = field(v) - 126 for v > 0)
  static __device__ __forceinline__ int field(float v) { return __float_as_int(v) >> 23; }
  static __device__ __forceinline__ float pow2(int e) { return __int_as_float((e + 127) << 23); }  // |e| <= 126
  static __device__ __forceinline__ float ldx(float v, int e) { return ldexpf(v, e); }
  static __device__ __forceinline__ float ex(float v) { return expf(v); }
  static __device__ __forceinline__ float lg(float v) { return logf(v); }
  static __device__ __forceinline__ float lg1p(float v) { return log1pf(v); }
  static __device__ __forceinline__ float ab(float v) { return fabsf(v); }
  static __device__ __forceinline__ float mx(float a, float b) { return fmaxf(a, b); }
};
template <> struct Num<double> {
  static __device__ __forceinline__ double inf() { return __longlong_as_double(0x7ff0000000000000LL); }
  static __device__ __forceinline__ double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
  static __device__ __forceinline__ double th() { return __longlong_as_double(3LL << 52); }    // 2^-1020
  typedef long long Bits;
  static __device__ __forceinline__ long long bits(double v) { return __double_as_longlong(v); }
  static __device__ __forceinline__ double from_bits(long long b) { return __longlong_as_double(b); }
  static constexpr int tol_bits = 50;
  static constexpr int head = 1000;
  static constexpr int min_exp = -1022;
  static constexpr int pad = 2;  // K / 2 (K = 4)
  static __device__ __forceinline__ int expo(double v) {
    return v > 0.0 ? (int)((__double_as_longlong(v) >> 52) & 0x7ff) - 1022 : 0;
  }
  static __device__ __forceinline__ int field(double v) { return (int)(__double_as_longlong(v) >> 52); }
  static __device__ __forceinline__ double pow2(int e) { return __longlong_as_double((long long)(e + 1023) << 52); }
  static __device__ __forceinline__ double ldx(double v, int e) { return ldexp(v, e); }
  static __device__ __forceinline__ double ex(double v) { return exp(v); }
  static __device__ __forceinline__ double lg(double v) { return log(v); }
  static __device__ __forceinline__ double lg1p(double v) { return log1p(v); }
  static __device__ __forceinline__ double ab(double v) { return fabs(v); }
  static __device__ __forceinline__ double mx(double a, double b) { return fmax(a, b); }
};

// Unevaluated sums h + l (|l| <= ulp(h) / 2 after each operation), -inf as (-inf, 0): the log-space fallback.
template <typename R>
struct Pair {
  R h, l;
};
// (a + b) as a pair, exactly (Knuth's two-sum); a = -inf gives (-inf, 0)
template <typename R>
__device__ __forceinline__ Pair<R> two_sum(R a, R b) {
  const R s = a + b;
  if (!(s > -Num<R>::inf())) return Pair<R>{s, R(0)};
  const R bb = s - a;
  return Pair<R>{s, (a - (s - bb)) + (b - bb)};
}
template <typename R>
__device__ __forceinline__ Pair<R> add(Pair<R> a, R b) {
  const Pair<R> s = two_sum(a.h, b);
  if (!(s.h > -Num<R>::inf())) return s;
  return two_sum(s.h, s.l + a.l);  // renormalised
}
template <typename R>
__device__ __forceinline__ Pair<R> log_add(Pair<R> a, Pair<R> b) {
  if (a.h < b.h) {
    const Pair<R> t = a;
    a = b;
    b = t;
  }
  if (b.h == -Num<R>::inf()) return a;
  const R d = (b.h - a.h) + (b.l - a.l);  // <= 0 up to rounding; only needed to R's relative precision
  return add(a, Num<R>::lg1p(Num<R>::ex(d)));
}

template <typename R>
__device__ __forceinline__ R warp_max(R v) {
  for (int d = 16; d > 0; d >>= 1) {
    const R o = __shfl_xor_sync(0xffffffffu, v, d);
    v = o > v ? o : v;
  }
  return v;
}
template <typename R>
__device__ __forceinline__ R warp_sum(R v) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  return __shfl_sync(0xffffffffu, v, 0);
}
// Warp maximum of an int, and of a non-negative value: one redux instruction on sm_80 and newer (a non-negative
// float orders as its bits), shuffles before (and for double).
__device__ __forceinline__ int warp_max_int(int v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  return __reduce_max_sync(0xffffffffu, v);
#else
  for (int d = 16; d > 0; d >>= 1) {
    const int o = __shfl_xor_sync(0xffffffffu, v, d);
    v = o > v ? o : v;
  }
  return v;
#endif
}
__device__ __forceinline__ float warp_max_nonneg(float v) { return __int_as_float(warp_max_int(__float_as_int(v))); }
__device__ __forceinline__ double warp_max_nonneg(double v) { return warp_max(v); }

// Probability of a class of logit v in a frame of maximum m and sum s of exp(x - m): exp(v - m) / s, or, when a
// nonzero probability falls below TH, the marker -2^ep (p < 2^ep). The row pass and the budget plans' chains (which
// compute it themselves) share this code, so both give the same bits.
template <typename R>
__device__ __forceinline__ R prob_value(R v, R m, R s) {
  typedef Num<R> N;
  if (!(v > -N::inf())) return N::nan();  // probability 0: NaN, which the chains read as "no such state"
  R p = N::ex(v - m) / s;  // (x - m) first: shift-invariant at any magnitude
  if (!(p >= N::th())) {  // nonzero probability below the range: marked as -2^ep, p < 2^ep
    const R ep = ceil(((v - m) - N::lg(s)) * R(1.4426950408889634)) + R(1);
    p = -N::pow2(ep < R(-1) ? (ep > R(N::min_exp) ? (int)ep : N::min_exp) : -1);
  }
  return p;
}

// Columns of a probability row (section 1): the blank, PAD NaN, Lmax labels, PAD NaN.
template <typename R>
__device__ __forceinline__ int prob_width(int Lmax) { return Lmax + 1 + 2 * Num<R>::pad; }

// Smallest number of frames an alignment of the example's labels needs.
__device__ __forceinline__ int min_frames(const int* lab, int L, int merge_repeated) {
  int n = L;
  if (merge_repeated)
    for (int k = 1; k < L; ++k) n += lab[k] == lab[k - 1];
  return n;
}

// A flushed state of the chains: its inputs were not all 0 (raw > 0) and its product q fell below TH (an ordered
// compare: a NaN q, the product with a state of no probability, is none). On the device one compare feeds the
// other (setp with a predicate operand), which the compiler does not find by itself.
__device__ __forceinline__ bool flush_test(float raw, float q) {
#ifdef __CUDA_ARCH__
  unsigned r;
  asm("{\n\t.reg .pred a, b;\n\tsetp.gt.f32 a, %1, 0f00000000;\n\tsetp.lt.and.f32 b, %2, 0f01800000, a;\n\t"
      "selp.u32 %0, 1, 0, b;\n\t}" : "=r"(r) : "f"(raw), "f"(q));
  return r != 0;
#else
  return raw > 0.f && q < Num<float>::th();
#endif
}
__device__ __forceinline__ bool flush_test(double raw, double q) { return raw > 0.0 && q < Num<double>::th(); }

}  // namespace cyctc_ctc

// ---------------------------------------------------------------------------------------------------------------
// 1. Rows. blockDim.x a multiple of 32; one warp per row r = b * T + t; grid = ceil(B*T / warps). rinfo (B, T, 2):
// m and s; prob (B, T, prob_width(Lmax)). Rows t >= logit_length[b] are left untouched (never read).
template <typename T>
__global__ void __launch_bounds__(256)
cyctc_rows(const T* __restrict__ x, long long sx_b, long long sx_t, const int* __restrict__ labels, int Lmax,
           const int* __restrict__ label_length, const int* __restrict__ logit_length, int blank, int B, int T_, int C,
           T* __restrict__ rinfo, T* __restrict__ prob) {
  using namespace cyctc_ctc;
  typedef Num<T> N;
  const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (long long)B * T_) return;  // whole warps leave together
  const int b = (int)(row / T_), t = (int)(row % T_);
  if (t >= logit_length[b]) return;
  const T* xr = x + b * sx_b + t * sx_t;
  // running (max, sum of exp(v - max)) per lane. -inf is a class of probability 0; NaN or +inf turns the pair into
  // (+inf, NaN), which every merge below keeps
  T m = -N::inf(), s = 0;
  for (int c = lane; c < C; c += 32) {
    const T v = xr[c];
    if (!(v < N::inf())) {
      m = N::inf();
      s = N::nan();
    } else if (v > m) {
      s = s * N::ex(m - v) + T(1);  // m may be -inf: exp(-inf) = 0
      m = v;
    } else if (v != -N::inf()) {
      s += N::ex(v - m);
    }
  }
  for (int d = 16; d > 0; d >>= 1) {  // merge (m, s) pairs in a fixed order
    const T mo = __shfl_xor_sync(0xffffffffu, m, d);
    const T so = __shfl_xor_sync(0xffffffffu, s, d);
    if (mo > m || (mo == m && lane > (lane ^ d))) {  // the same result on both lanes of the pair
      const T ml = m, sl = s;
      m = mo;
      s = so;
      if (ml != -N::inf()) s += sl * N::ex(ml - mo);
    } else if (mo != -N::inf()) {
      s += so * N::ex(mo - m);
    }
  }
  m = __shfl_sync(0xffffffffu, m, 0);  // every lane uses lane 0's bits
  s = __shfl_sync(0xffffffffu, s, 0);
  const bool finite = m > -N::inf() && m < N::inf() && s == s;
  if (!finite) m = s = N::nan();
  T* ri = rinfo + row * 2;
  if (lane == 0) {
    ri[0] = m;
    ri[1] = s;
  }
  const int L = label_length[b];
  const int* lab = labels + (long long)b * Lmax;
  if (!prob) return;  // budget plans: the chains compute the probabilities themselves
  // label k is live in frame t when some alignment emits it by then (k <= t) and leaves enough frames for the rest
  // (k >= L - Tb + t); otherwise its states are dead in both chains (zero in one, not yet reached in the other)
  const int W = prob_width<T>(Lmax), Tb = logit_length[b], lo = L - Tb + t;
  T* pr = prob + row * W;
  for (int c = lane; c < W; c += 32) {
    const int k = c - 1 - N::pad;
    const bool live = c == 0 || (k >= 0 && k < L && k >= lo && k <= t);
    pr[c] = finite && live ? prob_value(xr[c == 0 ? blank : lab[k]], m, s) : N::nan();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The chains (third generation). A chain is one example in one direction (dir 0 forward, 1 backward; ndir = 2
// with a gradient, 1 for a loss only), chain c = b * ndir + dir. Each thread holds K consecutive chain states in
// registers (a "state block"; K even, so every block starts at a blank), with one binary exponent E per block: a
// state's value is v * 2^E. A chain of at most 32 K states is one warp, and cpb > 1 such chains share a block (warp
// w of block x runs chain x * cpb + w; no block barrier anywhere). A longer chain has a block of its own (cpb = 1,
// blockDim.x threads, one __syncthreads() per frame); beyond blockDim.x * K states each thread runs several tiles
// of state blocks a frame, whose values wait in `work` (global memory) between frames.
// Per frame and state block: the left neighbour's last value (the only state that flows in: the block starts at a
// blank) and its exponent arrive by two shuffles (lane 0: from the previous warp's boundary slot in shared memory,
// written before the previous barrier); the block's new exponent Et puts the larger of its own and the incoming
// maximum near 2^head; the sums of the allowed predecessors are formed in the old units and scaled once by an exact
// power of two built from the exponent field (no ldexp); the frame's probabilities were loaded a frame ahead.
// Flushes: a product below TH (4 x the smallest normal) whose inputs are nonzero is a flush: the state is set to
// exactly 0 (FTZ and IEEE subnormals behave identically) and an upper bound of what was lost (max(|in p|, TH), p
// being -2^ep for a probability marked by the row pass, p < 2^ep) is recorded; so is a block's first or second
// state whose left-neighbour term or own term fell below TH before their sum (the sum may survive without it).
// Nothing else is paid until a flush
// happens: at the first frame with one (a vote at the frame's barrier) the chain switches to a loop that also runs
// the shadow rows (the same recursion on the recorded bounds, with an upper bound of each probability, every
// nonzero-input product rounded up to at least TH, exponents of their own). By linearity the shadow's end mass
// bounds the lost mass's share of P and of every frame's posteriors; when it is at most P * 2^-TOL_BITS (32
// float, 50 double) the results are exact to that, otherwise this direction is recomputed in log space (values
// relative to a lagged row maximum, offsets accumulated in double) with rows in `work`: T more steps.
// Forward chains write the loss; with a gradient, forward rows alpha_t(s) go to arows and backward rows beta_t(s)
// (the sum of the successors, before frame t's probability) to brows, with the exponent of each state block (in
// chain order) in aexp / bexp, and fmt[dir, b] says linear (0) or log (1).
// work (per chain): 4 S_stride values (the log-space rows), then, when tiled, the main and shadow values of every
// tile (2 Spad); wexp (per chain, tiled only): the main and shadow exponents of every state block. Dynamic shared
// memory (multi-warp chains): per frame parity and warp of the chain (tiles included) the boundary slot: the
// warp's last value and exponent, main and shadow.
namespace cyctc_ctc {
template <int V>
struct IntConst {  // an int as a type: the chain's direction, a compile-time constant inside its scaled path
  static constexpr int value = V;
};
// Blocks of K states per thread over S_stride states on nthr threads: tiles, and padded states (ntile nthr K).
__device__ __forceinline__ int chain_tiles(int S, int K, int nthr) { return ((S + K - 1) / K + nthr - 1) / nthr; }
// Values of R a chain keeps in `work`, and ints in `wexp` (the plan allocates the same: _backend.chain_work).
__device__ __forceinline__ long long chain_work(int S_stride, int K, int nthr) {
  const int nt = chain_tiles(S_stride, K, nthr);
  return 4LL * S_stride + (nt > 1 ? 2LL * nt * nthr * K : 0);
}
__device__ __forceinline__ long long chain_wexp(int S_stride, int K, int nthr) {
  const int nt = chain_tiles(S_stride, K, nthr);
  return nt > 1 ? 2LL * nt * nthr : 1;
}
}  // namespace cyctc_ctc

// at most 512 threads a block (384 tiled), so that ptxas may give each up to 128 (168) registers: the loops need
// ~105-140, without spills
template <typename T, int K, bool TILED>
__global__ void __launch_bounds__(TILED ? 384 : 512, 1)
cyctc_chain(const T* __restrict__ x, long long sx_b, long long sx_t, const int* __restrict__ labels, int Lmax,
            const int* __restrict__ label_length, const int* __restrict__ logit_length, int blank,
            int merge_repeated, const T* __restrict__ rinfo, const T* __restrict__ prob, int B, int T_,
            int ndir, int cpb, T* __restrict__ arows, T* __restrict__ brows, T* __restrict__ alo,
            T* __restrict__ blo, int* __restrict__ aexp, int* __restrict__ bexp, int* __restrict__ fmt,
            T* __restrict__ work, int* __restrict__ wexp, int* __restrict__ lmap, int want_grad,
            double* __restrict__ loss, T* __restrict__ ckpt, int* __restrict__ ckpt_e, int ckpt_k, int seg_t0,
            int seg_t1) {
  using namespace cyctc_ctc;
  typedef Num<T> N;
  static_assert(K >= 2 && K % 2 == 0, "state blocks start at a blank");
  // Memory-budget modes (cyctc_chain<T, K, true> only; the plan of _backend.launch_config under memory_limit):
  //  - prob == nullptr: the probabilities are computed here from x and rinfo (prob_value, the row pass's own code),
  //    so no (B, T, prob_width(Lmax)) buffer exists;
  //  - ckpt_k > 0 (gradient, first pass): no rows are stored; the state (values and block exponents) is copied to
  //    checkpoint slot t / k of ckpt / ckpt_e after frame t when k divides t + 1 (forward) or t (backward, t > 0);
  //    a direction that would need the log-space fallback is marked fmt = 2 (the glue recomputes the example
  //    without a budget, or raises MemoryError) instead of running it;
  //  - seg_t1 >= 0 (gradient, second pass, one launch per segment [seg_t0, seg_t1), k frames): each chain starts
  //    from the checkpoint before the segment (or from the start) and stores the segment's rows, rows[t - seg_t0];
  //    no shadow, no loss: the first pass decided.
  const bool recompute = seg_t1 >= 0;
  DYNAMIC_SHARED(T, smem);
  __shared__ T s_wmax[2][32];   // log space: per-warp maxima of the last two rows (multi-warp chains)
  __shared__ T s_endv[8][4];    // per chain slot: the last two states' values, main then shadow
  __shared__ int s_ende[8][4];  // and their exponents
  __shared__ int s_flag[8];     // per chain slot: the end decision
  (void)s_endv;  // used inside the scaled-path lambda only (g++ would call them set but unused)
  (void)s_ende;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slot = cpb > 1 ? warp : 0, nthr = cpb > 1 ? 32 : (int)blockDim.x;
  const int ct = cpb > 1 ? lane : (int)threadIdx.x;  // the thread's index in its chain
  const long long chain = (long long)blockIdx.x * cpb + slot;
  if (chain >= (long long)B * ndir) return;  // whole warps (cpb > 1) or the whole block (cpb == 1)
  const int b = (int)(chain / ndir), dir = (int)(chain % ndir);
  const bool one_warp = nthr == 32;
  const int S_stride = 2 * Lmax + 1;
  const int L = label_length[b], Tb = logit_length[b], S = 2 * L + 1;
  const int* lab = labels + (long long)b * Lmax;

  if (want_grad && dir == 0) {  // class -> states map for cyctc_grad: chains of equal labels, in increasing position
    int* nxt = lmap + (long long)b * 2 * Lmax;
    int* first = nxt + Lmax;
    for (int i = ct; i < L; i += nthr) {
      const int c = lab[i];
      int j = i + 1;
      while (j < L && lab[j] != c) ++j;
      nxt[i] = j < L ? j : -1;
      int k = i - 1;
      while (k >= 0 && lab[k] != c) --k;
      first[i] = k < 0;
    }
  }
  if (Tb < min_frames(lab, L, merge_repeated) || Tb == 0) {  // uniform over the chain
    if (dir == 0 && ct == 0) loss[b] = L == 0 && Tb == 0 ? 0.0 : Num<double>::inf();
    return;
  }
  const int W = prob_width<T>(Lmax);  // a probability row (section 1)
  static_assert(K / 2 <= N::pad, "the probability rows' NaN padding covers half a state block");
  const T* prob_b = prob + (long long)b * T_ * W;
  const T* rinfo_b = rinfo + (long long)b * T_ * 2;
  // TILED: chains of more than 512 K states (the plan launches cyctc_chain<T, K, true> for them)
  const int ntile = TILED ? chain_tiles(S, K, nthr) : 1, ntile_max = TILED ? chain_tiles(S_stride, K, nthr) : 1;
  const int Spad = ntile_max * nthr * K, nwc = nthr / 32, nw = ntile_max * nwc;
  const int nseg = (S_stride + K - 1) / K;  // state blocks of a stored row
  T* wrow = work + chain * chain_work(S_stride, K, nthr);
  T* wmain = wrow + 4 * S_stride;  // tiled only: main then shadow values (Spad each)
  int* wE = wexp + chain * chain_wexp(S_stride, K, nthr);
  T* bv = smem;  // multi-warp: boundary slots [2][nw] main, [2][nw] shadow values, then [2][nw] exponents of each
  int* bE = reinterpret_cast<int*>(smem + 4 * nw);
  // gradient rows: S_row = S_stride + K - 1 values each, after K - 1 leading ones (_backend.row_values), so that a
  // thread writes all K states of its block, those past S into that slack, with no per-state test
  const int S_row = S_stride + K - 1;
  T* store = (dir == 0 ? arows : brows) + (K - 1);
  int* rexp = dir == 0 ? aexp : bexp;
  const int rows_t0 = recompute ? seg_t0 : 0, rows_T = recompute ? seg_t1 - seg_t0 : T_;  // frames the rows hold
  const bool keep_rows = want_grad && (ckpt_k == 0 || recompute);
  if (keep_rows) {  // loss-only and first-pass plans allocate no rows
    store += (long long)b * rows_T * S_row;
    rexp += (long long)b * rows_T * nseg;
  }
  const long long ck_exps = nseg, ck_vals = (long long)nseg * K;  // a checkpoint: the state blocks of S_stride
  const int ck_slots = ckpt_k > 0 ? (T_ + ckpt_k - 1) / ckpt_k : 0;
  T* ck_v = ckpt + chain * ck_slots * ck_vals;
  int* ck_e = ckpt_e + chain * ck_slots * ck_exps;
  // The scaled path, with the direction D a constant (the chain's frames and states are walked in opposite orders):
  // returns true when the chain's results are final, false when this direction must be recomputed in log space.
  auto scaled = [&](auto dir_constant) -> bool {
  constexpr int D = decltype(dir_constant)::value;
#define CYCTC_STATE(r) ((D == 0 ? (r) : S - 1 - (r)))

  // the thread's current tile: chain states r0 .. r0 + K - 1, main values v / exponent E / maximum m, shadow
  // values vs / Es / ms; per label state (k odd, index k / 2) its probability column and skip multiplier
  T v[K], vs[K], skip[K / 2];
  int cls[TILED ? K / 2 : 1];  // from-x probabilities: label state 2h + 1's class
  (void)cls;                   // (the one-tile instantiation has no use for it)
  int E = 0, Es = 0, r0 = 0, col0 = 0;  // label state 2h + 1's probability column: col0 + h (forward), col0 - h
  int nst = 0;  // > 0: the tile's block holds states of the chain (r0 < S) and rows are kept: its K states are stored
  int i_dead = 0;  // the first step at which the whole block is dead (below lo, see load_p)
  int bg = 0;   // the warp's index over the chain's tiles (boundary slots)
  T* bvg = nullptr;    // its boundary slots: bv + bg, bE + bg
  int* bEg = nullptr;
  constexpr int dcol = D == 0 ? 1 : -1;
  T m = 0, ms = 0;
  const T stay = merge_repeated ? T(1) : T(0);  // may a label state repeat itself?
  auto setup = [&](int j) {
    r0 = (j * nthr + ct) * K;
    // label state r0 + 1 + 2h is label r0 / 2 + h (forward) or L - 1 - r0 / 2 - h (backward); a block past S
    // (r0 / 2 > L) reads PAD columns of NaN: those after the labels (forward), or before them (backward)
    const int h0 = r0 / 2 < L ? r0 / 2 : L;
    col0 = D == 0 ? 1 + N::pad + h0 : N::pad + L - h0;
    nst = keep_rows ? S - r0 : 0;
    i_dead = (r0 + K - S + 2 * Tb + 1) >> 1;  // r0 + K <= lo(i) = S - 2 - 2 (Tb - 1 - i)
    bg = j * nwc + ct / 32;
    bvg = bv + bg;
    bEg = bE + bg;
    CYCTC_UNROLL
    for (int h = 0; h < K / 2; ++h) {
      const int r = r0 + 2 * h + 1, s = CYCTC_STATE(r), lp = s >> 1;
      const int lq = D == 0 ? lp - 1 : lp + 1;  // the label two chain states back
      skip[h] = r < S && r >= 3 && (!merge_repeated || lab[lp] != lab[lq]) ? T(1) : T(0);
      if constexpr (TILED) cls[h] = r < S ? lab[lp] : blank;
    }
  };
  auto load_tile = [&](int j) {  // tiled chains: the tile's state from work
    const long long o = (long long)(j * nthr + ct);
    CYCTC_UNROLL
    for (int k = 0; k < K; ++k) {
      v[k] = wmain[o * K + k];
      vs[k] = wmain[Spad + o * K + k];
    }
    E = wE[o];
    Es = wE[ntile_max * nthr + o];
    m = 0;
    ms = 0;
    CYCTC_UNROLL
    for (int k = 0; k < K; ++k) {
      m = v[k] > m ? v[k] : m;
      ms = vs[k] > ms ? vs[k] : ms;
    }
  };
  auto save_tile = [&](int j) {
    const long long o = (long long)(j * nthr + ct);
    CYCTC_UNROLL
    for (int k = 0; k < K; ++k) {
      wmain[o * K + k] = v[k];
      wmain[Spad + o * K + k] = vs[k];
    }
    wE[o] = E;
    wE[ntile_max * nthr + o] = Es;
  };
  auto save_ckpt = [&](int j, int sl) {  // the tile's main state to checkpoint slot sl (blocks past S: none)
    const long long o = (long long)(j * nthr + ct);
    if (o >= nseg) return;
    CYCTC_UNROLL
    for (int k = 0; k < K; ++k) ck_v[sl * ck_vals + o * K + k] = v[k];
    ck_e[sl * ck_exps + o] = E;
  };
  auto load_ckpt = [&](int j, int sl) {
    const long long o = (long long)(j * nthr + ct);
    const bool held = o < nseg;  // blocks past S_stride hold nothing
    m = 0;
    CYCTC_UNROLL
    for (int k = 0; k < K; ++k) {
      v[k] = held ? ck_v[sl * ck_vals + o * K + k] : T(0);
      vs[k] = T(0);
      m = v[k] > m ? v[k] : m;
    }
    E = held ? ck_e[sl * ck_exps + o] : 0;
    Es = 0;
    ms = 0;
  };
  // probabilities of the tile's states at step i: p[k] of state r0 + k.
  // No probability is NaN: a class at -inf, a label state past S, and a dead state: one that cannot reach the
  // chain's end in the frames left (r < lo; it has no weight in P or in any posterior, and dropping it lets the
  // scales follow the states that do). Every product with NaN is NaN, which the recursion's ordered compares read as
  // neither kept (the state becomes 0) nor flushed, with no test of its own. The row pass writes these NaN into the
  // rows (section 1), so the step only loads: label states past S read the rows' NaN padding; a label state dead in
  // this chain is NaN there (a label dead in the other chain's direction is one this chain has not reached yet:
  // its value is 0 with or without NaN); a dead blank, which only feeds itself and the dead label after it, is
  // dropped with its whole block (r0 + K <= lo), and lives on at most K / 2 frames in the block where lo lies.
  // Blank states past S receive nothing (their left neighbours are label states past S). Budget plans, which
  // compute the probabilities here, apply the same rules, so both give the same bits.
  auto load_p = [&](int i, const T* row, T* p) {  // row: the probability row of step i's frame
    const int tt = D == 0 ? i : Tb - 1 - i;
    const bool dead = i >= i_dead;  // the whole block: r0 + K <= lo
    if constexpr (TILED) {
      if (!prob) {  // budget plans: from the logits, as the row pass would have
        const int lo = S - 2 - 2 * (Tb - 1 - i);
        const T* xt = x + b * sx_b + (long long)tt * sx_t;
        const T mt = rinfo_b[2 * tt], st = rinfo_b[2 * tt + 1];
        const T pb = dead ? N::nan() : prob_value(xt[blank], mt, st);
        CYCTC_UNROLL
        for (int h = 0; h < K / 2; ++h) {
          const int r = r0 + 2 * h + 1;
          p[2 * h] = pb;
          p[2 * h + 1] = r < lo || r >= S ? N::nan() : prob_value(xt[cls[h]], mt, st);
        }
        return;
      }
    }
    (void)tt;
    const T pb = dead ? N::nan() : row[0];
    const T* rl = row + col0;
    CYCTC_UNROLL
    for (int h = 0; h < K / 2; ++h) {
      p[2 * h] = pb;
      p[2 * h + 1] = rl[h * dcol];
    }
  };
  const int none = -0x40000000, shift_max = -N::min_exp;  // pow2(e) is exact for -shift_max <= e <= shift_max
  // pow2(-shift_max - 1) is exactly 0 (an exponent field of 0): one clamp, no select
  auto pow2c = [&](int e) -> T {
    e = e < shift_max ? e : shift_max;
    return N::pow2(e > -shift_max - 1 ? e : -shift_max - 1);
  };
  // the left neighbour's last value and exponent (main: w = 0, shadow: w = 1) from the previous frame
  // (ow: a constant, true only for a one-warp chain of the one-tile kernel, whose lane 0 always receives 0)
  auto left_of = [&](int j, int cb, T val, int ex, int w, T* lv, int* lE, bool ow) {
    *lv = __shfl_up_sync(0xffffffffu, val, 1);
    *lE = __shfl_up_sync(0xffffffffu, ex, 1);
    const int g = bg;
    if (lane == 0) {
      if (ow || g == 0) {
        *lv = T(0);
        *lE = 0;
      } else {
        const int o = (2 * w + (cb ^ 1)) * nw - 1;
        *lv = bvg[o];
        *lE = bEg[o];
      }
    }
  };
  auto put_boundary = [&](int j, int cb) {  // multi-warp: the last lane's values for the next warp
    if (lane == 31) {
      const int o = cb * nw;
      bvg[o] = v[K - 1];
      bvg[o + 2 * nw] = vs[K - 1];
      bEg[o] = E;
      bEg[o + 2 * nw] = Es;
    }
  };
  // The new exponent of a block whose maximum is mx (exponent ex) receiving lv (exponent lE), and a third candidate
  // (im, in units 2^iE: the largest value injected, or 0): the largest target less head, never more than
  // shift_max below a nonzero input's exponent (so that its scale factor is a normal power of two)
  auto target = [&](T mx, int ex, T lv, int lE, T im, int iE) -> int {
    // per nonzero input of exponent x = ex + expo(v): max(x - head, ex - shift_max) = ex - shift_max +
    // max(field(v) - head, 0) (expo(v) = field(v) - shift_max); the largest over the inputs, ex when all are 0
    auto cand = [&](T v, int e) -> int {
      const int fv = N::field(v);
      return v > T(0) ? e - shift_max + (fv > N::head ? fv : N::head) - N::head : none;
    };
    int t = cand(mx, ex), l = cand(lv, lE), c = cand(im, iE);
    t = t > l ? t : l;
    t = t > c ? t : c;
    return t == none ? ex : t;
  };
  // the gradient row entry of state r0 and of its block's exponent, from the rows of the step's frame (st, et)
  auto srow_of = [&](T* st) -> T* { return st + CYCTC_STATE(r0); };
  auto erow_of = [&](int* et) -> int* { return et + r0 / K; };
  // One frame (of frame t) of the main rows for the current tile: v <- new values, E <- Et, stored to the gradient
  // rows when asked; lost[k]: the bound of what state k lost (0 where nothing), returns the largest. p: the states'
  // probabilities.
  // returns the largest bound (the shadow's injection), or, with any_only (before the first flush, where only
  // whether there is one matters), the OR of the bounds' bits: nonzero when some state flushed
  auto main_step = [&](int j, int cb, const T* p, T* lost, T* srow, int* erow, bool any_only,
                       bool ow = false) -> typename N::Bits {
    T lv;
    int lE;
    left_of(j, cb, v[K - 1], E, 0, &lv, &lE, ow);
    const int Et = target(m, E, lv, lE, T(0), 0);
    const T f = pow2c(E - Et), g = pow2c(lE - Et);
    T lvg = lv * g;
    const bool lflush = (lv > T(0)) & !(lvg >= N::th());  // the incoming term fell below the range
    if (lflush) lvg = T(0);
    T mx = 0, lmax = 0;
    typename N::Bits lor = 0;
    // the gradient row's entry of state r0 (chain states r0 + k lie at srow + k * dcol); states past S not stored
    CYCTC_UNROLL
    for (int k = K - 1; k >= 0; --k) {  // downwards: v[k - 1], v[k - 2] are still the previous frame's
      T raw, in;
      bool drop = false;  // k < 2: a term of the sum fell below TH and was dropped before the sum
      if (k == 0) {  // blank: itself, and the left block's last (label) state
        raw = v[0] + lv;
        const T o = v[0] * f;
        drop = lflush | ((v[0] > T(0)) & !(o >= N::th()));
        in = (o >= N::th() ? o : T(0)) + lvg;
      } else if (k == 1) {  // label: itself (when it may repeat), the blank before, the label before (left block)
        const T o = stay * v[1] + v[0];
        raw = skip[0] * lv + o;
        const T of = o * f;
        drop = (lflush & (skip[0] > T(0))) | ((o > T(0)) & !(of >= N::th()));
        in = (of >= N::th() ? of : T(0)) + skip[0] * lvg;
      } else if (k & 1) {
        raw = skip[k / 2] * v[k - 2] + (stay * v[k] + v[k - 1]);
        in = raw * f;
      } else {
        raw = v[k] + v[k - 1];
        in = raw * f;
      }
      const T q = in * p[k];
      const bool low = !(q >= N::th());
      const bool fl = flush_test(raw, q) | drop;
      const T ls = fl ? N::mx(N::ab(q), N::th()) : T(0);
      lost[k] = ls;
      if (any_only) lor |= N::bits(ls);
      else lmax = N::mx(lmax, ls);
      const T n = low ? T(0) : q;
      v[k] = n;
      mx = N::mx(mx, n);
      if (nst > 0) srow[k * dcol] = D == 0 ? n : in;  // beta: values below TH read as 0 (Posterior::bv)
    }
    E = Et;
    m = mx;
    if (nst > 0) *erow = Et;
    return any_only ? lor : N::bits(lmax);  // lmax >= 0: its bits order as it does
  };
  // One frame of the shadow rows (after main_step of the same frame, whose bounds lost[] it injects).
  auto shadow_step = [&](int j, int cb, const T* p, const T* lost, T lmax) {
    T lv;
    int lE;
    left_of(j, cb, vs[K - 1], Es, 1, &lv, &lE, false);
    const int Et = target(ms, Es, lv, lE, lmax, E);
    const T f = pow2c(Es - Et), g = pow2c(lE - Et), gi = pow2c(E - Et);
    const T lvg = lv * g;
    T mx = 0;
    CYCTC_UNROLL
    for (int k = K - 1; k >= 0; --k) {
      T raw, in;
      if (k == 0) {
        raw = vs[0] + lv;
        in = vs[0] * f + lvg;
      } else if (k == 1) {
        const T o = stay * vs[1] + vs[0];
        raw = skip[0] * lv + o;
        in = o * f + skip[0] * lvg;
      } else if (k & 1) {
        raw = skip[k / 2] * vs[k - 2] + (stay * vs[k] + vs[k - 1]);
        in = raw * f;
      } else {
        raw = vs[k] + vs[k - 1];
        in = raw * f;
      }
      const T pa = N::ab(p[k]);  // p, or the bound 2^ep of a marked probability
      T n = in * pa;
      if (raw > T(0) && pa > T(0) && !(n >= N::th())) n = N::th();
      if (!(pa > T(0))) n = T(0);
      T li = lost[k] * gi;
      if (lost[k] > T(0) && !(li >= N::th())) li = N::th();
      n += li;
      vs[k] = n;
      mx = mx > n ? mx : n;
    }
    Es = Et;
    ms = mx;
  };

  // the steps this launch runs: all, or (recompute) those of the segment's frames in this chain's direction
  int i_begin = 0, i_end = Tb;
  if (recompute) {
    const int f1 = seg_t1 < Tb ? seg_t1 : Tb;
    i_begin = D == 0 ? seg_t0 : Tb - f1;
    i_end = D == 0 ? f1 : Tb - seg_t0;
    if (i_begin >= i_end) return true;  // the segment lies past this example's frames (uniform)
  }
  // step i_begin - 1: a virtual row with 2^head in chain state 0 (then step 0 gives state 0 and 1 their
  // probabilities), or the checkpoint taken after frame seg_t0 - 1 (forward) / seg_t1 (backward)
  for (int j = 0; j < ntile; ++j) {
    setup(j);
    if (i_begin > 0) {
      if constexpr (TILED) load_ckpt(j, (D == 0 ? seg_t0 : seg_t1) / ckpt_k);
    } else {
      CYCTC_UNROLL
      for (int k = 0; k < K; ++k) v[k] = vs[k] = T(0);
      E = Es = 0;
      if (r0 == 0) {  // 2^head in units of 2^-head: 1
        v[0] = N::pow2(N::head);
        E = -N::head;
      }
      m = v[0];
      ms = 0;
    }
    if (!one_warp) put_boundary(j, (i_begin + 1) & 1);  // what step i_begin reads as the previous boundaries
    if (ntile > 1) save_tile(j);
  }
  {  // a valid frame holding NaN or inf: loss NaN (one vote before the frames, which
     // also orders the boundary slots written above before step 0 reads them)
    int nonfinite = 0;
    for (int t = ct; t < Tb; t += nthr) nonfinite |= !(rinfo_b[2 * t] == rinfo_b[2 * t]);
    nonfinite = one_warp ? __any_sync(0xffffffffu, nonfinite) : __syncthreads_or(nonfinite);
    if (nonfinite) {
      if (D == 0 && ct == 0) loss[b] = Num<double>::nan();
      return true;
    }
  }
  if (ntile == 1) setup(0);
  // the rows of step i's frame: probabilities (prow), gradient rows (st, et), advanced one frame a step
  const long long pstep = D == 0 ? (long long)W : -(long long)W;
  // (without rows, nst == 0: st and et are never dereferenced)
  const long long sstep = D == 0 ? (long long)S_row : -(long long)S_row;
  const long long estep = D == 0 ? (long long)nseg : -(long long)nseg;
  const int t_begin = D == 0 ? i_begin : Tb - 1 - i_begin;
  const T* prow = prob_b + (long long)t_begin * W;
  T* st = store + (long long)(t_begin - rows_t0) * S_row;
  int* et = rexp + (long long)(t_begin - rows_t0) * nseg;
  if (ntile == 1) {  // one tile: the thread's own entries (srow_of, erow_of) advance instead
    st = srow_of(st);
    et = erow_of(et);
  }
  T p[K];  // single-tile chains: this frame's probabilities, loaded during the previous frame
  if (ntile == 1) load_p(i_begin, prow, p);
  int i = i_begin;
  bool active = false;  // the shadow rows run
  // first pass of a budget plan: the state after frame t goes to a checkpoint slot (see the kernel's head)
  auto checkpoint = [&](int j, int t) {
    if constexpr (TILED) {
      if (ckpt_k > 0 && !recompute) {
        if (D == 0 ? (t + 1) % ckpt_k == 0 && t + 1 < Tb : t % ckpt_k == 0 && t > 0)
          save_ckpt(j, (D == 0 ? t + 1 : t) / ckpt_k);
      }
    }
  };
  // Before the first flush. The one-tile kernel has a copy of this loop for one-warp chains (OW: no boundary slots,
  // a warp vote) beside the general one.
  auto before_flush = [&](auto ow_constant) {
  constexpr bool OW = decltype(ow_constant)::value != 0;
  for (; i < i_end && !active; ++i) {
    CYCTC_MARK(1);
    const int t = D == 0 ? i : Tb - 1 - i, cb = i & 1;
    typename N::Bits lor = 0;
    for (int j = 0; j < ntile; ++j) {
      if (ntile > 1) {
        setup(j);
        load_tile(j);
        load_p(i, prow, p);
      }
      // before the first flush the shadow is empty: vs receives this frame's bounds, in the main units
      lor |= main_step(j, cb, p, vs, ntile == 1 ? st : srow_of(st), ntile == 1 ? et : erow_of(et), true, OW);
      Es = E;
      checkpoint(j, t);
      if (!OW && !one_warp) put_boundary(j, cb);
      if (ntile > 1) save_tile(j);
    }
    prow += pstep;
    st += sstep;
    et += estep;
    if (ntile == 1 && i + 1 < i_end) load_p(i + 1, prow, p);  // in flight across the barrier
    active = OW || one_warp ? __any_sync(0xffffffffu, lor != 0) : __syncthreads_or(lor != 0);
    CYCTC_MARK(2);
  }
  };
  if (!TILED && one_warp) before_flush(IntConst<1>());
  else before_flush(IntConst<0>());
  if (ntile == 1) {  // the shadow's maximum: the bounds vs of the frame that flushed (tiles: load_tile finds it)
    ms = 0;
    CYCTC_UNROLL
    for (int k = 0; k < K; ++k) ms = N::mx(ms, vs[k]);
  }
  for (; i < i_end; ++i) {  // after a flush: main and shadow rows
    const int t = D == 0 ? i : Tb - 1 - i, cb = i & 1;
    for (int j = 0; j < ntile; ++j) {
      if (ntile > 1) {
        setup(j);
        load_tile(j);
        load_p(i, prow, p);
      }
      T lost[K];
      const T lm = N::from_bits(main_step(j, cb, p, lost, ntile == 1 ? st : srow_of(st), ntile == 1 ? et : erow_of(et), false));
      shadow_step(j, cb, p, lost, lm);
      checkpoint(j, t);
      if (!one_warp) put_boundary(j, cb);
      if (ntile > 1) save_tile(j);
    }
    prow += pstep;
    st += sstep;
    et += estep;
    if (ntile == 1 && i + 1 < i_end) load_p(i + 1, prow, p);
    if (one_warp) __syncwarp();
    else __syncthreads();
  }
  if (recompute) return true;  // the rows are stored; the first pass decided the rest

  // P (the chain's end mass: its last two states) and the shadow's bound, decided by the chain's thread 0
  {
    auto emit = [&](int rr, int w) {  // the holder of chain state rr writes it to the slot's end record
      if (rr < 0) {  // S == 1: one state; the chain's thread 0 (which holds it) writes a zero record
        if (ct == 0) {
          s_endv[slot][w] = s_endv[slot][2 + w] = T(0);
          s_ende[slot][w] = s_ende[slot][2 + w] = 0;
        }
        return;
      }
      const int blk = rr / K, kk = rr % K;
      if (ntile > 1) {
        if (ct == 0) {  // tiled: every tile waits in work
          s_endv[slot][w] = wmain[(long long)rr];
          s_endv[slot][2 + w] = wmain[Spad + (long long)rr];
          s_ende[slot][w] = wE[blk];
          s_ende[slot][2 + w] = wE[ntile_max * nthr + blk];
        }
      } else if (blk == ct) {
        T a = 0, c = 0;
        CYCTC_UNROLL
        for (int k = 0; k < K; ++k)
          if (k == kk) {
            a = v[k];
            c = vs[k];
          }
        s_endv[slot][w] = a;
        s_endv[slot][2 + w] = c;
        s_ende[slot][w] = E;
        s_ende[slot][2 + w] = Es;
      }
    };
    emit(S - 1, 0);
    emit(S - 2, 1);
    if (one_warp) __syncwarp();
    else __syncthreads();
    if (ct == 0) {
      const int E1 = s_ende[slot][0], E2 = s_ende[slot][1];
      const T v1 = s_endv[slot][0], v2 = s_endv[slot][1];
      int EP = v1 > T(0) ? E1 : E2;
      if (v1 > T(0) && v2 > T(0)) EP = E1 > E2 ? E1 : E2;
      const T P = v1 * pow2c(E1 - EP) + v2 * pow2c(E2 - EP);
      const int L1 = s_ende[slot][2], L2 = s_ende[slot][3];
      const T b1 = s_endv[slot][2], b2 = s_endv[slot][3];
      int EB = b1 > T(0) ? L1 : L2;
      if (b1 > T(0) && b2 > T(0)) EB = L1 > L2 ? L1 : L2;
      const T Bd = b1 * pow2c(L1 - EB) + b2 * pow2c(L2 - EB);
      const bool dead = !(P > T(0)) && !(Bd > T(0));  // no alignment has any probability: loss +inf
      // a term more than shift_max below the other was dropped by pow2c: far inside the bound's factor 2
      const bool exact = P > T(0) && (!(Bd > T(0)) || N::expo(Bd) + 1 + EB <= N::expo(P) - 1 + EP - N::tol_bits);
      if (exact || dead) {
        if (D == 0) {
          double l = Num<double>::inf();
          if (!dead) {  // log of P's mantissa (in [0.5, 1): small, precise) plus its binary exponent
            const int eP = N::expo(P);
            l = -((double)N::lg(P * N::pow2(-eP)) + (double)(EP + eP) * 0.69314718055994530942);
          }
          loss[b] = l > 0.0 ? l : 0.0;  // P <= 1: a rounding error below 0 is reported as 0
        }
        if (want_grad) fmt[dir * B + b] = 0;
      } else if (ckpt_k > 0) {  // a budget plan's first pass keeps no log-space rows: the glue takes it from here
        if (D == 0) loss[b] = Num<double>::nan();
        fmt[dir * B + b] = 2;
      }
      s_flag[slot] = exact || dead || ckpt_k > 0;
    }
    if (one_warp) __syncwarp();
    else __syncthreads();
    return s_flag[slot] != 0;  // uniform over the chain
  }
#undef CYCTC_STATE
  };
  if (dir == 0 ? scaled(IntConst<0>()) : scaled(IntConst<1>())) return;
#define CYCTC_STATE(r) ((dir == 0 ? (r) : S - 1 - (r)))

  // ---- log space (this direction only, when its shadow bound failed) ----
  // Values are logs relative to a lagged row maximum (the maxima accumulated in double, off), each held as an
  // unevaluated pair hi + lo of R values (hi in rows 0-1 of work, lo in rows 2-3): a log value as large as the loss
  // then keeps ~2^-48 of its magnitude in float32. Stored: hi to arows / brows, lo to alo / blo (float32 only:
  // double's hi alone is precise enough).
#define main_row(k) (wrow + (k) * S_stride)
#define shad_row(k) (wrow + (2 + (k)) * S_stride)
#define CYCTC_STAY(r) (merge_repeated || !((r) & 1))
#define CYCTC_LABEL_AT(r) (lab[CYCTC_STATE(r) >> 1])
#define CYCTC_SKIP(r) (((r) & 1) && (r) >= 3 && (!merge_repeated || CYCTC_LABEL_AT(r) != CYCTC_LABEL_AT((r) - 2)))
  const T* xb = x + b * sx_b;
  T* store_lo = (dir == 0 ? alo : blo) + (want_grad && sizeof(T) == 4 ? (long long)b * T_ * S_stride : 0);
  double off = 0.0;
  T prev_max = 0;  // the previous row's maximum (one-warp chains keep it in a register)
  for (int ii = 0; ii < Tb; ++ii) {
    const int t = dir == 0 ? ii : Tb - 1 - ii;
    const T* prev = main_row((ii + 1) & 1);
    const T* prevl = shad_row((ii + 1) & 1);
    T* cur = main_row(ii & 1);
    T* curl = shad_row(ii & 1);
    T sh = 0;
    if (ii > 0) {
      const T mx = one_warp ? prev_max : warp_max(lane < nwc ? s_wmax[(ii + 1) & 1][lane] : -N::inf());
      sh = mx > -N::inf() ? mx : T(0);
      off += (double)sh;
    }
    const T mt = rinfo_b[2 * t], log_s = N::lg(rinfo_b[2 * t + 1]);
    const T* xt = xb + t * sx_t;
    T lmax = -N::inf();
    for (int r = ct; r < S; r += nthr) {
      Pair<T> in;
      if (ii == 0) {
        in = Pair<T>{r < 2 ? T(0) : -N::inf(), T(0)};
      } else {
        in = Pair<T>{CYCTC_STAY(r) ? prev[r] : -N::inf(), CYCTC_STAY(r) ? prevl[r] : T(0)};
        if (r >= 1) in = log_add(in, Pair<T>{prev[r - 1], prevl[r - 1]});
        if (CYCTC_SKIP(r)) in = log_add(in, Pair<T>{prev[r - 2], prevl[r - 2]});
        in = add(in, -sh);
      }
      const int s = CYCTC_STATE(r);
      const T xv = xt[(s & 1) ? lab[s >> 1] : blank];
      const Pair<T> n = add(add(add(in, xv), -mt), -log_s);  // + (x - m) - log s: shift-invariant
      cur[r] = n.h;
      curl[r] = n.l;
      if (want_grad) {
        const Pair<T> w = dir == 0 ? n : in;
        store[(long long)t * S_row + s] = w.h;
        if (sizeof(T) == 4) store_lo[(long long)t * S_stride + s] = w.l;
      }
      lmax = n.h > lmax ? n.h : lmax;
    }
    lmax = warp_max(lmax);
    if (one_warp) {
      prev_max = lmax;
      __syncwarp();
    } else {
      if (lane == 0) s_wmax[ii & 1][warp] = lmax;
      __syncthreads();
    }
  }
  if (ct == 0) {
    const T* last = main_row((Tb - 1) & 1);
    const T* lastl = shad_row((Tb - 1) & 1);
    const Pair<T> lp = S >= 2 ? log_add(Pair<T>{last[S - 1], lastl[S - 1]}, Pair<T>{last[S - 2], lastl[S - 2]})
                              : Pair<T>{last[0], lastl[0]};
    if (dir == 0) {
      const double l = lp.h == -N::inf() ? Num<double>::inf() : -((off + (double)lp.h) + (double)lp.l);
      loss[b] = l > 0.0 ? l : 0.0;
    }
    if (want_grad) fmt[dir * B + b] = 1;
  }
#undef main_row
#undef shad_row
#undef CYCTC_STATE
#undef CYCTC_LABEL_AT
#undef CYCTC_STAY
#undef CYCTC_SKIP
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Gradient, one warp per row r = b * T + t (all B*T rows: padding rows are zeroed); blockDim.x a multiple of 32,
// grid = ceil(B*T / warps per block). No shared memory, no block barrier.
namespace cyctc_ctc {
// Unnormalised posterior weight of extended state s: linear rows (both fmt 0) as mantissa products rescaled by
// 2^(ea + eb - kmax) (kmax the row's largest exponent sum, so nothing meaningful flushes), else exp(u - umax) with
// u = log alpha + log beta.
template <typename R>
struct Posterior {
  const R *a, *b, *alo, *blo;  // alo / blo: the low parts of log-space rows (float only)
  const int *ea, *eb;           // exponents of linear rows' state blocks (kseg states each, in chain order)
  int S, kseg;
  bool lin, a_log, b_log;       // both rows linear / each row in log space
  __device__ __forceinline__ int seg_a(int s) const { return s / kseg; }
  __device__ __forceinline__ int seg_b(int s) const { return (S - 1 - s) / kseg; }
  // beta of state s: a linear row stores the sum of the successors as the chain formed it, which may lie below TH
  // (then it is 0, whether or not the device flushed it: FTZ-independent); a log-space row as it is
  __device__ __forceinline__ R bv(int s) const {
    const R v = b[s];
    return b_log || v >= Num<R>::th() ? v : R(0);
  }
  // log of a linear row's value: log v + (segment exponent - the row's first segment's) ln 2, as a pair
  __device__ __forceinline__ Pair<R> lin_log(R v, int d) const {
    // ln 2 = c1 + c2 + c3, c1 and c2 of 8 significant bits: d * c1 and d * c2 are exact for |d| < 2^16
    const R c1 = R(0.69140625), c2 = R(0.001739501953125), c3 = R(1.428606765330187e-06);
    if (!(v > R(0))) return Pair<R>{-Num<R>::inf(), R(0)};
    const int x = Num<R>::expo(v);  // log of the mantissa (in [0.5, 1): small, precise) + the exponents' multiple
    d += x;
    const Pair<R> u = add(two_sum(Num<R>::lg(v * Num<R>::pow2(-x)), R(d) * c1), R(d) * c2);
    return Pair<R>{u.h, u.l + R(d) * c3};
  }
  int kmax;
  R umax;
  __device__ __forceinline__ void key(int s, int* k, R* m, R* u) const {
    const R va = a[s], vb = bv(s);
    if (lin) {
      if (va > R(0) && vb > R(0)) {
        // stored values are 0 or at least TH (normal): exponent from the bits, mantissa scaled exactly
        const int xa = Num<R>::expo(va), xb = Num<R>::expo(vb);
        const R ma = va * Num<R>::pow2(-xa), mb = vb * Num<R>::pow2(-xb);
        *k = xa + ea[seg_a(s)] + xb + eb[seg_b(s)];
        *m = ma * mb;
      } else {
        *k = -0x40000000;
        *m = 0;
      }
    } else {
      *u = log_pair(s).h;
    }
  }
  // log alpha + log beta as a pair (a linear row's log: log of the value, low part 0; log 0 = -inf)
  __device__ __forceinline__ Pair<R> log_pair(int s) const {
    const bool f = sizeof(R) == 4;
    const Pair<R> la = a_log ? Pair<R>{a[s], f ? alo[s] : R(0)} : lin_log(a[s], ea[seg_a(s)] - ea[0]);
    const Pair<R> lb = b_log ? Pair<R>{b[s], f ? blo[s] : R(0)} : lin_log(bv(s), eb[seg_b(s)] - eb[0]);
    const Pair<R> u = two_sum(la.h, lb.h);
    return Pair<R>{u.h, u.l + (la.l + lb.l)};
  }
  __device__ __forceinline__ R weight(int s) const {
    if (!lin) {
      const Pair<R> u = log_pair(s);
      return u.h > -Num<R>::inf() ? Num<R>::ex((u.h - umax) + u.l) : R(0);
    }
    int k = 0;
    R m = 0, u = 0;
    key(s, &k, &m, &u);
    // m in [0.25, 1), k - kmax <= 0: a weight below the smallest normal is dropped (it is below 2^-126 of the row's)
    return m > R(0) && k - kmax >= Num<R>::min_exp ? m * Num<R>::pow2(k - kmax) : R(0);
  }
};
}  // namespace cyctc_ctc

// (256, 1): with (256) alone ptxas holds the double instantiation to 64 registers and spills
template <typename T>
__global__ void __launch_bounds__(256, 1)
cyctc_grad(const T* __restrict__ x, long long sx_b, long long sx_t, const int* __restrict__ labels, int Lmax,
           const int* __restrict__ label_length, const int* __restrict__ logit_length, int blank,
           const T* __restrict__ rinfo, const T* __restrict__ arows, const T* __restrict__ brows,
           const T* __restrict__ alo, const T* __restrict__ blo, const int* __restrict__ aexp,
           const int* __restrict__ bexp, const int* __restrict__ fmt, int kseg, int B, int T_, int C,
           const int* __restrict__ lmap,
           const double* __restrict__ loss, const double* __restrict__ grad_scale, T* __restrict__ grad, long long sg_b,
           long long sg_t, int seg_t0, int seg_nt) {
  using namespace cyctc_ctc;
  typedef Num<T> N;
  // frames [seg_t0, seg_t0 + seg_nt) of every example (all frames: 0, T_; a budget plan: one segment, whose rows
  // arows / brows hold, srow = b * seg_nt + t - seg_t0)
  const long long srow = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (srow >= (long long)B * seg_nt) return;  // whole warps leave together
  const int b = (int)(srow / seg_nt), t = seg_t0 + (int)(srow % seg_nt);
  if (t >= T_) return;
  const long long row = (long long)b * T_ + t;
  T* g = grad + b * sg_b + t * sg_t;
  const double lb = loss[b];
  if (fmt[b] == 2 || fmt[B + b] == 2) {  // a budget plan's first pass left this example to the glue (no rows)
    for (int c = lane; c < C; c += 32) g[c] = T(0);
    return;
  }
  if (t >= logit_length[b] || lb == Num<double>::inf() || lb != lb) {  // uniform over the warp
    const T fill = lb != lb && t < logit_length[b] ? N::nan() : T(0);  // NaN loss: NaN on every valid frame
    for (int c = lane; c < C; c += 32) g[c] = fill;
    return;
  }
  const int S_stride = 2 * Lmax + 1;
  const int L = label_length[b], S = 2 * L + 1;
  const int* lab = labels + (long long)b * Lmax;
  const int* nxt = lmap + (long long)b * 2 * Lmax;
  const int* first = nxt + Lmax;
  const T* xr = x + b * sx_b + t * sx_t;
  const T m = rinfo[2 * row], inv_s = T(1) / rinfo[2 * row + 1];
  const T scale = (T)grad_scale[b];

  Posterior<T> post;
  const int S_row = S_stride + kseg - 1;  // the chains' row layout: kseg - 1 leading values, rows of S_row
  post.a = arows + (kseg - 1) + srow * S_row;
  post.b = brows + (kseg - 1) + srow * S_row;
  const int nseg = (S_stride + kseg - 1) / kseg;
  post.ea = aexp + srow * nseg;
  post.eb = bexp + srow * nseg;
  post.S = S;
  post.kseg = kseg;
  post.alo = alo + (sizeof(T) == 4 ? srow * S_stride : 0);  // float64 and budget plans allocate no low parts
  post.blo = blo + (sizeof(T) == 4 ? srow * S_stride : 0);
  post.a_log = fmt[b] != 0;
  post.b_log = fmt[B + b] != 0;
  post.lin = !post.a_log && !post.b_log;
  post.kmax = 0;
  post.umax = 0;
  {  // the row's largest key
    int kmax = -0x40000000;
    T umax = -N::inf();
    for (int s = lane; s < S; s += 32) {
      int k = 0;
      T mm = 0, u = 0;
      post.key(s, &k, &mm, &u);
      kmax = k > kmax ? k : kmax;
      umax = u > umax ? u : umax;
    }
    post.kmax = warp_max_int(kmax);
    post.umax = warp_max(umax);
  }
  T part = 0, blank_part = 0;
  for (int s = lane; s < S; s += 32) {
    const T w = post.weight(s);
    part += w;
    if (!(s & 1)) blank_part += w;
  }
  const T inv_z = T(1) / warp_sum(part);
  blank_part = warp_sum(blank_part);

  for (int c = lane; c < C; c += 32) g[c] = scale * (N::ex(xr[c] - m) * inv_s);
  __syncwarp();  // the softmax writes above happen before the corrections below
  if (lane == 0) g[blank] = scale * (N::ex(xr[blank] - m) * inv_s - blank_part * inv_z);
  // label classes: the lane of a label's first occurrence sums the chain of its equal labels, in label order
  for (int i = lane; i < L; i += 32) {
    if (!first[i]) continue;
    T occ = 0;
    for (int j = i; j >= 0; j = nxt[j]) occ += post.weight(2 * j + 1);
    const int c = lab[i];
    g[c] = scale * (N::ex(xr[c] - m) * inv_s - occ * inv_z);
  }
}
