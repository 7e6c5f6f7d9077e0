/* State rows of the scaled recursion: one power-of-two exponent per block of states (the scheme is described in
 * ctc.h; this file is its arithmetic). Included by ctc.c after ctc_common.h.
 *
 * Layout. The S = 2L + 1 extended states are kept as two arrays so that every update is a contiguous, branch-free
 * loop the compiler vectorises: blank states (state 2k is blank k, k = 0..L) and label states (state 2k + 1 is
 * label k, k = 0..L-1). Index k of both arrays belongs to block k / CYCTC_G (16 states a block); a row has
 * nb = L / G + 1 blocks, and both arrays are padded with zeros to Lp = nb G entries. A row of W = 2 Lp + 1 + nb
 * doubles holds
 *     [blank 0..Lp) [0] [label 0..Lp) [exponent of block 0..nb)]
 * with the label array at offset Lp + 1, so label[-1] reads as the zero pad. A state's value is r[slot] x 2^E[j]
 * for its block j; an empty block (all zeros) has the exponent -inf. After each step every block is scaled by an
 * exact power of two so that its sum lies in [0.5, 1).
 *
 * A step reads one value across each block boundary (forward: label jG - 1 into block j; backward: blank and label
 * (j+1)G into block j). The vectorised loops compute every state as if the row had one exponent; the few states
 * at block boundaries are then computed again with the crossing values rescaled to their block (fwd_plan /
 * bwd_plan). A block that was empty takes its exponent from the value entering it, so the front of a forward row
 * (states only all-label paths reach) never starts below the normal range. When a block lies more than 2^960
 * below its neighbour (rare), the step is done one state at a time (fwd_exact / bwd_exact).
 *
 * Lost mass (underflow that cannot go unnoticed). A product under the normal range may lose bits or everything,
 * and such a state may come to dominate later frames (a confident, wrong model). The vectorised loops compare each
 * product with CYCTC_FLUSH (one compare and or a state: nothing else is paid until a flush happens); a block scaled
 * down by more than 8 checks its values too. The first flush of a direction starts a shadow row of lost mass: the
 * same recursion (same probabilities, its own block exponents, every positive intermediate rounded up, so it stays
 * an upper bound) which receives, at every state whose step flushed, a bound of what was lost. At the meeting,
 * dot(lost_alpha, beta) + dot(alpha, lost_beta) + dot(lost_alpha, lost_beta) bounds how much of P was lost, since
 * the true alpha and beta of any state never exceed the computed ones plus the lost ones; when that bound is not
 * negligible (above P x 2^-50) the sequence is recomputed in log space. The shadow runs only over its nonzero
 * blocks, and a block of it whose lost mass is at most 2^-64 of the computed values at every state is dropped, its
 * share (at most that ratio of P, since the computed values never exceed the true ones) added to a running bound
 * eps that the meeting adds in. Frames after the meeting (gradient calls) are covered by the per-frame
 * posterior-mass check against P, which lost mass can only lower.
 */
#ifndef CYCTC_CTC_ROWS_H
#define CYCTC_CTC_ROWS_H

#define CYCTC_G 8                                    /* indices a block: blank and label k, 16 states */
#define CYCTC_MIN_NORMAL 2.2250738585072014e-308     /* 2^-1022 */
#define CYCTC_FLUSH 1.7800590868057611e-307          /* 2^-1019: a product below this may have lost bits (or all),
                                                      * now or at the next rescale of its block (by at most 1/8) */
#define CYCTC_LOST_BOUND_LOG2 (-1016)                /* what a flagged state can have lost, log2, its block's units */
#ifndef CYCTC_CARRY_MAX /* (tests build the C API with a small one, so that the state-by-state step runs often) */
#define CYCTC_CARRY_MAX 960                          /* a neighbour block this far above: the step goes state by state */
#endif
#define CYCTC_DROP_LOG2 (-64)                        /* lost mass this far below the computed values: dropped */
#define CYCTC_SLOW 2

static inline int nblocks(int L) { return L / CYCTC_G + 1; }
static inline int64_t padded(int L) { return (int64_t)nblocks(L) * CYCTC_G; }
static inline int64_t lab_off(int L) { return padded(L) + 1; }
static inline int64_t exp_off(int L) { return 2 * padded(L) + 1; }
static inline int64_t row_width(int L) { return 2 * padded(L) + 1 + nblocks(L); }
/* index of extended state s within a row */
static inline int64_t state_slot(int L, int s) { return (s & 1) ? lab_off(L) + (s >> 1) : (s >> 1); }

/* scratch of one direction: 2 rows, 2 lost-mass rows, marks, recomputed values; P, q, u and two arrays of product
 * marks (Lp + 4 each); per-block arrays (nb + 4 each): exponents before normalisation, crossing values (two), own
 * scales, for the row and for its shadow, the row's flush flags, and one spare */
static inline int64_t scratch_size(int L)
{
    return 6 * row_width(L) + 6 * (padded(L) + 4) + 10 * ((int64_t)nblocks(L) + 4);
}
/* scratch: the sequence's own (loss only: loss_scratch_of(work), it must outlive the task) or the calling thread's
 * (gradient: cyctc_thread_scratch_size(Lmax) doubles, used within one task call only) */
static inline double *scratch_of(double *scratch, int L, int backward) { return scratch + backward * scratch_size(L); }
static inline double *lost_of(double *scratch, int L) { return scratch + 2 * row_width(L); }
static inline double *marks_of(double *scratch, int L) { return scratch + 4 * row_width(L); }
static inline double *redo_of(double *scratch, int L) { return scratch + 5 * row_width(L); }
static inline double *probs_of(double *scratch, int L) { return scratch + 6 * row_width(L); }
static inline double *tmp_of(double *scratch, int L) { return probs_of(scratch, L) + padded(L) + 4; }
static inline double *tmp2_of(double *scratch, int L) { return probs_of(scratch, L) + 2 * (padded(L) + 4); }
static inline double *tmp3_of(double *scratch, int L) { return probs_of(scratch, L) + 3 * (padded(L) + 4); }
static inline double *tmp4_of(double *scratch, int L) { return probs_of(scratch, L) + 4 * (padded(L) + 4); }
/* a second P: stage 2 recomputing rows between checkpoints */
static inline double *probs2_of(double *scratch, int L) { return probs_of(scratch, L) + 5 * (padded(L) + 4); }
/* per-block array i (0..9) of the scratch */
static inline double *blocks_of(double *scratch, int L, int i)
{
    return probs_of(scratch, L) + 6 * (padded(L) + 4) + i * ((int64_t)nblocks(L) + 4);
}

/* 2^e for e in [-1022, 1023], from its bits */
static CYCTC_ALWAYS_INLINE double pow2i(int e)
{
    const uint64_t b = (uint64_t)(e + 1023) << 52;
    double f;
    memcpy(&f, &b, sizeof f);
    return f;
}
/* binary exponent e of a positive normal v (v = f 2^e, f in [0.5, 1)), from its bits */
static CYCTC_ALWAYS_INLINE int expo(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return (int)((b >> 52) & 0x7ff) - 1022;
}
/* binary exponent of any positive v (subnormals included) */
static inline int expo_any(double v)
{
    int e;
    if (v >= CYCTC_MIN_NORMAL)
        return expo(v);
    (void)frexp(v, &e);
    return e;
}
/* v x 2^d for any integer d, exactly where the result is normal */
static inline double scale2(double v, double d)
{
    if (d >= -1022.0 && d <= 1023.0)
        return v * pow2i((int)d);
    return ldexp(v, d < -2000.0 ? -2000 : d > 2000.0 ? 2000 : (int)d);
}

/* sum of block j's 16 values (blank part, then label part; lo: the label offset); the same lanes everywhere */
static CYCTC_ALWAYS_INLINE double block_sum(const double *r, int64_t lo, int j)
{
    const double *b = r + (int64_t)j * CYCTC_G, *l = r + lo + (int64_t)j * CYCTC_G;
#if CYCTC_VEC
    cyctc_v4d b0, b1, l0, l1;
    memcpy(&b0, b, sizeof b0);
    memcpy(&b1, b + 4, sizeof b1);
    memcpy(&l0, l, sizeof l0);
    memcpy(&l1, l + 4, sizeof l1);
    const cyctc_v4d s = (b0 + b1) + (l0 + l1);
    return (s[0] + s[1]) + (s[2] + s[3]);
#else
    double s[4];
    for (int i = 0; i < 4; i++)
        s[i] = (b[i] + b[i + 4]) + (l[i] + l[i + 4]);
    return (s[0] + s[1]) + (s[2] + s[3]);
#endif
}

/* sum over block j of a x b; *blank: the blank part alone */
static CYCTC_ALWAYS_INLINE double block_dot(const double *a, const double *b, int64_t lo, int j, double *blank)
{
    const int64_t o = (int64_t)j * CYCTC_G;
#if CYCTC_VEC
    cyctc_v4d a0, a1, b0, b1, c0, c1, d0, d1;
    memcpy(&a0, a + o, sizeof a0);
    memcpy(&a1, a + o + 4, sizeof a1);
    memcpy(&b0, b + o, sizeof b0);
    memcpy(&b1, b + o + 4, sizeof b1);
    memcpy(&c0, a + lo + o, sizeof c0);
    memcpy(&c1, a + lo + o + 4, sizeof c1);
    memcpy(&d0, b + lo + o, sizeof d0);
    memcpy(&d1, b + lo + o + 4, sizeof d1);
    const cyctc_v4d sb = a0 * b0 + a1 * b1, sl = c0 * d0 + c1 * d1;
    *blank = (sb[0] + sb[1]) + (sb[2] + sb[3]);
    return *blank + ((sl[0] + sl[1]) + (sl[2] + sl[3]));
#else
    double sb[4], sl[4];
    for (int i = 0; i < 4; i++) {
        sb[i] = a[o + i] * b[o + i] + a[o + i + 4] * b[o + i + 4];
        sl[i] = a[lo + o + i] * b[lo + o + i] + a[lo + o + i + 4] * b[lo + o + i + 4];
    }
    *blank = (sb[0] + sb[1]) + (sb[2] + sb[3]);
    return *blank + ((sl[0] + sl[1]) + (sl[2] + sl[3]));
#endif
}

static CYCTC_ALWAYS_INLINE void scale_block(double *r, int64_t lo, int j, double f)
{
    double *b = r + (int64_t)j * CYCTC_G, *l = r + lo + (int64_t)j * CYCTC_G;
    for (int i = 0; i < CYCTC_G; i++) {
        b[i] *= f;
        l[i] *= f;
    }
}

/* 1 when a value of block j lies in (0, thr) */
static CYCTC_ALWAYS_INLINE int block_has_small(const double *r, int64_t lo, int j, double thr)
{
    const double *b = r + (int64_t)j * CYCTC_G, *l = r + lo + (int64_t)j * CYCTC_G;
    int any = 0;
    for (int i = 0; i < CYCTC_G; i++)
        any |= ((b[i] > 0.0) & (b[i] < thr)) | ((l[i] > 0.0) & (l[i] < thr));
    return any;
}

/* zero the padding of a row: blank L+1..Lp, the pad, label L..Lp */
static CYCTC_ALWAYS_INLINE void zero_padding(double *n, int L)
{
    const int64_t Lp = padded(L), lo = lab_off(L);
    for (int64_t k = L + 1; k < Lp; k++)
        n[k] = 0.0;
    n[lo - 1] = 0.0;
    for (int64_t k = L; k < Lp; k++)
        n[lo + k] = 0.0;
}

/* Scale block j of r (its values in the units of the exponent En[j]) to a sum in [0.5, 1) by an exact power of
 * two; its exponent becomes En[j] + e (-inf for an empty block). Returns 1 (a flush for the lost-mass row) when the
 * block, scaled down by more than 8, left a positive value below CYCTC_FLUSH, or its sum was under the normal range;
 * 2 when the block holds something. up: a lost-mass row, whose positive values are kept at least CYCTC_MIN_NORMAL
 * (an upper bound stays one). */
static CYCTC_ALWAYS_INLINE int normalise_block(double *r, int64_t lo, double *E, int j, const double *En, int up)
{
    const double s = block_sum(r, lo, j);
    if (!(s > 0.0)) {
        E[j] = -INFINITY;
        return 0;
    }
    double *b = r + (int64_t)j * CYCTC_G, *l = r + lo + (int64_t)j * CYCTC_G;
    if (s < CYCTC_MIN_NORMAL) { /* every value subnormal: each was flagged when it was made */
        const int e = expo_any(s);
        for (int i = 0; i < CYCTC_G; i++) {
            b[i] = ldexp(b[i], -e);
            l[i] = ldexp(l[i], -e);
        }
        E[j] = En[j] + e;
        return 3;
    }
    const int e = expo(s);
    int fl = 2;
    if (e > 3 && !up)
        fl |= block_has_small(r, lo, j, pow2i(e - 1019));
    if (up && e > 3) {
        const double f = pow2i(-e);
        for (int i = 0; i < CYCTC_G; i++) {
            b[i] = b[i] > 0.0 ? fmax(b[i] * f, CYCTC_MIN_NORMAL) : 0.0;
            l[i] = l[i] > 0.0 ? fmax(l[i] * f, CYCTC_MIN_NORMAL) : 0.0;
        }
    } else {
        scale_block(r, lo, j, pow2i(-e));
    }
    E[j] = En[j] + e;
    return fl;
}

/* normalise_block for every block of a main row; bf: each block's flush flag, or-ed in (NULL: none kept).
 * Returns 1 when a block flushed, CYCTC_LOGSPACE when every block is empty (the row lost everything). */
static CYCTC_ALWAYS_INLINE int normalise_rows(double *r, int L, const double *En, double *bf)
{
    const int nb = nblocks(L);
    const int64_t lo = lab_off(L);
    double *E = r + exp_off(L);
    int fl = 0, any = 0;
    for (int j = 0; j < nb; j++) {
        const int f = normalise_block(r, lo, E, j, En, 0);
        any |= f;
        if (f & 1) {
            fl = 1;
            if (bf)
                bf[j] = 1.0;
        }
    }
    return any ? fl : CYCTC_LOGSPACE;
}

/* a fresh row: zeros, every block empty */
static inline void clear_row(double *r, int L)
{
    memset(r, 0, sizeof(double) * (size_t)exp_off(L));
    for (int j = 0; j < nblocks(L); j++)
        r[exp_off(L) + j] = -INFINITY;
}

/* the exponents a row's values are in before its first normalisation (0 for every block) */
static inline void zero_exponents(double *En, int L)
{
    for (int j = 0; j < nblocks(L); j++)
        En[j] = 0.0;
}

/* ---- forward step ------------------------------------------------------------------------------------------ */

/* The plan of a forward step from row a: En[j], the exponent block j of the new row is computed in (a's, or for
 * an empty block the scale of what enters it), and cv[j], the value crossing into block j (a's label jG - 1, in
 * En[j]'s units). os: NULL (the vectorised step: returns CYCTC_SLOW where a block's own values would need
 * rescaling), or each block's own scale (1, or for a block far below its neighbour the factor that brings it to
 * the neighbour's scale). up: round crossing values up (lost-mass rows). Returns 1 when a crossing value lost bits. */
static CYCTC_ALWAYS_INLINE int fwd_plan(int L, const double *a, double *En, double *cv, double *os, int up,
                                        double *bf)
{
    const int nb = nblocks(L);
    const double *Ea = a + exp_off(L), *al = a + lab_off(L);
    int fl = 0;
    En[0] = Ea[0];
    cv[0] = 0.0;
    if (os)
        os[0] = 1.0;
    if (bf)
        bf[0] = 0.0;
    for (int j = 1; j < nb; j++) {
        const double src = al[(int64_t)j * CYCTC_G - 1];
        En[j] = Ea[j];
        cv[j] = 0.0;
        if (os)
            os[j] = 1.0;
        if (bf)
            bf[j] = 0.0;
        if (!(src > 0.0))
            continue;
        const double d = Ea[j - 1] - Ea[j];
        if (Ea[j] == -INFINITY || d > CYCTC_CARRY_MAX) {
            if (Ea[j] != -INFINITY) { /* far below its neighbour */
                if (!os)
                    return CYCTC_SLOW;
                fl |= CYCTC_SLOW;
            }
            const int e = src >= CYCTC_MIN_NORMAL ? expo(src) : 0; /* a subnormal src was flagged when made */
            En[j] = Ea[j - 1] + e;
            cv[j] = src * pow2i(-e);
            if (src < CYCTC_MIN_NORMAL || Ea[j] != -INFINITY) {
                fl |= 1;
                if (bf)
                    bf[j] = 1.0;
            }
            if (os && Ea[j] != -INFINITY)
                os[j] = Ea[j] - En[j] < -1022.0 ? 0.0 : pow2i((int)(Ea[j] - En[j]));
            continue;
        }
        cv[j] = d < -1000.0 ? 0.0 : src * pow2i((int)d);
        if (cv[j] < CYCTC_FLUSH) {
            fl |= 1;
            if (bf)
                bf[j] = 1.0;
            if (up)
                cv[j] = fmax(cv[j], CYCTC_MIN_NORMAL);
        }
    }
    return fl;
}

/* n = the next forward row from row a and the frame's probabilities P (P[0] blank, P[1 + k] label k), before
 * normalisation (in the exponents En of fwd_plan, cv its crossing values). Returns 1 when a product of a nonzero
 * sum and its probability may have fallen below CYCTC_FLUSH (block boundaries may report a flush that
 * fwd_exact's marks then find was none). */
static CYCTC_ALWAYS_INLINE int fwd_step(int L, double stay, const double *skipw, const double *a, const double *P,
                                        double *n, const double *cv, double *bf)
{
    const double *ab = a, *al = a + lab_off(L);
    double *nb = n, *nl = n + lab_off(L);
    const double pb = P[0], *pl = P + 1;
    const int nbk = nblocks(L);
    int flushed = 0;
    for (int j = 0; j < nbk; j++) {
        const int k0 = j * CYCTC_G;
        const int kb = k0 + CYCTC_G <= L + 1 ? k0 + CYCTC_G : L + 1, kl = k0 + CYCTC_G <= L ? k0 + CYCTC_G : L;
        int f = 0;
        for (int k = k0; k < kb; k++) {
            const double s = ab[k] + al[k - 1];
            const double v = s * pb;
            f |= (s > 0.0) & (v < CYCTC_FLUSH);
            nb[k] = v;
        }
        for (int k = k0; k < kl; k++) {
            const double s = stay * al[k] + ab[k] + skipw[k] * al[k - 1];
            const double v = s * pl[k];
            f |= (s > 0.0) & (v < CYCTC_FLUSH);
            nl[k] = v;
        }
        if (j > 0 && k0 <= L) { /* the block's first index again, with the crossing value in the block's units */
            const double s = ab[k0] + cv[j];
            const double v = s * pb;
            f |= (s > 0.0) & (v < CYCTC_FLUSH);
            nb[k0] = v;
            if (k0 < L) {
                const double s2 = stay * al[k0] + ab[k0] + skipw[k0] * cv[j];
                const double v2 = s2 * pl[k0];
                f |= (s2 > 0.0) & (v2 < CYCTC_FLUSH);
                nl[k0] = v2;
            }
        }
        if (f) {
            flushed = 1;
            bf[j] = 1.0;
        }
    }
    zero_padding(n, L);
    return flushed;
}

/* v x o, kept at least CYCTC_MIN_NORMAL when positive and up */
static inline double own(double v, double o, int up) { return up && v > 0.0 ? fmax(v * o, CYCTC_MIN_NORMAL) : v * o; }

/* The forward step one state at a time, for any plan (fwd_plan with own scales os): the rare case of the main row,
 * and the lost-mass rows (up). The same operations as fwd_step where the own scales are 1, so the same numbers.
 * marks (NULL or a row): 1 at every state whose value may have lost more than rounding (a flushed product, a
 * crossing value under the normal range, a block brought to its neighbour's scale), else 0. Only blocks j0..j1
 * are computed (the others of n and marks are left as they are). */
static CYCTC_NOINLINE void fwd_exact(int L, double stay, const double *skipw, const double *a, const double *P, double *n,
                      const double *cv, const double *os, int up, double *marks, int j0, int j1)
{
    const int64_t lo = lab_off(L);
    const double *ab = a, *al = a + lo, *Ea = a + exp_off(L);
    double *nb = n, *nl = n + lo;
    const double pb = P[0], *pl = P + 1;
    for (int64_t k = (int64_t)j0 * CYCTC_G; k < (int64_t)(j1 + 1) * CYCTC_G; k++) {
        const int j = (int)(k / CYCTC_G);
        const double o = os[j];
        const int first = k > 0 && k % CYCTC_G == 0;
        const double src = al[k - 1];
        const double prev = first ? cv[j] : own(src, o, up);
        const int carry_lost = first && src > 0.0 &&
                               (cv[j] < CYCTC_FLUSH || (Ea[j] != -INFINITY && Ea[j - 1] - Ea[j] > CYCTC_CARRY_MAX));
        const int rescaled = o != 1.0;
        double mb = 0.0, ml = 0.0;
        if (k <= L) {
            const double s = own(ab[k], o, up) + prev;
            double v = s * pb;
            if (s > 0.0 && v < CYCTC_FLUSH) {
                mb = 1.0;
                if (up)
                    v = CYCTC_FLUSH;
            }
            if ((carry_lost || rescaled) && (ab[k] > 0.0 || src > 0.0))
                mb = 1.0;
            nb[k] = v;
        } else {
            nb[k] = 0.0;
        }
        if (k < L) {
            const double s = stay * own(al[k], o, up) + own(ab[k], o, up) + skipw[k] * prev;
            double v = s * pl[k];
            const int fed = (stay > 0.0 && al[k] > 0.0) || ab[k] > 0.0 || (skipw[k] > 0.0 && src > 0.0);
            if (s > 0.0 && v < CYCTC_FLUSH) {
                ml = 1.0;
                if (up)
                    v = CYCTC_FLUSH;
            }
            if (fed && ((carry_lost && skipw[k] > 0.0) || rescaled))
                ml = 1.0;
            nl[k] = v;
        } else {
            nl[k] = 0.0;
        }
        if (marks) {
            marks[k] = mb;
            marks[lo + k] = ml;
        }
    }
    n[lo - 1] = 0.0;
    if (marks)
        marks[lo - 1] = 0.0;
}

/* ---- backward step ----------------------------------------------------------------------------------------- */

/* The plan of a backward step from row b (beta[t]) with frame t's probabilities P: En as in fwd_plan, and the two
 * values crossing into block j from block j + 1 in En[j]'s units: cb[j] = beta of blank (j+1)G, cq[j] = p(label
 * (j+1)G) x beta of label (j+1)G. os, up and the result as in fwd_plan. */
static CYCTC_ALWAYS_INLINE int bwd_plan(int L, const double *b, const double *P, double *En, double *cb, double *cq, double *os,
                           int up, double *bf)
{
    const int nb = nblocks(L);
    const double *Eb = b + exp_off(L), *bb = b, *bl = b + lab_off(L), *pl = P + 1;
    int fl = 0;
    En[nb - 1] = Eb[nb - 1];
    cb[nb - 1] = cq[nb - 1] = 0.0;
    if (os)
        os[nb - 1] = 1.0;
    if (bf)
        bf[nb - 1] = 0.0;
    for (int j = nb - 2; j >= 0; j--) {
        const int k1 = (j + 1) * CYCTC_G;
        const double sb = bb[k1], sq = k1 < L ? pl[k1] * bl[k1] : 0.0;
        En[j] = Eb[j];
        cb[j] = cq[j] = 0.0;
        if (os)
            os[j] = 1.0;
        if (bf)
            bf[j] = 0.0;
        if (!(sb > 0.0 || sq > 0.0))
            continue;
        const double d = Eb[j + 1] - Eb[j];
        if (Eb[j] == -INFINITY || d > CYCTC_CARRY_MAX) {
            if (Eb[j] != -INFINITY) {
                if (!os)
                    return CYCTC_SLOW;
                fl |= CYCTC_SLOW;
            }
            const double m = fmax(sb, sq);
            const int e = m >= CYCTC_MIN_NORMAL ? expo(m) : 0;
            En[j] = Eb[j + 1] + e;
            cb[j] = sb * pow2i(-e);
            cq[j] = sq * pow2i(-e);
            if (m < CYCTC_MIN_NORMAL || (sb > 0.0 && cb[j] < CYCTC_FLUSH) || (sq > 0.0 && cq[j] < CYCTC_FLUSH) ||
                Eb[j] != -INFINITY) {
                fl |= 1;
                if (bf)
                    bf[j] = 1.0;
            }
            if (os && Eb[j] != -INFINITY)
                os[j] = Eb[j] - En[j] < -1022.0 ? 0.0 : pow2i((int)(Eb[j] - En[j]));
            continue;
        }
        const double f = d < -1000.0 ? 0.0 : pow2i((int)d);
        cb[j] = sb * f;
        cq[j] = sq * f;
        if ((sb > 0.0 && cb[j] < CYCTC_FLUSH) || (sq > 0.0 && cq[j] < CYCTC_FLUSH)) {
            fl |= 1;
            if (bf)
                bf[j] = 1.0;
            if (up) {
                cb[j] = sb > 0.0 ? fmax(cb[j], CYCTC_MIN_NORMAL) : 0.0;
                cq[j] = sq > 0.0 ? fmax(cq[j], CYCTC_MIN_NORMAL) : 0.0;
            }
        }
    }
    return fl;
}

/* n = beta[t - 1] from b = beta[t] and frame t's probabilities P, before normalisation (bwd_plan's cb, cq); q: Lp
 * temporaries. Returns 1 when a product of a nonzero state and its probability fell below CYCTC_FLUSH; bf: the
 * blocks of the states such a product feeds. */
static CYCTC_ALWAYS_INLINE int bwd_step(int L, double stay, const double *skipw, const double *b, const double *P,
                                        double *q, double *n, const double *cb, const double *cq, double *bf)
{
    const double *bb = b, *bl = b + lab_off(L);
    double *nb = n, *nl = n + lab_off(L);
    const double pb = P[0], *pl = P + 1;
    const int nbk = nblocks(L);
    int flushed = 0;
    for (int j = 0; j < nbk; j++) {
        const int k0 = j * CYCTC_G;
        const int kb = k0 + CYCTC_G <= L + 1 ? k0 + CYCTC_G : L + 1, kl = k0 + CYCTC_G <= L ? k0 + CYCTC_G : L;
        int f = 0;
        for (int k = k0; k < kl; k++) {
            q[k] = pl[k] * bl[k];
            f |= (bl[k] > 0.0) & (q[k] < CYCTC_FLUSH);
        }
        for (int k = k0; k < kb; k++) {
            const double u = pb * bb[k];
            f |= (bb[k] > 0.0) & (u < CYCTC_FLUSH);
        }
        if (f) { /* the products of block j feed its states and the last label state of block j - 1 */
            flushed = 1;
            bf[j] = 1.0;
            if (j > 0)
                bf[j - 1] = 1.0;
        }
    }
    q[L] = 0.0;
    for (int k = 0; k <= L; k++)
        nb[k] = pb * bb[k] + q[k];
    for (int k = 0; k < L; k++)
        nl[k] = stay * q[k] + pb * bb[k + 1] + skipw[k + 1] * q[k + 1];
    /* the last index of each block again, with the values crossing from the next block in the block's units */
    for (int j = 0, k = CYCTC_G - 1; k < L; j++, k += CYCTC_G) {
        const double u = pb * cb[j];
        if ((cb[j] > 0.0) & (u < CYCTC_FLUSH)) {
            flushed = 1;
            bf[j] = 1.0;
        }
        nl[k] = stay * q[k] + u + skipw[k + 1] * cq[j];
    }
    zero_padding(n, L);
    return flushed;
}

/* The backward step one state at a time (see fwd_exact), blocks j0..j1; q, u, qm, um: Lp + 1 temporaries each
 * (the products and whether each lost bits). */
static CYCTC_NOINLINE void bwd_exact(int L, double stay, const double *skipw, const double *b, const double *P, double *n,
                      const double *cb, const double *cq, const double *os, int up, double *marks, double *q,
                      double *u, double *qm, double *um, int j0, int j1)
{
    const int64_t lo = lab_off(L), Lp = padded(L);
    const int64_t k0 = (int64_t)j0 * CYCTC_G, k1 = (int64_t)(j1 + 1) * CYCTC_G;
    const int nb_ = nblocks(L);
    const double *bb = b, *bl = b + lo, *Eb = b + exp_off(L);
    double *nb = n, *nl = n + lo;
    const double pb = P[0], *pl = P + 1;
    for (int64_t k = k0; k <= k1 && k <= Lp; k++) {
        const double o = k < Lp ? os[k / CYCTC_G] : 1.0;
        const int resc = o != 1.0;
        double qv = k < L ? pl[k] * own(bl[k], o, up) : 0.0;
        double uv = k <= L ? pb * own(bb[k], o, up) : 0.0;
        const int qlost = k < L && bl[k] > 0.0 && (qv < CYCTC_FLUSH || resc);
        const int ulost = k <= L && bb[k] > 0.0 && (uv < CYCTC_FLUSH || resc);
        if (up && qlost)
            qv = fmax(qv, CYCTC_FLUSH);
        if (up && ulost)
            uv = fmax(uv, CYCTC_FLUSH);
        q[k] = qv;
        u[k] = uv;
        qm[k] = qlost;
        um[k] = ulost;
    }
    for (int64_t k = k0; k < k1; k++) {
        const int j = (int)(k / CYCTC_G);
        const int last = k % CYCTC_G == CYCTC_G - 1 && j < nb_ - 1;
        double mb = 0.0, ml = 0.0;
        nb[k] = k <= L ? u[k] + q[k] : 0.0;
        if (k <= L)
            mb = um[k] != 0.0 || qm[k] != 0.0;
        if (k < L && last) {
            const double src = bb[k + 1], srq = k + 1 < L ? pl[k + 1] * bl[k + 1] : 0.0;
            double uc = pb * cb[j];
            const int fed = src > 0.0 || srq > 0.0;
            const int clost = fed && ((src > 0.0 && cb[j] < CYCTC_FLUSH) || (srq > 0.0 && cq[j] < CYCTC_FLUSH) ||
                                      (cb[j] > 0.0 && uc < CYCTC_FLUSH) ||
                                      (Eb[j] != -INFINITY && Eb[j + 1] - Eb[j] > CYCTC_CARRY_MAX));
            if (up && cb[j] > 0.0)
                uc = fmax(uc, CYCTC_FLUSH);
            nl[k] = stay * q[k] + uc + skipw[k + 1] * cq[j];
            ml = (stay > 0.0 && qm[k] != 0.0) || clost;
        } else if (k < L) {
            nl[k] = stay * q[k] + u[k + 1] + skipw[k + 1] * q[k + 1];
            ml = (stay > 0.0 && qm[k] != 0.0) || um[k + 1] != 0.0 || (skipw[k + 1] > 0.0 && qm[k + 1] != 0.0);
        } else {
            nl[k] = 0.0;
        }
        if (marks) {
            marks[k] = mb;
            marks[lo + k] = ml;
        }
    }
    n[lo - 1] = 0.0;
    if (marks)
        marks[lo - 1] = 0.0;
}

/* ---- the rare path of a step: marks, the lost-mass row, dropping what is negligible ------------------------ */

/* After a step whose fast loops or normalisation reported a flush in block j: add the states whose final
 * (normalised) value in n fell below CYCTC_FLUSH although the value before normalisation (redo) was positive. */
static inline void marks_after_normalise(const double *redo, const double *n, int64_t lo, int j, double *marks)
{
    for (int64_t k = (int64_t)j * CYCTC_G; k < (int64_t)(j + 1) * CYCTC_G; k++) {
        if (redo[k] > 0.0 && n[k] < CYCTC_FLUSH)
            marks[k] = 1.0;
        if (redo[lo + k] > 0.0 && n[lo + k] < CYCTC_FLUSH)
            marks[lo + k] = 1.0;
    }
}

/* Add to block j of the lost-mass row ln (before normalisation, exponents Enl) the bound of what each marked state
 * of the main row lost: 2^(CYCTC_LOST_BOUND_LOG2 + max(exponent before, after normalisation)) of its block. */
static inline void inject_lost(double *ln, double *Enl, int64_t lo, int j, const double *marks, double en,
                               double ef)
{
    int any = 0;
    for (int i = 0; i < CYCTC_G; i++)
        any |= (marks[(int64_t)j * CYCTC_G + i] != 0.0) | (marks[lo + (int64_t)j * CYCTC_G + i] != 0.0);
    if (!any)
        return;
    const double ea = (double)CYCTC_LOST_BOUND_LOG2 + fmax(en, ef);
    double d;
    if (Enl[j] == -INFINITY || block_sum(ln, lo, j) == 0.0) {
        Enl[j] = ea;
        d = 0.0;
    } else {
        d = ea - Enl[j];
        if (d > 1000.0) { /* what the block holds is far below the new loss: to the loss's scale, rounded up */
            double *b = ln + (int64_t)j * CYCTC_G, *l = ln + lo + (int64_t)j * CYCTC_G;
            for (int i = 0; i < CYCTC_G; i++) {
                b[i] = b[i] > 0.0 ? fmax(scale2(b[i], -d), CYCTC_MIN_NORMAL) : 0.0;
                l[i] = l[i] > 0.0 ? fmax(scale2(l[i], -d), CYCTC_MIN_NORMAL) : 0.0;
            }
            Enl[j] = ea;
            d = 0.0;
        }
    }
    const double inj = d < -1000.0 ? pow2i(-1000) : pow2i((int)d); /* an over-estimate below 2^-1000 */
    for (int i = 0; i < CYCTC_G; i++) {
        const int64_t k = (int64_t)j * CYCTC_G + i;
        if (marks[k] != 0.0)
            ln[k] += inj;
        if (marks[lo + k] != 0.0)
            ln[lo + k] += inj;
    }
}

/* log2 of the largest ratio lost / computed over block j (+inf where a state has lost mass and no computed value),
 * -inf for a lost block that is empty */
static inline double lost_ratio_log2(const double *lost, const double *row, int L, int j)
{
    const int64_t lo = lab_off(L);
    const double el = lost[exp_off(L) + j], er = row[exp_off(L) + j];
    if (el == -INFINITY)
        return -INFINITY;
    double r = 0.0;
    for (int i = 0; i < CYCTC_G; i++) {
        const int64_t kb = (int64_t)j * CYCTC_G + i, kl = lo + kb;
        if (lost[kb] > 0.0)
            r = row[kb] > 0.0 ? fmax(r, lost[kb] / row[kb]) : INFINITY;
        if (lost[kl] > 0.0)
            r = row[kl] > 0.0 ? fmax(r, lost[kl] / row[kl]) : INFINITY;
    }
    if (r == 0.0)
        return -INFINITY;
    return log2(r) + (el - er);
}

static inline void clear_block(double *r, int L, int j)
{
    const int64_t lo = lab_off(L);
    for (int i = 0; i < CYCTC_G; i++) {
        r[(int64_t)j * CYCTC_G + i] = 0.0;
        r[lo + (int64_t)j * CYCTC_G + i] = 0.0;
    }
    r[exp_off(L) + j] = -INFINITY;
}

/* ---- dots of two rows -------------------------------------------------------------------------------------- */

/* sum_s a(s) b(s) of two block-scaled rows, as z x 2^e (z in about [0.5, nb]; 0 with e = 0 when every product is
 * 0). db: NULL, or nb doubles that receive each block's dot and then its weight 2^(Ea + Eb - e) / z (gradients).
 * Returns CYCTC_LOGSPACE when products under the normal range inside a block may matter (the scaled rows then
 * cannot give this dot to full precision). */
static CYCTC_ALWAYS_INLINE int rows_dot(const double *a, const double *b, int L, double *z_out, double *e_out, double *db,
                           double *dblank)
{
    const int nb = nblocks(L);
    const int64_t lo = lab_off(L);
    const double *Ea = a + exp_off(L), *Eb = b + exp_off(L);
    double emax = -INFINITY, ebig = -INFINITY;
    for (int j = 0; j < nb; j++) {
        const double ex = Ea[j] + Eb[j];
        double bl = 0.0, d = 0.0;
        if (ex > -INFINITY) {
            d = block_dot(a, b, lo, j, &bl);
            ebig = fmax(ebig, ex);
            if (d > 0.0)
                emax = fmax(emax, ex + (double)expo_any(d));
        }
        if (db) {
            db[j] = d;
            dblank[j] = bl;
        }
    }
    if (emax == -INFINITY) {
        *z_out = 0.0;
        *e_out = 0.0;
        return CYCTC_LOGSPACE;
    }
    double z = 0.0;
    for (int j = 0; j < nb; j++) {
        const double ex = Ea[j] + Eb[j];
        if (ex == -INFINITY)
            continue;
        double unused;
        const double d = db ? db[j] : block_dot(a, b, lo, j, &unused);
        if (d > 0.0)
            z += scale2(d, ex - emax);
    }
    *z_out = z;
    *e_out = emax;
    /* a product under the normal range inside a block's dot is off by at most 2^-1075 of the block's units: 16 of
     * them must stay below 2^-60 of the result */
    return ebig - 1071.0 - emax > log2(z) - 60.0 ? CYCTC_LOGSPACE : 0;
}

/* log2 of an upper bound of sum a * b over two block-scaled rows (products under the normal range included) */
static inline double rows_dot_bound_log2(const double *a, const double *b, int L)
{
    double z, e;
    const int nb = nblocks(L);
    const double *Ea = a + exp_off(L), *Eb = b + exp_off(L);
    double ebig = -INFINITY;
    for (int j = 0; j < nb; j++)
        ebig = fmax(ebig, Ea[j] + Eb[j]);
    if (ebig == -INFINITY)
        return -INFINITY;
    rows_dot(a, b, L, &z, &e, NULL, NULL);
    const double slack = ebig + log2(16.0 * nb) - 1074.0; /* every product's rounding under the normal range */
    const double main = z > 0.0 ? log2(z * (1.0 + 1e-12)) + e : -INFINITY;
    return fmax(main, slack) + 1.0;
}

/* One step of a main row from a to n (P: the frame's probabilities), before normalisation: the plan, then the
 * vectorised step, or the state-by-state one where a block needs rescaling. The exponents n's values are in go to
 * the scratch's per-block array 0, each block's flush flag to array 8. Returns 1 when the step may have flushed. */
static CYCTC_ALWAYS_INLINE int fwd_advance(int L, double stay, const double *skipw, const double *a, const double *P,
                                           double *n, double *sc)
{
    double *En = blocks_of(sc, L, 0), *cv = blocks_of(sc, L, 1), *os = blocks_of(sc, L, 3), *bf = blocks_of(sc, L, 8);
    const int fl = fwd_plan(L, a, En, cv, NULL, 0, bf);
    if (fl & CYCTC_SLOW) {
        fwd_plan(L, a, En, cv, os, 0, bf);
        fwd_exact(L, stay, skipw, a, P, n, cv, os, 0, NULL, 0, nblocks(L) - 1);
        zero_padding(n, L);
        for (int j = 0; j < nblocks(L); j++)
            bf[j] = 1.0;
        return 1;
    }
    return fl | fwd_step(L, stay, skipw, a, P, n, cv, bf);
}

static CYCTC_ALWAYS_INLINE int bwd_advance(int L, double stay, const double *skipw, const double *b, const double *P,
                                           double *n, double *sc)
{
    double *En = blocks_of(sc, L, 0), *cb = blocks_of(sc, L, 1), *cq = blocks_of(sc, L, 2), *os = blocks_of(sc, L, 3);
    double *bf = blocks_of(sc, L, 8);
    const int fl = bwd_plan(L, b, P, En, cb, cq, NULL, 0, bf);
    if (fl & CYCTC_SLOW) {
        bwd_plan(L, b, P, En, cb, cq, os, 0, bf);
        bwd_exact(L, stay, skipw, b, P, n, cb, cq, os, 0, NULL, tmp_of(sc, L), tmp2_of(sc, L), tmp3_of(sc, L),
                  tmp4_of(sc, L), 0, nblocks(L) - 1);
        zero_padding(n, L);
        for (int j = 0; j < nblocks(L); j++)
            bf[j] = 1.0;
        return 1;
    }
    return fl | bwd_step(L, stay, skipw, b, P, tmp_of(sc, L), n, cb, cq, bf);
}

/* One frame of a direction's lost-mass row (see "Lost mass" above): cur -> nxt was the main row's step (nxt
 * normalised; the scratch's array 8 flags the blocks where it may have flushed), flushed: any did. The states of
 * those blocks that lost more than rounding are marked exactly, the shadow row takes its step over the blocks it
 * occupies (and the ones it spreads to, and the flagged ones) and their bounds, and its blocks that are negligible
 * against the main row are dropped into *eps. *on: the shadow holds something; *li: which of the two lost rows is
 * current; rng[2 i], rng[2 i + 1]: the first and last block lost row i may occupy (the others are empty). */
static CYCTC_NOINLINE void lost_frame(int L, double stay, const double *skipw, const double *cur, const double *P,
                                      const double *nxt, int flushed, int backward, double *sc, int *on, int *li,
                                      double *eps, int *rng)
{
    const int64_t W = row_width(L), E = exp_off(L), lo = lab_off(L);
    const int nb = nblocks(L);
    double *lost = lost_of(sc, L), *marks = marks_of(sc, L), *redo = redo_of(sc, L);
    double *En = blocks_of(sc, L, 0), *c1 = blocks_of(sc, L, 1), *c2 = blocks_of(sc, L, 2), *os = blocks_of(sc, L, 3);
    double *Enl = blocks_of(sc, L, 4), *l1 = blocks_of(sc, L, 5), *l2 = blocks_of(sc, L, 6);
    double *osl = blocks_of(sc, L, 7), *bf = blocks_of(sc, L, 8);
    double *t1 = tmp_of(sc, L), *t2 = tmp2_of(sc, L), *t3 = tmp3_of(sc, L), *t4 = tmp4_of(sc, L);
    const int cur_i = *li, nxt_i = *li ^ 1;
    double *lp = lost + cur_i * W, *ln = lost + nxt_i * W;
    int f0 = nb, f1 = -1; /* flagged blocks */
    if (flushed) {
        if (!*on) {
            clear_row(lp, L);
            clear_row(ln, L);
            rng[0] = rng[2] = nb;
            rng[1] = rng[3] = -1;
            *on = 1;
        }
        if (backward)
            bwd_plan(L, cur, P, En, c1, c2, os, 0, NULL);
        else
            fwd_plan(L, cur, En, c1, os, 0, NULL);
        for (int j = 0; j < nb; j++) {
            if (bf[j] == 0.0)
                continue;
            f0 = j < f0 ? j : f0;
            f1 = j;
            if (backward)
                bwd_exact(L, stay, skipw, cur, P, redo, c1, c2, os, 0, marks, t1, t2, t3, t4, j, j);
            else
                fwd_exact(L, stay, skipw, cur, P, redo, c1, os, 0, marks, j, j);
            marks_after_normalise(redo, nxt, lo, j, marks);
        }
    }
    /* the blocks of the new shadow row: where the current one is, one further in the recursion's direction, and
     * the flagged ones */
    int j0 = rng[2 * cur_i], j1 = rng[2 * cur_i + 1];
    if (j0 <= j1) {
        if (backward)
            j0 = j0 > 0 ? j0 - 1 : 0;
        else
            j1 = j1 < nb - 1 ? j1 + 1 : nb - 1;
    }
    j0 = f0 < j0 ? f0 : j0;
    j1 = f1 > j1 ? f1 : j1;
    /* blocks the other row may still hold outside that range are cleared */
    for (int j = rng[2 * nxt_i]; j <= rng[2 * nxt_i + 1]; j++)
        if (j < j0 || j > j1)
            clear_block(ln, L, j);
    int n0 = nb, n1 = -1;
    if (j0 <= j1) {
        if (backward) {
            bwd_plan(L, lp, P, Enl, l1, l2, osl, 1, NULL);
            bwd_exact(L, stay, skipw, lp, P, ln, l1, l2, osl, 1, NULL, t1, t2, t3, t4, j0, j1);
        } else {
            fwd_plan(L, lp, Enl, l1, osl, 1, NULL);
            fwd_exact(L, stay, skipw, lp, P, ln, l1, osl, 1, NULL, j0, j1);
        }
        for (int j = j0; j <= j1; j++) {
            if (flushed && bf[j] != 0.0)
                inject_lost(ln, Enl, lo, j, marks, En[j], nxt[E + j]);
            normalise_block(ln, lo, ln + E, j, Enl, 1);
            if (ln[E + j] == -INFINITY)
                continue;
            const double r = lost_ratio_log2(ln, nxt, L, j);
            if (r <= (double)CYCTC_DROP_LOG2) {
                *eps += exp2(r);
                clear_block(ln, L, j);
            } else {
                n0 = j < n0 ? j : n0;
                n1 = j;
            }
        }
    }
    if (flushed) /* the marks row is all zero again for the next frame that flushes */
        for (int j = f0; j <= f1; j++)
            for (int i = 0; i < CYCTC_G; i++) {
                marks[(int64_t)j * CYCTC_G + i] = 0.0;
                marks[lo + (int64_t)j * CYCTC_G + i] = 0.0;
            }
    ln[lo - 1] = 0.0;
    rng[2 * nxt_i] = n0;
    rng[2 * nxt_i + 1] = n1;
    *li = nxt_i;
    *on = n0 <= n1; /* all dropped: the next flush starts a fresh row */
}

/* ---- posteriors of a frame --------------------------------------------------------------------------------- */

/* The mass z x 2^e = sum_s a(s) b(s) of a frame's alpha and beta rows, checked against P (the meeting's): 0, or
 * CYCTC_LOGSPACE when the frame lost range or its mass disagrees with P. w, wb: nb doubles; w receives each block's
 * weight 2^(Ea + Eb - e) / z (a state's posterior is a b w of its block), wb each block's blank-part dot. */
static CYCTC_ALWAYS_INLINE int frame_mass(const double *a, const double *b, int L, const cyctc_state *st, double *w, double *wb)
{
    double z, e;
    if (rows_dot(a, b, L, &z, &e, w, wb))
        return CYCTC_LOGSPACE;
    /* |log(z 2^(e - e_mid) / z_mid)| <= tol, as a ratio (no log per frame); the power of two in two exact halves */
    const double de = e - (double)st->e_mid;
    if (de < -2000.0 || de > 2000.0)
        return CYCTC_LOGSPACE;
    const int h1 = (int)de / 2, h2 = (int)de - h1;
    const double r = ((z / st->z_mid) * pow2i(h1)) * pow2i(h2) - 1.0;
    if (!(fabs(r) <= CYCTC_CONSISTENCY_TOL))
        return CYCTC_LOGSPACE;
    const int nb = nblocks(L);
    const double *Ea = a + exp_off(L), *Eb = b + exp_off(L);
    const double inv = 1.0 / z;
    for (int j = 0; j < nb; j++) {
        const double ex = Ea[j] + Eb[j] - e;
        w[j] = ex < -1022.0 ? 0.0 : pow2i((int)ex) * inv; /* below: a block of no weight against the frame */
    }
    return 0;
}

/* a * b / sum(a * b) (the frame's state posteriors), written to out (a row of its own); w, wb: nb doubles of
 * scratch. Checks the frame's mass against P. */
static CYCTC_ALWAYS_INLINE int posterior(const double *a, const double *b, int L, const cyctc_state *st, double *out,
                                         double *w, double *wb)
{
    if (frame_mass(a, b, L, st, w, wb))
        return CYCTC_LOGSPACE;
    const int nb = nblocks(L);
    const int64_t lo = lab_off(L);
    for (int j = 0; j < nb; j++) {
        const double f = w[j];
        for (int i = 0; i < CYCTC_G; i++) {
            const int64_t k = (int64_t)j * CYCTC_G + i;
            out[k] = (a[k] * b[k]) * f;
            out[lo + k] = (a[lo + k] * b[lo + k]) * f;
        }
    }
    return 0;
}

/* ---- the stored rows of a gradient call --------------------------------------------------------------------
 * k = q->ckpt <= 1: alpha[t] in row t (t < M), beta[t] in row t + 1 (t >= M - 1): T + 1 rows.
 * k > 1 (checkpoints, for a memory budget): alpha at the frames t < M - 1 that are multiples of k and at M - 1, beta
 * at the frames t > M - 1 with T - 1 - t a multiple of k and at M - 1; then two segments of k rows in which the
 * stage-2 tasks compute the rows between two checkpoints again (the forward task beta, the backward task alpha:
 * the same operations on the same numbers, so the same bits). About T / k + 2k rows: k ~ sqrt(T / 2) at least. */
static inline int64_t alpha_slots(int M, int k) { return (int64_t)(M - 2 + k) / k + 1; }
static inline int64_t beta_slots(int T, int M, int k)
{
    return (T - M - 1 >= 0 ? (int64_t)(T - M - 1) / k + 1 : 0) + 1;
}
static inline int64_t stored_rows(int T, int k)
{
    const int M = (T + 1) / 2;
    return k <= 1 ? (int64_t)T + 1 : alpha_slots(M, k) + beta_slots(T, M, k) + 2 * (int64_t)k;
}
/* the stored row of alpha[t], or NULL where frame t has none */
static inline double *alpha_row(double *rows, int64_t W, int M, int k, int t)
{
    if (k <= 1)
        return rows + (int64_t)t * W;
    if (t == M - 1)
        return rows + (alpha_slots(M, k) - 1) * W;
    return t % k == 0 ? rows + (int64_t)(t / k) * W : NULL;
}
static inline double *beta_row(double *rows, int64_t W, int T, int M, int k, int t)
{
    if (k <= 1)
        return rows + (int64_t)(t + 1) * W;
    const int64_t na = alpha_slots(M, k);
    if (t == M - 1)
        return rows + (na + beta_slots(T, M, k) - 1) * W;
    return (T - 1 - t) % k == 0 ? rows + (na + (T - 1 - t) / k) * W : NULL;
}
/* the k rows where stage 2's forward (backward = 0) or backward task recomputes what lies between checkpoints */
static inline double *segment_rows(double *rows, int64_t W, int T, int M, int k, int backward)
{
    return rows + (alpha_slots(M, k) + beta_slots(T, M, k) + (int64_t)backward * k) * W;
}

#endif
