/* Internal helpers of the CTC kernel shared by ctc.c and the dtype instantiations in ctc_impl.h: constants, the
 * work-space layout, short vectors, exponentials, the class map and the log-space path's numbers. The state rows
 * (block exponents, the recursion steps, lost mass, the dots of two rows) are in ctc_rows.h.
 *
 * Work space of one sequence (doubles):
 *   [skip weights: L + 1]  skipw[k] = 1 when label state k may be entered from label state k - 1 (skipping the
 *                          blank between them), else 0; skipw[L] = 0
 *   [class map: L + 1]     2L + 2 int32: nd, then dist[0..nd) the distinct classes the sequence needs (dist[0] the
 *                          blank), then map[k] in [1, nd): where label k's class sits in dist. A frame's
 *                          probabilities are exponentiated once per distinct class, not once per label (speech
 *                          labels of a 29-letter alphabet repeat letters: 601 labels need at most 29 exps), and
 *                          the gradient rows touch each class once. Sequences with more than CYCTC_DEDUP_MAX
 *                          distinct classes keep the identity map (dist = blank, labels; stored as -nd, since
 *                          dist may then repeat a class).
 *   loss only:  [forward scratch] [backward scratch], each: 2 rows, 2 lost-mass rows, a row of marks and a row of
 *               recomputed values (the rare path of ctc_rows.h), label probabilities P (blank, then labels),
 *               temporaries q and u, and two arrays of one double per block (the last row and lost-mass row of
 *               each half must survive until the meeting)
 *   gradient:   [rows: (T + 1) rows]; the scratch then comes from the thread running the task (per-thread
 *               buffers of cyctc_thread_scratch_size(Lmax) doubles), as it lives only within one call; a task
 *               that flushed a product keeps its last lost-mass row in a row of its own (malloc) until the meeting.
 *               Where the driver gives it room (q->ecache, cyctc_ecache_size doubles), stage 1 also keeps every
 *               frame's distinct-class probabilities, and stage 2 reads them back instead of computing them again.
 *               Stage 1 stores alpha[t] in row t (t < M) and
 *                          beta[t] in row t + 1 (t >= M - 1); stage 2 turns each frame's pair into its gradient
 *                          row (deduplicated class maps: the rows stay as they are), or overwrites them with gamma
 *                          (more than CYCTC_DEDUP_MAX classes, and the log-space path), the state posteriors of
 *                          frame t then in row row_index(t, M) = t + (t >= M - 1), without exponents.
 */
#ifndef CYCTC_CTC_COMMON_H
#define CYCTC_CTC_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ctc.h"

#define CYCTC_LN2 0.69314718055994530942
#define CYCTC_PROB_FLOOR 8.607837561916492e-283 /* 2^-937 */  /* ~exp(-650): a needed class less probable than this: use log space */
#define CYCTC_CONSISTENCY_TOL 1e-10 /* |log mass of a frame - log P| above this: use log space */
#define CYCTC_LOST_REL_LOG2 (-50)          /* lost mass above P * 2^-50 sends the sequence to log space */

/* Hot functions are compiled twice on x86-64 with GCC (AVX2+FMA and baseline), picked at load time. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(CYCTC_NO_CLONES) &&              \
    !defined(__SANITIZE_ADDRESS__)
#define CYCTC_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CYCTC_HOT
#endif
/* fused multiply-adds where the clone has them (the softmax's exponentials, whose float results need no
 * bit-for-bit agreement with anything but themselves) */
#if defined(__GNUC__) && !defined(__clang__)
#define CYCTC_CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CYCTC_CONTRACT
#endif
#if defined(__GNUC__)
#define CYCTC_PREFETCH(p) __builtin_prefetch((p))
#define CYCTC_NOINLINE __attribute__((noinline))
#else
#define CYCTC_PREFETCH(p) ((void)0)
#define CYCTC_NOINLINE
#endif
#if defined(__cplusplus) || !defined(__STDC_VERSION__) || __STDC_VERSION__ < 199901L
#define CYCTC_RESTRICT __restrict /* C++ and C89 compilers spell it this way */
#else
#define CYCTC_RESTRICT restrict
#endif
#define AHEAD 4 /* frames ahead whose label columns the recursion prefetches */

static inline double *skipw_of(double *work) { return work; }
#define CYCTC_DEDUP_MAX 64 /* distinct classes searched for repeats (a linear search per label) */
static inline int32_t *classmap_of(double *work, int L) { return (int32_t *)(work + (L + 1)); }
static inline int nd_of(const int32_t *cm) { return cm[0] < 0 ? -cm[0] : cm[0]; }
static inline int deduplicated(const int32_t *cm) { return cm[0] > 0; }
static inline const int32_t *dist_of(const int32_t *cm) { return cm + 1; }
static inline const int32_t *map_of(const int32_t *cm, int L) { return cm + 2 + L; }
static inline double *rows_of(double *work, int L) { return work + 2 * ((int64_t)L + 1); }
static inline double *loss_scratch_of(double *work, int L) { return work + 2 * ((int64_t)L + 1); }
static inline int row_index(int t, int M) { return t + (t >= M - 1); }

/* ask for a stored row (n doubles) a few frames before the recursion reaches it */
static inline void prefetch_row(const double *r, int64_t n)
{
    for (int64_t i = 0; i < n; i += 8)
        CYCTC_PREFETCH(r + i);
}

#if defined(__GNUC__)
#define CYCTC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define CYCTC_ALWAYS_INLINE inline
#endif

/* Short vectors for the per-frame passes over all C classes (row maximum, sum of exponentials, softmax scaling):
 * GCC's and Clang's vector extensions, since the vectoriser leaves these loops scalar when written with arrays of
 * accumulators. 32 bytes: one AVX register in the x86-64-v3 clone, two SSE registers in the baseline one. Other
 * compilers get the plain loops (same results). */
#if defined(__GNUC__) && !defined(CYCTC_NO_VECTOR_EXT)
#define CYCTC_VEC 1
typedef float cyctc_v8f __attribute__((vector_size(32)));
typedef int32_t cyctc_v8i __attribute__((vector_size(32)));
typedef float cyctc_v4f __attribute__((vector_size(16)));
typedef double cyctc_v4d __attribute__((vector_size(32)));
typedef int64_t cyctc_v4l __attribute__((vector_size(32)));
#else
#define CYCTC_VEC 0
#endif

/* acc[j] += e[i + j] for every i multiple of 8 below n (n a multiple of 8), in double */
static CYCTC_ALWAYS_INLINE void vec_acc8_f32(double *acc, const float *e, int n)
{
#if CYCTC_VEC
    cyctc_v4d a0, a1;
    memcpy(&a0, acc, sizeof a0);
    memcpy(&a1, acc + 4, sizeof a1);
    for (int i = 0; i < n; i += 8) {
        cyctc_v4f v0, v1;
        memcpy(&v0, e + i, sizeof v0);
        memcpy(&v1, e + i + 4, sizeof v1);
        a0 += __builtin_convertvector(v0, cyctc_v4d);
        a1 += __builtin_convertvector(v1, cyctc_v4d);
    }
    memcpy(acc, &a0, sizeof a0);
    memcpy(acc + 4, &a1, sizeof a1);
#else
    for (int i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (double)e[i + j];
#endif
}

static CYCTC_ALWAYS_INLINE void vec_acc8_f64(double *acc, const double *e, int n)
{
#if CYCTC_VEC
    cyctc_v4d a0, a1;
    memcpy(&a0, acc, sizeof a0);
    memcpy(&a1, acc + 4, sizeof a1);
    for (int i = 0; i < n; i += 8) {
        cyctc_v4d v0, v1;
        memcpy(&v0, e + i, sizeof v0);
        memcpy(&v1, e + i + 4, sizeof v1);
        a0 += v0;
        a1 += v1;
    }
    memcpy(acc, &a0, sizeof a0);
    memcpy(acc + 4, &a1, sizeof a1);
#else
    for (int i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += e[i + j];
#endif
}

/* x[c] = (float)((double)x[c] * inv): the softmax's division, rounded once */
static CYCTC_ALWAYS_INLINE void vec_scale_f32(float *x, int C, double inv)
{
    int c = 0;
#if CYCTC_VEC
    for (; c + 4 <= C; c += 4) {
        cyctc_v4f v;
        memcpy(&v, x + c, sizeof v);
        v = __builtin_convertvector(__builtin_convertvector(v, cyctc_v4d) * inv, cyctc_v4f);
        memcpy(x + c, &v, sizeof v);
    }
#endif
    for (; c < C; c++)
        x[c] = (float)((double)x[c] * inv);
}

static CYCTC_ALWAYS_INLINE void vec_scale_f64(double *x, int C, double inv)
{
    for (int c = 0; c < C; c++)
        x[c] *= inv;
}

/* exp(x) for x <= 0 (every argument here is a log-probability or x - max): a vectorisable polynomial, accurate to
 * ~1 ulp; arguments below -708 (results below the normal range, including -inf) give exactly 0. */
static inline double cyctc_exp(double x)
{
    const double shift = 6755399441055744.0; /* 1.5 * 2^52 */
    const double xc = x < -708.0 ? -708.0 : x;
    double kd = xc * 1.4426950408889634 + shift;
    uint64_t ki;
    memcpy(&ki, &kd, sizeof ki);
    kd -= shift;
    const double r = (xc - kd * 0.6931471805598903) - kd * 5.497923018708371e-14; /* ln2 = hi + lo, hi with 11 trailing zero bits */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t bits = (ki + 1023 - 0x0008000000000000ULL) << 52; /* 2^k: k sits in the low bits of ki */
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -708.0 ? 0.0 : p * scale;
}

/* expf(x) for x <= 0 in single precision (8 lanes with AVX2), ~1 ulp; below -87.3 (under the normal range,
 * -inf included) exactly 0. Used for the softmax of float32 logits, whose outputs are float32 anyway. */
static inline float cyctc_expf(float x)
{
    const float shift = 12582912.0f; /* 1.5 * 2^23 */
    const float xc = x < -87.0f ? -87.0f : x;
    float kd = xc * 1.44269504f + shift;
    uint32_t ki;
    memcpy(&ki, &kd, sizeof ki);
    kd -= shift;
    const float r = (xc - kd * 0.693359375f) - kd * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits = (ki + 127u - 0x00400000u) << 23; /* 2^k: k sits in the low bits of ki */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : p * scale;
}

#if CYCTC_VEC
/* cyctc_expf on 8 lanes at once, in place (the same operations, so the same bits without fused multiply-adds) */
static CYCTC_ALWAYS_INLINE void vec_expf8(cyctc_v8f *v)
{
    const cyctc_v8f x = *v;
    const cyctc_v8i low = x < -87.0f;
    const cyctc_v8f floor = {-87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f};
    const cyctc_v8f xc = (cyctc_v8f)(((cyctc_v8i)x & ~low) | ((cyctc_v8i)floor & low));
    cyctc_v8f kd = xc * 1.44269504f + 12582912.0f;
    const cyctc_v8i ki = (cyctc_v8i)kd;
    kd -= 12582912.0f;
    const cyctc_v8f r = (xc - kd * 0.693359375f) - kd * -2.12194440e-4f;
    cyctc_v8f p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const cyctc_v8i bits = (ki + (127 - 0x00400000)) << 23;
    *v = (cyctc_v8f)((cyctc_v8i)(p * (cyctc_v8f)bits) & ~low);
}

/* cyctc_exp on 4 lanes at once (the same reduction, the polynomial evaluated with more parallelism) */
static CYCTC_ALWAYS_INLINE void vec_exp4(cyctc_v4d *v)
{
    const cyctc_v4d x = *v;
    const cyctc_v4l low = x < -708.0;
    const cyctc_v4d floor = {-708.0, -708.0, -708.0, -708.0};
    const cyctc_v4d xc = (cyctc_v4d)(((cyctc_v4l)x & ~low) | ((cyctc_v4l)floor & low));
    cyctc_v4d kd = xc * 1.4426950408889634 + 6755399441055744.0;
    const cyctc_v4l ki = (cyctc_v4l)kd;
    kd -= 6755399441055744.0;
    const cyctc_v4d r = (xc - kd * 0.6931471805598903) - kd * 5.497923018708371e-14;
    /* sum r^i / i! for i <= 13 as 1 + r (1 + r w), w = sum r^j / (j + 2)! by Estrin's scheme: a dependency chain
     * of 6 multiply-adds instead of Horner's 13 (a frame's few label probabilities give the processor too few
     * independent vectors to hide Horner's), and Horner's last two steps, which keep the result within 1 ulp */
    const cyctc_v4d r2 = r * r, r4 = r2 * r2;
    const cyctc_v4d q0 = r * (1.0 / 6.0) + 0.5, q1 = r * (1.0 / 120.0) + 1.0 / 24.0;
    const cyctc_v4d q2 = r * (1.0 / 5040.0) + 1.0 / 720.0, q3 = r * (1.0 / 362880.0) + 1.0 / 40320.0;
    const cyctc_v4d q4 = r * (1.0 / 39916800.0) + 1.0 / 3628800.0, q5 = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
    const cyctc_v4d s0 = q1 * r2 + q0, s1 = q3 * r2 + q2, s2 = q5 * r2 + q4;
    const cyctc_v4d w = (s2 * r4 + s1) * r4 + s0;
    const cyctc_v4d p = (w * r + 1.0) * r + 1.0;
    const cyctc_v4l bits = (ki + (1023 - 0x0008000000000000LL)) << 52;
    *v = (cyctc_v4d)((cyctc_v4l)(p * (cyctc_v4d)bits) & ~low);
}
#endif

/* e[i] = exp(x[i] - m) for i < n, n a multiple of 8 (e may be x) */
static CYCTC_ALWAYS_INLINE void exp_block_f32(const float *x, float m, float *e, int n)
{
#if CYCTC_VEC
    for (int i = 0; i < n; i += 8) {
        cyctc_v8f v;
        memcpy(&v, x + i, sizeof v);
        v -= m;
        vec_expf8(&v);
        memcpy(e + i, &v, sizeof v);
    }
#else
    for (int i = 0; i < n; i++)
        e[i] = cyctc_expf(x[i] - m);
#endif
}

static CYCTC_ALWAYS_INLINE void exp_block_f64(const double *x, double m, double *e, int n)
{
#if CYCTC_VEC
    for (int i = 0; i < n; i += 4) {
        cyctc_v4d v;
        memcpy(&v, x + i, sizeof v);
        v -= m;
        vec_exp4(&v);
        memcpy(e + i, &v, sizeof v);
    }
#else
    for (int i = 0; i < n; i++)
        e[i] = cyctc_exp(x[i] - m);
#endif
}

/* the class map (see the work space layout above), or with cm == NULL only its size: returns nd, the slots of
 * a frame's distinct-class probabilities (L + 1 when the labels have too many classes to search) */
static inline int fill_class_map(const cyctc_seq *q, int32_t *cm)
{
    const int L = q->L;
    int32_t own[CYCTC_DEDUP_MAX + 1];
    int32_t *dist = cm ? cm + 1 : own, *map = cm ? cm + 2 + L : NULL;
    int nd = 1;
    dist[0] = q->blank;
    for (int k = 0; k < L; k++) {
        const int32_t c = q->labels[k];
        int j = 1;
        while (j < nd && dist[j] != c)
            j++;
        if (j == nd) {
            if (nd == CYCTC_DEDUP_MAX + 1) { /* too many classes to search: one slot per label */
                if (cm) {
                    for (int i = 0; i < L; i++) {
                        dist[i + 1] = q->labels[i];
                        map[i] = i + 1;
                    }
                    cm[0] = -(L + 1);
                }
                return L + 1;
            }
            dist[nd++] = c;
        }
        if (cm)
            map[k] = j;
    }
    if (cm)
        cm[0] = nd;
    return nd;
}

/* P[0] = E[0], P[1 + k] = E[map[k]]: the label probabilities from the distinct classes' (no aliasing, so it
 * vectorises with gathers where the instruction set has them) */
static inline void gather_labels(double *CYCTC_RESTRICT P, const double *CYCTC_RESTRICT E,
                                 const int32_t *CYCTC_RESTRICT map, int L)
{
    P[0] = E[0];
    for (int k = 0; k < L; k++)
        P[k + 1] = E[map[k]];
}

static inline void fill_skip_weights(const cyctc_seq *q, double *skipw)
{
    const int L = q->L;
    for (int k = 0; k <= L; k++)
        skipw[k] = (k >= 1 && k < L && (!q->merge_repeated || q->labels[k] != q->labels[k - 1])) ? 1.0 : 0.0;
}

/* ---- the log-space path's numbers ---------------------------------------------------------------------------
 * A log-probability is kept as hi + lo + sm: hi + lo an exact double-double sum of input differences (x - ref,
 * see cyctc_logspace), sm the small terms that log-additions make (log1p(exp(d)) < ln 2 each). With logits at
 * -1e30 or frames mixing +-1e30, every path's score is a huge sum plus a few nats, and those few nats decide the
 * posteriors: keeping them apart from the huge part (and from its rounding residual in lo) keeps them exact.
 * -inf is hi = -inf. */
typedef struct {
    double hi, lo, sm;
} cyctc_dd;

static const cyctc_dd CYCTC_DD_NEG_INF = {-INFINITY, 0.0, 0.0};

/* a + b exactly, as hi + lo (hi = fl(a + b)) */
static inline cyctc_dd dd_two_sum(double a, double b)
{
    const double s = a + b;
    cyctc_dd r;
    r.hi = s;
    r.sm = 0.0;
    if (!isfinite(s)) {
        r.lo = 0.0;
        return r;
    }
    const double bb = s - a;
    r.lo = (a - (s - bb)) + (b - bb);
    return r;
}

static inline cyctc_dd dd_add(cyctc_dd a, cyctc_dd b)
{
    cyctc_dd s = dd_two_sum(a.hi, b.hi);
    if (!isfinite(s.hi))
        return s;
    cyctc_dd r = dd_two_sum(s.hi, s.lo + (a.lo + b.lo));
    r.sm = a.sm + b.sm;
    return r;
}

/* a - b as a double (the huge parts cancel exactly first) */
static inline double dd_diff(cyctc_dd a, cyctc_dd b)
{
    if (a.hi == -INFINITY)
        return -INFINITY;
    const cyctc_dd d = dd_two_sum(a.hi, -b.hi);
    return d.hi + ((d.lo + (a.lo - b.lo)) + (a.sm - b.sm));
}

static inline double dd_value(cyctc_dd a) { return a.hi + (a.lo + a.sm); }

static inline cyctc_dd dd_log_add(cyctc_dd a, cyctc_dd b)
{
    if (a.hi == -INFINITY)
        return b;
    if (b.hi == -INFINITY)
        return a;
    double d = dd_diff(b, a);
    if (d > 0.0) {
        const cyctc_dd t = a;
        a = b;
        b = t;
        d = -d;
    }
    a.sm += log1p(exp(d));
    return a;
}

/* ref - m - log s of a frame (norm = {m, log s}), added into k */
static inline cyctc_dd frame_const(cyctc_dd k, double ref, const double *norm)
{
    cyctc_dd r = dd_add(k, dd_two_sum(ref, -norm[0]));
    r.sm -= norm[1];
    return r;
}

/* may label state s (odd) be entered from s - 2? */
static inline int can_skip(const cyctc_seq *q, int s)
{
    return s >= 3 && (!q->merge_repeated || q->labels[s >> 1] != q->labels[(s >> 1) - 1]);
}

#endif
