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
//                      (prob, (B, T, Lmax + 1): [0] blank, [1 + k] label k). A class of nonzero probability whose p
//                      falls below TH (4 x the smallest normal, exp flushed to 0 under -ftz included) is stored as
//                      a negative marker ep (an integer, p < 2^ep), so that every product the recursion forms with
//                      it is a detected flush (below). A row holding NaN or +inf, or only -inf, is marked
//                      non-finite (m = NaN).
//   2. cyctc_chain<T>  grid (B, 2): block (b, 0) runs the forward chain of example b, block (b, 1) the backward chain,
//                      concurrently, each with up to 1024 threads over the states (tiles beyond that), one
//                      __syncthreads() per frame: T barrier steps per block. The backward chain is the forward
//                      chain run on the reversed frames and the reversed extended label, so one code path serves
//                      both. Scaled linear space: each step reads the previous row, scales it by an exact power of
//                      two (2^-e, e the binary exponent of the previous row's maximum, from per-warp maxima written
//                      before the barrier: no second barrier), sums the allowed predecessors and multiplies by the
//                      frame's probability from the row pass, loaded before the previous barrier (the first 4 tiles
//                      of states; no transcendental in the chain). The integer
//                      exponents are carried per block.
//                      Flushes: a product with nonzero inputs whose result is below TH, or any product with a marked
//                      probability, is a flush; its state is set to exactly 0 (so FTZ and IEEE subnormals behave
//                      identically) and an upper bound of what was lost (2^(exponent of the sum + exponent of p),
//                      from the exponents alone) is injected into a shadow row, which runs the same recursion with
//                      its own exponent, rounding every nonzero-input product up to at least TH: an upper bound of
//                      the lost mass. By linearity, the shadow's end mass bounds sum_s lost_t(s) * other_t(s) at every
//                      frame t (other = the opposite direction's exact variables), so when it is at most
//                      P * 2^-TOL_BITS (32 float, 50 double), both the loss and every frame's posteriors are exact
//                      to that; otherwise this direction (only) is recomputed in log space (values relative to a
//                      lagged row maximum, offsets accumulated in double): T more barrier steps for that example.
//                      Forward blocks write the loss; with a gradient, forward rows alpha_t(s) go to arows and
//                      backward rows beta_t(s) (the sum of the successors, before frame t's probability) to brows,
//                      each in its own unknown per-row scale, and fmt[dir, b] says linear (0) or log (1).
//   3. cyctc_grad<T>   one warp per (b, t) row: gamma_t(s) = alpha beta / sum_s alpha beta (normalised per frame,
//                      so the rows' scales cancel), grad = grad_scale[b] * (exp(x - m) / s - occupancy). Occupancy
//                      of a class is a fixed-order sum over the states that carry it (class -> states map lmap,
//                      built by the forward blocks). No atomics: identical bits on every call. Rows t >=
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
  static constexpr int tol_bits = 32;
  static constexpr int head = 120;
  static constexpr int min_exp = -126;  // pow2's smallest argument  // rows are scaled so that their maximum lies in [2^119, 2^120)
  // binary exponent e of v > 0 (v = f 2^e, f in [0.5, 1)); 0 for v == 0. v is never subnormal here.
  static __device__ __forceinline__ int expo(float v) { return v > 0.f ? ((__float_as_int(v) >> 23) & 0xff) - 126 : 0; }
  static __device__ __forceinline__ float pow2(int e) { return __int_as_float((e + 127) << 23); }  // |e| <= 126
  static __device__ __forceinline__ float ldx(float v, int e) { return ldexpf(v, e); }
  static __device__ __forceinline__ float ex(float v) { return expf(v); }
  static __device__ __forceinline__ float lg(float v) { return logf(v); }
  static __device__ __forceinline__ float lg1p(float v) { return log1pf(v); }
};
template <> struct Num<double> {
  static __device__ __forceinline__ double inf() { return __longlong_as_double(0x7ff0000000000000LL); }
  static __device__ __forceinline__ double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
  static __device__ __forceinline__ double th() { return __longlong_as_double(3LL << 52); }    // 2^-1020
  static constexpr int tol_bits = 50;
  static constexpr int head = 1000;
  static constexpr int min_exp = -1022;
  static __device__ __forceinline__ int expo(double v) {
    return v > 0.0 ? (int)((__double_as_longlong(v) >> 52) & 0x7ff) - 1022 : 0;
  }
  static __device__ __forceinline__ double pow2(int e) { return __longlong_as_double((long long)(e + 1023) << 52); }
  static __device__ __forceinline__ double ldx(double v, int e) { return ldexp(v, e); }
  static __device__ __forceinline__ double ex(double v) { return exp(v); }
  static __device__ __forceinline__ double lg(double v) { return log(v); }
  static __device__ __forceinline__ double lg1p(double v) { return log1p(v); }
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

// Values of R a chain block keeps (shared memory, or `work`): four rows, then per 32-state segment the maxima and
// exponents (int) of two main and two shadow rows.
__device__ __forceinline__ int chain_work(int S_stride) { return 4 * S_stride + 8 * ((S_stride + 31) / 32); }

// Smallest number of frames an alignment of the example's labels needs.
__device__ __forceinline__ int min_frames(const int* lab, int L, int merge_repeated) {
  int n = L;
  if (merge_repeated)
    for (int k = 1; k < L; ++k) n += lab[k] == lab[k - 1];
  return n;
}

}  // namespace cyctc_ctc

// ---------------------------------------------------------------------------------------------------------------
// 1. Rows. blockDim.x a multiple of 32; one warp per row r = b * T + t; grid = ceil(B*T / warps). rinfo (B, T, 2):
// m and s; prob (B, T, Lmax + 1). Rows t >= logit_length[b] are left untouched (never read).
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
  T* pr = prob + row * (Lmax + 1);
  for (int k = lane; k <= L; k += 32) {
    const T v = xr[k == 0 ? blank : lab[k - 1]];
    T p = N::ex(v - m) / s;  // (x - m) first: shift-invariant at any magnitude
    if (v > -N::inf() && !(p >= N::th())) {  // nonzero probability below the range: marked by a bound 2^ep, ep < 0
      const T ep = ceil(((v - m) - N::lg(s)) * T(1.4426950408889634)) + T(1);
      p = ep < T(-1) ? (ep > T(-1e9) ? ep : T(-1e9)) : T(-1);
    }
    pr[k] = finite ? p : N::nan();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The chains. grid (B, ndir): ndir = 2 with a gradient (forward and backward), 1 for a loss only. Block
// blockDim.x (a multiple of 32, <= 1024) threads over the states of one example. Shared (or, when use_shared == 0,
// global `work`: 4 * S_stride values of R per block): two main rows and two shadow rows.
// arows / brows: (B, T_, S_stride) R (gradient only); fmt: (2, B) int; lmap: (B, 2, Lmax) int: [0] next position
// with the same label or -1, [1] 1 at a label's first occurrence; loss: (B,) double, -log p(labels | x).
// threads per chain block: 1024 for float, 512 for double (the register file holds 64 per thread at 1024); the
// minimum of 1 block per multiprocessor keeps ptxas from capping the double instantiation at 64 registers (spills)
template <typename T>
__global__ void __launch_bounds__(sizeof(T) == 4 ? 1024 : 512, 1)
cyctc_chain(const T* __restrict__ x, long long sx_b, long long sx_t, const int* __restrict__ labels, int Lmax,
            const int* __restrict__ label_length, const int* __restrict__ logit_length, int blank,
            int merge_repeated, const T* __restrict__ rinfo, const T* __restrict__ prob, int T_,
            T* __restrict__ arows, T* __restrict__ brows, T* __restrict__ alo, T* __restrict__ blo,
            int* __restrict__ aexp, int* __restrict__ bexp, int* __restrict__ fmt, T* __restrict__ work,
            int use_shared, int* __restrict__ lmap, int want_grad, double* __restrict__ loss) {
  using namespace cyctc_ctc;
  typedef Num<T> N;
  DYNAMIC_SHARED(T, smem);
  __shared__ T s_wmax[2][32];  // per-warp maxima of the last two rows (log space)
  // per-warp largest (segment exponent + exponent of the segment's maximum) of the last two main / shadow rows
  __shared__ int s_wexp[2][32], s_wlexp[2][32];
  const int b = blockIdx.x, dir = blockIdx.y, B = gridDim.x;
  const int S_stride = 2 * Lmax + 1;
  const int L = label_length[b], Tb = logit_length[b], S = 2 * L + 1;
  const int* lab = labels + (long long)b * Lmax;
  const int tid = threadIdx.x, nthr = blockDim.x, warp = tid / 32, nwarps = (nthr + 31) / 32;
  T* rows = use_shared ? smem : work + ((long long)dir * B + b) * chain_work(S_stride);
  // main rows 0 and 1, then shadow rows 0 and 1 (no arrays of pointers: they would live in local memory)
#define main_row(k) (rows + (k) * S_stride)
#define shad_row(k) (rows + (2 + (k)) * S_stride)

  if (want_grad && dir == 0) {  // class -> states map for cyctc_grad: chains of equal labels, in increasing position
    int* nxt = lmap + (long long)b * 2 * Lmax;
    int* first = nxt + Lmax;
    for (int i = tid; i < L; i += nthr) {
      const int c = lab[i];
      int j = i + 1;
      while (j < L && lab[j] != c) ++j;
      nxt[i] = j < L ? j : -1;
      int k = i - 1;
      while (k >= 0 && lab[k] != c) --k;
      first[i] = k < 0;
    }
  }
  if (Tb < min_frames(lab, L, merge_repeated) || Tb == 0) {  // uniform over the block
    if (dir == 0 && tid == 0) loss[b] = L == 0 && Tb == 0 ? 0.0 : Num<double>::inf();
    return;
  }
  // Frame of step i, and the probability row of that frame. The backward chain walks the frames downwards and the
  // states in reverse order (state r of the chain is extended state S - 1 - r), i.e. it is the forward chain of the
  // reversed label: its value at (t, r) is p_t(s) beta_t(s), beta_t(s) the sum over the successors of s at t + 1.
  const T* prob_b = prob + (long long)b * T_ * (Lmax + 1);
  const T* rinfo_b = rinfo + (long long)b * T_ * 2;
  T* store = dir == 0 ? arows : brows;
  if (want_grad) store += (long long)b * T_ * S_stride;  // loss-only plans allocate no rows
  const int ntile = (S + nthr - 1) / nthr;
  // label index k (0: blank) and transitions of chain state r
#define CYCTC_STATE(r) ((dir == 0 ? (r) : S - 1 - (r)))
#define CYCTC_KIDX(r) (((r) & 1) ? 1 + (CYCTC_STATE(r) >> 1) : 0)
#define CYCTC_LABEL_AT(r) (lab[CYCTC_STATE(r) >> 1])
  // may chain state r repeat itself / be entered from r - 2?
#define CYCTC_STAY(r) (merge_repeated || !((r) & 1))
#define CYCTC_SKIP(r) (((r) & 1) && (r) >= 3 && (!merge_repeated || CYCTC_LABEL_AT(r) != CYCTC_LABEL_AT((r) - 2)))
#define CYCTC_PRE 1  // tiles whose probabilities are loaded a step ahead, in registers

  // ---- scaled linear space ----
  // Each segment of 32 chain states (g = r / 32: the states of one warp in one tile) has its own binary exponent: a
  // row's values are v * 2^E_g, each segment's maximum kept near 2^head (not 1), so that a segment's states have the
  // whole range down to TH (2^-244 of its maximum in float) and the row as a whole any range (alpha rows of long
  // inputs span more than float32's range; a segment spans far less). The shadow row has segments of its own.
  // Segment maxima and exponents of the last two rows live after the four rows (exponents as int).
  const int nseg = (S_stride + 31) / 32;
  T* segmax = rows + 4 * S_stride;                                     // [2][nseg]
  int* segE = reinterpret_cast<int*>(rows + 4 * S_stride + 2 * nseg);  // [2][nseg]
  T* lsegmax = rows + 4 * S_stride + 4 * nseg;                         // shadow: [2][nseg]
  int* lsegE = reinterpret_cast<int*>(rows + 4 * S_stride + 6 * nseg);
  int* rexp = dir == 0 ? aexp : bexp;  // (B, T_, nseg): segment exponents of the stored rows (gradient only)
  if (want_grad) rexp += (long long)b * T_ * nseg;
  const int lane = tid % 32;
  int Emax = -N::head;     // the previous row's largest segment exponent plus its maximum's (uniform)
  int nonfinite = 0;       // a valid frame holds NaN or inf
  for (int t = tid; t < Tb; t += nthr) nonfinite |= !(rinfo_b[2 * t] == rinfo_b[2 * t]);
  bool hopeless = false;  // the lost mass already rivals the row: go to log space now (a uniform decision)
  // probability of chain state r at step ii; 0 for a state that cannot reach the chain's end in the frames left
  // (at most two states a frame): it has no weight in P or in any posterior, and dropping it exactly lets the
  // scales follow the states that matter
  auto prob_of = [&](int ii, int r) -> T {
    const int tt = dir == 0 ? ii : Tb - 1 - ii;
    return r < S && r + 2 * (Tb - 1 - ii) >= S - 2 ? prob_b[(long long)tt * (Lmax + 1) + CYCTC_KIDX(r)] : T(0);
  };
  T p_next[CYCTC_PRE];
  CYCTC_UNROLL
  for (int j = 0; j < CYCTC_PRE; ++j) p_next[j] = prob_of(0, tid + j * nthr);
  const int none = -0x40000000;  // "no exponent": an empty segment
  for (int i = 0; i < Tb; ++i) {
    CYCTC_MARK(1);
    const int t = dir == 0 ? i : Tb - 1 - i;
    const int pb = (i + 1) & 1, cb = i & 1;  // buffers of the previous and current rows
    const T* prev = main_row(pb);
    const T* prevl = shad_row(pb);
    T* cur = main_row(cb);
    T* curl = shad_row(cb);
    if (i > 0) {  // from the previous rows' per-warp exponents (written before the barrier that ended step i - 1)
      Emax = warp_max_int(lane < nwarps ? s_wexp[pb][lane] : none);
      const int Elmax = warp_max_int(lane < nwarps ? s_wlexp[pb][lane] : none);
      if (Elmax != none && Elmax > Emax - N::tol_bits / 2) {
        hopeless = true;
        break;
      }
    }
    int lexp = none, lexpl = none;
    // one tile of states (a whole warp: every lane calls, lanes past S with r >= S); pr: the state's probability
    auto step = [&](int j, T pr) {
      const int r = tid + j * nthr, g = r / 32;
      const bool valid = r < S;
      T in = 0, inl = 0, inl_raw = 0;
      int Eg_new = -N::head, Lg_new = -N::head - 64;
      bool scale_flush = false;
      if (i > 0 && g < nseg) {
        // the segment's new exponent: from its own maximum, or from the left neighbour's last two states (which
        // flow in), the larger; an empty pair keeps the old one
        const int Eg = segE[pb * nseg + g];
        const T mg = segmax[pb * nseg + g];
        const int Tg = mg > T(0) ? Eg + N::expo(mg) - N::head : none;
        int Eg1 = Eg, Tg1 = none;
        if (g > 0) {  // what flows in from the left: the left segment's last two states
          Eg1 = segE[pb * nseg + g - 1];
          const T a1 = prev[32 * g - 1], a2 = prev[32 * g - 2], mg1 = a1 > a2 ? a1 : a2;
          Tg1 = mg1 > T(0) ? Eg1 + N::expo(mg1) - N::head : none;
        }
        Eg_new = Tg > Tg1 ? Tg : Tg1;
        const bool live = Eg_new != none;  // the main segment has (or receives) mass
        if (!live) Eg_new = Eg;
        // the shadow segment likewise, its maximum scaled to [0.5, 1); an empty one, or one fallen more than 2^96
        // below a live main segment's units (an injection would leave the range), is rebased to 2^-64 of them
        // (values this pushes below TH are rounded up to TH below: it stays an upper bound). Where the main
        // segment is empty nothing is injected: the shadow follows its own maximum.
        const int Lg = lsegE[pb * nseg + g];
        const T ml = lsegmax[pb * nseg + g];
        const int TLg = ml > T(0) ? Lg + N::expo(ml) : none;
        int Lg1 = Lg, TLg1 = none;
        if (g > 0) {
          Lg1 = lsegE[pb * nseg + g - 1];
          const T a1 = prevl[32 * g - 1], a2 = prevl[32 * g - 2], ml1 = a1 > a2 ? a1 : a2;
          TLg1 = ml1 > T(0) ? Lg1 + N::expo(ml1) : none;
        }
        Lg_new = TLg > TLg1 ? TLg : TLg1;
        if (Lg_new == none || (live && Lg_new < Eg_new - 96)) Lg_new = Eg_new - 64;
        if (valid) {
          T own = CYCTC_STAY(r) ? prev[r] : T(0), left = 0;
          T ownl = CYCTC_STAY(r) ? prevl[r] : T(0), leftl = 0;
          if (r >= 1) {
            const bool same = (r - 1) / 32 == g;
            (same ? own : left) += prev[r - 1];
            (same ? ownl : leftl) += prevl[r - 1];
          }
          if (CYCTC_SKIP(r)) {
            const bool same = (r - 2) / 32 == g;
            (same ? own : left) += prev[r - 2];
            (same ? ownl : leftl) += prevl[r - 2];
          }
          const T so = N::ldx(own, Eg - Eg_new), sl = left > T(0) ? N::ldx(left, Eg1 - Eg_new) : T(0);
          scale_flush = (own > T(0) && !(so >= N::th())) || (left > T(0) && !(sl >= N::th()));
          in = (so >= N::th() ? so : T(0)) + (sl >= N::th() ? sl : T(0));
          inl_raw = ownl + leftl;
          inl = N::ldx(ownl, Lg - Lg_new) + (leftl > T(0) ? N::ldx(leftl, Lg1 - Lg_new) : T(0));
        }
      } else {
        in = r < 2 ? N::pow2(N::head) : T(0);
      }
      const bool marked = pr < T(0), nonzero = pr != T(0);  // marked: p < 2^pr, below TH
      const int ep = marked ? (int)pr : N::expo(pr);
      const T p = marked ? T(0) : pr;
      T n = in * p;
      bool flush = false;
      if (!(n >= N::th())) {
        flush = in > T(0) && nonzero;
        n = 0;
      }
      // shadow: the same step with an upper bound of p, every nonzero-input product at least TH
      T nl = inl * (marked ? N::ldx(T(1), ep) : p);
      if (inl_raw > T(0) && nonzero && !(nl >= N::th())) nl = N::th();
      if (!nonzero) nl = 0;
      // a lost product is below 2^(expo(in) + ep) of the segment's units; an input lost in rescaling below TH
      // (times p < 2^ep); in the shadow's units, and at least TH there
      const int dE = Eg_new - Lg_new;
      if (flush) {
        const T lost = N::ldx(T(1), N::expo(in) + ep + dE);
        nl += lost >= N::th() ? lost : N::th();
      }
      if (scale_flush && nonzero) {
        const T lost = N::ldx(N::th(), ep + dE);
        nl += lost >= N::th() ? lost : N::th();
      }
      if (valid) {
        cur[r] = n;
        curl[r] = nl;
        if (want_grad) store[(long long)t * S_stride + CYCTC_STATE(r)] = dir == 0 ? n : in;
      }
      const T m = warp_max_nonneg(n), mlg = warp_max_nonneg(nl);  // the segment's maxima (the warp is the segment)
      if (m > T(0)) lexp = lexp > Eg_new + N::expo(m) ? lexp : Eg_new + N::expo(m);
      if (mlg > T(0)) lexpl = lexpl > Lg_new + N::expo(mlg) ? lexpl : Lg_new + N::expo(mlg);
      if (lane == 0 && g < nseg) {
        segmax[cb * nseg + g] = m;
        segE[cb * nseg + g] = Eg_new;
        lsegmax[cb * nseg + g] = mlg;
        lsegE[cb * nseg + g] = Lg_new;
        if (want_grad) rexp[(long long)t * nseg + g] = Eg_new;  // g in chain order
      }
    };
    CYCTC_UNROLL
    for (int j = 0; j < CYCTC_PRE; ++j)
      if (j < ntile) step(j, p_next[j]);
    for (int j = CYCTC_PRE; j < ntile; ++j) step(j, prob_of(i, tid + j * nthr));
    // the next frame's probabilities of the first tiles: loads in flight across the barrier
    CYCTC_UNROLL
    for (int j = 0; j < CYCTC_PRE; ++j) p_next[j] = i + 1 < Tb ? prob_of(i + 1, tid + j * nthr) : T(0);
    lexp = warp_max_int(lexp);
    lexpl = warp_max_int(lexpl);
    if (lane == 0) {
      s_wexp[cb][warp] = lexp;
      s_wlexp[cb][warp] = lexpl;
    }
    if (i == 0) {
      if (__syncthreads_or(nonfinite)) {  // a valid frame holds NaN or inf: loss NaN (uniform)
        if (dir == 0 && tid == 0) loss[b] = Num<double>::nan();
        return;
      }
    } else {
      __syncthreads();
    }
    CYCTC_MARK(2);
  }
  // P (the chain's end mass) and the shadow's bound, read by every thread from the last rows: a uniform decision
  if (!hopeless) {
    const int lb = (Tb - 1) & 1;
    const T* last = main_row(lb);
    const T* lastl = shad_row(lb);
    // P = v1 2^E1 + v2 2^E2 (the last two chain states, maybe in two segments), as P 2^EP
    const int g1 = (S - 1) / 32, g2 = S >= 2 ? (S - 2) / 32 : g1;
    const int E1 = segE[lb * nseg + g1], E2 = segE[lb * nseg + g2];
    const T v1 = last[S - 1], v2 = S >= 2 ? last[S - 2] : T(0);
    const int EP = E1 > E2 ? E1 : E2;
    const T P = N::ldx(v1, E1 - EP) + N::ldx(v2, E2 - EP);
    const int L1 = lsegE[lb * nseg + g1], L2 = lsegE[lb * nseg + g2];
    const int EB = L1 > L2 ? L1 : L2;
    const T Bd = N::ldx(lastl[S - 1], L1 - EB) + (S >= 2 ? N::ldx(lastl[S - 2], L2 - EB) : T(0));
    const bool dead = !(P > T(0)) && !(Bd > T(0));  // no alignment has any probability: loss +inf
    // Bd may be rounded down by ldx: at most one ulp of each term, far inside the bound's factor 2
    const bool exact = P > T(0) && (!(Bd > T(0)) || N::expo(Bd) + 1 + EB <= N::expo(P) - 1 + EP - N::tol_bits);
    if (exact || dead) {
      if (dir == 0 && tid == 0) {
        double l = Num<double>::inf();
        if (!dead) {  // log of P's mantissa (in [0.5, 1): small, precise) plus its binary exponent
          const int eP = N::expo(P);
          l = -((double)N::lg(P * N::pow2(-eP)) + (double)(EP + eP) * 0.69314718055994530942);
        }
        loss[b] = l > 0.0 ? l : 0.0;  // P <= 1: a rounding error below 0 is reported as 0
      }
      if (want_grad && tid == 0) fmt[dir * B + b] = 0;
      return;
    }
  }
  __syncthreads();  // everyone has read the last rows: they are reused below

  // ---- log space (this direction only, when its shadow bound failed) ----
  // Values are logs relative to a lagged row maximum (the maxima accumulated in double, off), each held as an
  // unevaluated pair hi + lo of R values (hi in the main rows, lo in the shadow rows): a log value as large as the
  // loss then keeps ~2^-48 of its magnitude in float32. Stored: hi to arows / brows, lo to alo / blo (float32 only:
  // double's hi alone is precise enough).
  const T* xb = x + b * sx_b;
  T* store_lo = (dir == 0 ? alo : blo) + (want_grad && sizeof(T) == 4 ? (long long)b * T_ * S_stride : 0);
  double off = 0.0;
  for (int i = 0; i < Tb; ++i) {
    const int t = dir == 0 ? i : Tb - 1 - i;
    const T* prev = main_row((i + 1) & 1);
    const T* prevl = shad_row((i + 1) & 1);
    T* cur = main_row(i & 1);
    T* curl = shad_row(i & 1);
    T sh = 0;
    if (i > 0) {
      const T mx = warp_max(lane < nwarps ? s_wmax[(i + 1) & 1][lane] : -N::inf());
      sh = mx > -N::inf() ? mx : T(0);
      off += (double)sh;
    }
    const T mt = rinfo_b[2 * t], log_s = N::lg(rinfo_b[2 * t + 1]);
    const T* xt = xb + t * sx_t;
    T lmax = -N::inf();
    for (int j = 0; j < ntile; ++j) {
      const int r = tid + j * nthr;
      if (r >= S) break;
      Pair<T> in;
      if (i == 0) {
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
        const Pair<T> v = dir == 0 ? n : in;
        store[(long long)t * S_stride + s] = v.h;
        if (sizeof(T) == 4) store_lo[(long long)t * S_stride + s] = v.l;
      }
      lmax = n.h > lmax ? n.h : lmax;
    }
    lmax = warp_max(lmax);
    if (tid % 32 == 0) s_wmax[i & 1][warp] = lmax;
    __syncthreads();
  }
  if (tid == 0) {
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
#undef CYCTC_KIDX
#undef CYCTC_LABEL_AT
#undef CYCTC_STAY
#undef CYCTC_SKIP
#undef CYCTC_PRE
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
  const int *ea, *eb;           // segment exponents of linear rows (segments of 32 states in chain order)
  int S;
  bool lin, a_log, b_log;       // both rows linear / each row in log space
  __device__ __forceinline__ int seg_a(int s) const { return s / 32; }
  __device__ __forceinline__ int seg_b(int s) const { return (S - 1 - s) / 32; }
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
    const R va = a[s], vb = b[s];
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
    const Pair<R> lb = b_log ? Pair<R>{b[s], f ? blo[s] : R(0)} : lin_log(b[s], eb[seg_b(s)] - eb[0]);
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
           const int* __restrict__ bexp, const int* __restrict__ fmt, int B, int T_, int C, const int* __restrict__ lmap,
           const double* __restrict__ loss, const double* __restrict__ grad_scale, T* __restrict__ grad, long long sg_b,
           long long sg_t) {
  using namespace cyctc_ctc;
  typedef Num<T> N;
  const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (long long)B * T_) return;  // whole warps leave together
  const int b = (int)(row / T_), t = (int)(row % T_);
  T* g = grad + b * sg_b + t * sg_t;
  const double lb = loss[b];
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
  post.a = arows + row * S_stride;
  post.b = brows + row * S_stride;
  const int nseg = (S_stride + 31) / 32;
  post.ea = aexp + row * nseg;
  post.eb = bexp + row * nseg;
  post.S = S;
  post.alo = alo + (sizeof(T) == 4 ? row * S_stride : 0);  // float64 plans allocate no low parts
  post.blo = blo + (sizeof(T) == 4 ? row * S_stride : 0);
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
