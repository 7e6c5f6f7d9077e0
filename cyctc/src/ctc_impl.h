/* The dtype-dependent half of the CTC kernel, included by ctc.c once with REAL = float (SFX: _f32) and once with
 * REAL = double (SFX: _f64). Everything is computed in double; REAL is only how the logits are read and the
 * gradient written. Row layout and work space: see ctc_common.h. */

/* P[0] = p(blank), P[1 + k] = p(label k) at frame x (tmp: L + 4 temporaries), one exp per distinct class (cm:
 * the class map); flags a needed class too improbable for linear space. keep: NULL, or where the distinct
 * classes' probabilities are kept for stage 2 (nd rounded up to 4 doubles; see q->ecache). */
static CYCTC_HOT CYCTC_NOINLINE CYCTC_CONTRACT int SFX(label_probs)(const int32_t *cm, int L, int C, const REAL *x,
                                                     const double *norm, double *P, double *tmp, const REAL *ahead,
                                                     double *keep)
{
    const int nd = nd_of(cm);
    const int nd4 = (nd + 3) & ~3; /* whole vectors of 4: no scalar tail (slots past nd are scratch) */
    const int32_t *dist = dist_of(cm);
    /* the recursion walks frames that sit far apart in memory: fetch a later frame's label columns now (the
     * whole row when it spans fewer cache lines than there are columns) */
    if (ahead) {
        const int64_t bytes = (int64_t)C * (int64_t)sizeof(REAL);
        if (bytes <= 64 * (int64_t)nd)
            for (int64_t i = 0; i < bytes; i += 64)
                CYCTC_PREFETCH((const char *)ahead + i);
        else
            for (int j = 0; j < nd; j++)
                CYCTC_PREFETCH(ahead + dist[j]);
    }
    /* (x - m) - log s: shift invariant at any magnitude (x - m is exact for float logits) */
    const double m = norm[0], ls = norm[1];
    for (int j = 0; j < nd; j++)
        tmp[j] = ((double)x[dist[j]] - m) - ls;
    for (int j = nd; j < nd4; j++)
        tmp[j] = 0.0;
    double *E = keep ? keep : nd == L + 1 ? P : tmp; /* identity map: straight into P */
    exp_block_f64(tmp, 0.0, E, nd4);
    /* cyctc_exp returns exactly 0 below -708, so a probability under exp(floor) flags the frame (the padding
     * slots hold exp(0) = 1) */
    int low = 0;
#if CYCTC_VEC
    cyctc_v4l lowv = {0, 0, 0, 0};
    for (int j = 0; j < nd4; j += 4) {
        cyctc_v4d v;
        memcpy(&v, E + j, sizeof v);
        lowv |= v < CYCTC_PROB_FLOOR;
    }
    low = (lowv[0] | lowv[1] | lowv[2] | lowv[3]) != 0;
#else
    for (int j = 0; j < nd; j++)
        low += E[j] < CYCTC_PROB_FLOOR;
#endif
    if (E != P)
        gather_labels(P, E, map_of(cm, L), L);
    return low ? CYCTC_LOGSPACE : 0;
}

/* max over x[0..C) (NaN entries are passed over), two vectors of VN lanes at a time */
static CYCTC_ALWAYS_INLINE REAL SFX(vec_max)(const REAL *x, int C)
{
    int c = 0;
    REAL m = (REAL)-INFINITY;
#if CYCTC_VEC
    if (C >= 2 * VN) {
        VREAL a0, a1;
        for (int j = 0; j < VN; j++)
            a0[j] = a1[j] = (REAL)-INFINITY;
        for (; c + 2 * VN <= C; c += 2 * VN) {
            VREAL v0, v1;
            memcpy(&v0, x + c, sizeof v0);
            memcpy(&v1, x + c + VN, sizeof v1);
            const VMASK k0 = v0 > a0, k1 = v1 > a1;
            a0 = (VREAL)(((VMASK)v0 & k0) | ((VMASK)a0 & ~k0));
            a1 = (VREAL)(((VMASK)v1 & k1) | ((VMASK)a1 & ~k1));
        }
        for (int j = 0; j < VN; j++) {
            m = a0[j] > m ? a0[j] : m;
            m = a1[j] > m ? a1[j] : m;
        }
    }
#endif
    for (; c < C; c++)
        m = x[c] > m ? x[c] : m;
    return m;
}

/* sum_c exp(x[c] - m) accumulated in double, in chunks of EXP_CHUNK; each exp(x[c] - m) is kept in out when it
 * is not NULL. Float logits use the single-precision exp (their softmax is float32 anyway). The exponentials run
 * over whole vectors of 8: a last partial one is padded with -inf (exp = 0, which adds nothing). */
#define EXP_CHUNK 512
static CYCTC_HOT CYCTC_NOINLINE CYCTC_CONTRACT double SFX(sum_exp)(const REAL *x, int C, REAL m, REAL *out)
{
    REAL buf[EXP_CHUNK];
    double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int c0 = 0; c0 < C; c0 += EXP_CHUNK) {
        const int n = C - c0 < EXP_CHUNK ? C - c0 : EXP_CHUNK;
        const int n8 = n & ~7;
        REAL *e = out ? out + c0 : buf;
        SFX(exp_block)(x + c0, m, e, n8);
        SFX(vec_acc8)(acc, e, n8);
        if (n8 < n) {
            REAL t[8];
            for (int j = 0; j < 8; j++)
                t[j] = n8 + j < n ? x[c0 + n8 + j] : (REAL)-INFINITY;
            SFX(exp_block)(t, m, t, 8);
            for (int j = 0; n8 + j < n; j++)
                e[n8 + j] = t[j];
            SFX(vec_acc8)(acc, t, 8);
        }
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

CYCTC_HOT void SFX(cyctc_row_norm)(const REAL *x, int C, REAL *softmax, double *norm)
{
    const REAL m = SFX(vec_max)(x, C); /* NaN values are passed over here; they turn the sum into NaN */
    if (m == (REAL)INFINITY || m == (REAL)-INFINITY) {
        norm[0] = norm[1] = NAN; /* +inf somewhere, or every class at -inf (or NaN): no distribution */
        return;
    }
    const double s = SFX(sum_exp)(x, C, m, softmax);
    if (softmax)
        SFX(vec_scale)(softmax, C, 1.0 / s);
    norm[0] = (double)m; /* the normaliser is m + log s, kept as two numbers (see label_probs) */
    norm[1] = log(s);    /* NaN when a value is NaN */
}

CYCTC_HOT void SFX(cyctc_stage1)(const cyctc_seq *q, const REAL *x, const double *norm, double *work,
                                 double *scratch, int with_grad, int backward, cyctc_state *st)
{
    if (st->flags)
        return;
    const int L = q->L, T = q->T, M = st->M;
    const int64_t W = row_width(L);
    const double stay = q->merge_repeated ? 1.0 : 0.0;
    const double *skipw = skipw_of(work);
    double *sc = scratch_of(scratch, L, backward);
    double *P = probs_of(sc, L), *tmp = tmp_of(sc, L);
    double *En = blocks_of(sc, L, 0); /* each new row's exponents before normalisation */
    double *bf = blocks_of(sc, L, 8); /* and its blocks that may have flushed */
    int rng[4] = {0, -1, 0, -1};      /* the blocks each lost-mass row may occupy (lost_frame) */
    double *lost = lost_of(sc, L);    /* two lost-mass rows, used in turn once something flushed */
    const int32_t *cm = classmap_of(work, L);
    double *rows = rows_of(work, L);
    const int64_t nd4 = (nd_of(cm) + 3) & ~3;
    double *keep = with_grad ? q->ecache : NULL; /* kept for stage 2 */
    const int k = q->ckpt;
    int bad = 0, lost_on = 0, li = 0;
    double eps = 0.0;
    double *cur;
    if (!backward) {
        cur = with_grad ? alpha_row(rows, W, M, k, 0) : sc;
        bad |= SFX(label_probs)(cm, L, q->C, x, norm, P, tmp, NULL, keep);
        clear_row(cur, L);
        cur[0] = P[0];
        if (L > 0)
            cur[lab_off(L)] = P[1];
        zero_exponents(En, L);
        bad |= normalise_rows(cur, L, En, NULL) & CYCTC_LOGSPACE;
        for (int t = 1; t < M; t++) {
            double *nxt = with_grad ? alpha_row(rows, W, M, k, t) : NULL; /* stored, or a scratch row */
            if (nxt == NULL)
                nxt = sc + (t & 1) * W;
            bad |= SFX(label_probs)(cm, L, q->C, x + t * q->xs, norm + 2 * t, P, tmp,
                                    t + AHEAD < M ? x + (t + AHEAD) * q->xs : NULL, keep ? keep + t * nd4 : NULL);
            const int flushed = fwd_advance(L, stay, skipw, cur, P, nxt, sc);
            const int r = normalise_rows(nxt, L, En, bf);
            bad |= r & CYCTC_LOGSPACE;
            if ((flushed | r) & 1 || lost_on)
                lost_frame(L, stay, skipw, cur, P, nxt, (flushed | r) & 1, 0, sc, &lost_on, &li, &eps, rng);
            cur = nxt;
        }
        st->flags_fwd |= bad;
    } else {
        cur = with_grad ? beta_row(rows, W, T, M, k, T - 1) : sc;
        clear_row(cur, L);
        cur[L] = 1.0; /* last blank */
        if (L > 0)
            cur[lab_off(L) + L - 1] = 1.0; /* last label */
        zero_exponents(En, L);
        normalise_rows(cur, L, En, NULL);
        for (int t = T - 2; t >= M - 1; t--) {
            double *nxt = with_grad ? beta_row(rows, W, T, M, k, t) : NULL;
            if (nxt == NULL)
                nxt = sc + ((T - 1 - t) & 1) * W;
            bad |= SFX(label_probs)(cm, L, q->C, x + (t + 1) * q->xs, norm + 2 * (t + 1), P, tmp,
                                    t + 1 - AHEAD >= M ? x + (t + 1 - AHEAD) * q->xs : NULL,
                                    keep ? keep + (int64_t)(t + 1) * nd4 : NULL);
            const int flushed = bwd_advance(L, stay, skipw, cur, P, nxt, sc);
            const int r = normalise_rows(nxt, L, En, bf);
            bad |= r & CYCTC_LOGSPACE;
            if ((flushed | r) & 1 || lost_on)
                lost_frame(L, stay, skipw, cur, P, nxt, (flushed | r) & 1, 1, sc, &lost_on, &li, &eps, rng);
            cur = nxt;
        }
        st->flags_bwd |= bad;
    }
    if (!with_grad && cur != sc)
        memcpy(sc, cur, sizeof(double) * W);
    if (backward)
        st->eps_bwd = eps;
    else
        st->eps_fwd = eps;
    if (lost_on) { /* keep the lost-mass row for the meeting: in the sequence's scratch, or (gradient calls,
                    * whose scratch is the thread's) in a row of its own that cyctc_meet frees */
        double *dst = lost;
        if (with_grad) {
            dst = (double *)malloc(sizeof(double) * (size_t)W);
            if (dst == NULL) { /* cannot bound the loss: log space decides */
                lost_on = 0;
                if (backward)
                    st->flags_bwd |= CYCTC_LOGSPACE;
                else
                    st->flags_fwd |= CYCTC_LOGSPACE;
            } else if (backward) {
                st->lost_row_bwd = dst;
            } else {
                st->lost_row_fwd = dst;
            }
        }
        if (dst != NULL && dst != lost + li * W)
            memcpy(dst, lost + li * W, sizeof(double) * W);
    }
    if (backward)
        st->lost_bwd = lost_on;
    else
        st->lost_fwd = lost_on;
}

/* The gradient row of frame t from its state posteriors gamma (a row in the split layout, normalised to sum 1): g
 * holds the frame's softmax and becomes scale * (softmax - the sum of gamma over the states of each class). occ: C
 * doubles (labels of many distinct classes: indexed by class), else nd. */
static void SFX(gamma_grad)(const cyctc_seq *q, const int32_t *cm, const double *gamma, double scale, double *occ,
                            REAL *g)
{
    const int C = q->C, L = q->L;
    const double *glab = gamma + lab_off(L);
    if (!deduplicated(cm)) {
        /* labels of many distinct classes: occ indexed by class, the label columns subtracted in label order */
        for (int k = 0; k < L; k++)
            occ[q->labels[k]] = (double)g[q->labels[k]];
        double sb = 0.0;
        for (int k = 0; k <= L; k++)
            sb += gamma[k];
        occ[q->blank] = (double)g[q->blank] - sb;
        for (int k = 0; k < L; k++)
            occ[q->labels[k]] -= glab[k];
        if (scale != 1.0)
            for (int c = 0; c < C; c++)
                g[c] = (REAL)(scale * (double)g[c]);
        g[q->blank] = (REAL)(scale * occ[q->blank]);
        for (int k = 0; k < L; k++)
            g[q->labels[k]] = (REAL)(scale * occ[q->labels[k]]);
        return;
    }
    const int nd = nd_of(cm);
    const int32_t *dist = dist_of(cm), *map = map_of(cm, L);
    /* occupancy of each distinct class (occ[j] for class dist[j], summed in label order; nd <= C), then scale the
     * row and write those columns once */
    double sb = 0.0;
    for (int k = 0; k <= L; k++)
        sb += gamma[k];
    occ[0] = sb;
    for (int j = 1; j < nd; j++)
        occ[j] = 0.0;
    for (int k = 0; k < L; k++)
        occ[map[k]] += glab[k];
    for (int j = 0; j < nd; j++)
        occ[j] = (double)g[dist[j]] - occ[j];
    if (scale != 1.0)
        for (int c = 0; c < C; c++)
            g[c] = (REAL)(scale * (double)g[c]);
    for (int j = 0; j < nd; j++)
        g[dist[j]] = (REAL)(scale * occ[j]);
}

/* The gradient row of a frame straight from its alpha and beta rows (sequences with a deduplicated class map):
 * g holds the frame's softmax, and becomes scale * (softmax - occupancy), the occupancy of a class being the sum
 * of the posteriors of its states; nothing is stored in the rows. occ: nd doubles, w, wb: nb doubles of scratch.
 * Returns what frame_mass says of the frame (nothing is written then). */
static CYCTC_ALWAYS_INLINE int SFX(posterior_grad)(const double *a, const double *b, int L, const cyctc_state *st,
                                      const int32_t *cm, int C, double scale, double *occ, REAL *g, double *w,
                                      double *wb)
{
    if (frame_mass(a, b, L, st, w, wb))
        return CYCTC_LOGSPACE;
    const int nd = nd_of(cm), nb = nblocks(L);
    const int32_t *dist = dist_of(cm), *map = map_of(cm, L);
    const double *al = a + lab_off(L), *bl = b + lab_off(L);
    double ob = 0.0; /* the blank states */
    for (int j = 0; j < nb; j++)
        ob += wb[j] * w[j];
    occ[0] = ob;
    if (nd == L + 1) { /* labels of distinct classes: map[k] = k + 1, no scatter */
        for (int k = 0; k < L; k++)
            occ[k + 1] = (al[k] * bl[k]) * w[k / CYCTC_G];
    } else {
        for (int j = 1; j < nd; j++)
            occ[j] = 0.0;
        for (int k = 0; k < L; k++)
            occ[map[k]] += (al[k] * bl[k]) * w[k / CYCTC_G];
    }
    if (scale == 1.0) {
        for (int j = 0; j < nd; j++)
            g[dist[j]] = (REAL)((double)g[dist[j]] - occ[j]);
        return 0;
    }
    for (int j = 0; j < nd; j++)
        occ[j] = (double)g[dist[j]] - occ[j];
    for (int c = 0; c < C; c++)
        g[c] = (REAL)(scale * (double)g[c]);
    for (int j = 0; j < nd; j++)
        g[dist[j]] = (REAL)(scale * occ[j]);
    return 0;
}

/* a frame's probabilities P (blank, then labels) again: from the probability cache, or computed (the same bits) */
static inline void SFX(frame_probs)(const cyctc_seq *q, const int32_t *cm, const REAL *x, const double *norm, int t,
                                    double *P, double *tmp)
{
    if (q->ecache)
        gather_labels(P, q->ecache + t * (int64_t)((nd_of(cm) + 3) & ~3), map_of(cm, q->L), q->L);
    else
        SFX(label_probs)(cm, q->L, q->C, x + t * q->xs, norm + 2 * t, P, tmp, NULL, NULL);
}

CYCTC_HOT void SFX(cyctc_stage2)(const cyctc_seq *q, const REAL *x, const double *norm, double *work,
                                 double *scratch, int backward, cyctc_state *st, REAL *g, ptrdiff_t gs, double scale,
                                 double *occc)
{
    if (st->flags)
        return;
    const int L = q->L, T = q->T, M = st->M, k = q->ckpt;
    const int64_t W = row_width(L);
    const double stay = q->merge_repeated ? 1.0 : 0.0;
    const double *skipw = skipw_of(work);
    double *sc = scratch_of(scratch, L, backward);
    double *P = probs_of(sc, L), *P2 = probs2_of(sc, L), *tmp = tmp_of(sc, L);
    double *En = blocks_of(sc, L, 0), *w = blocks_of(sc, L, 4), *wb = blocks_of(sc, L, 5);
    double *rows = rows_of(work, L);
    const int32_t *cm = classmap_of(work, L);
    const int64_t nd4 = (nd_of(cm) + 3) & ~3;
    const int fused = deduplicated(cm); /* straight from alpha and beta (else through a row of posteriors) */
    double *occ = tmp2_of(sc, L);       /* nd <= L + 1 doubles */
    double *gamma = redo_of(sc, L);
    int bad = 0;
    if (!backward) {
        const double *prev = alpha_row(rows, W, M, k, M - 1); /* read-only here and in the other task */
        double *seg = k > 1 ? segment_rows(rows, W, T, M, k, 0) : NULL;
        for (int t = M; t < T && !bad;) {
            /* frames t..c; beta[c] is stored, and with checkpoints the betas below it are computed again here */
            const int c = k > 1 ? T - 1 - k * ((T - 1 - t) / k) : t;
            const double *bn = beta_row(rows, W, T, M, k, c);
            for (int u = c - 1; u >= t; u--) {
                double *bu = seg + (int64_t)(c - u) * W;
                SFX(frame_probs)(q, cm, x, norm, u + 1, P2, tmp);
                bwd_advance(L, stay, skipw, bn, P2, bu, sc);
                normalise_rows(bu, L, En, NULL);
                bn = bu;
            }
            for (; t <= c && !bad; t++) {
                double *n = sc + ((t - M) & 1) * W;
                if (q->ecache) /* stage 1 flagged improbable classes already */
                    gather_labels(P, q->ecache + t * nd4, map_of(cm, L), L);
                else
                    bad |= SFX(label_probs)(cm, L, q->C, x + t * q->xs, norm + 2 * t, P, tmp,
                                            t + AHEAD < T ? x + (t + AHEAD) * q->xs : NULL, NULL);
                /* what flushes here is caught by the posterior check against P */
                fwd_advance(L, stay, skipw, prev, P, n, sc);
                bad |= normalise_rows(n, L, En, NULL) & CYCTC_LOGSPACE;
                double *b = t == c ? beta_row(rows, W, T, M, k, c) : seg + (int64_t)(c - t) * W; /* beta[t] */
                if (k <= 1 && t + 1 + AHEAD <= T)
                    prefetch_row(b + AHEAD * W, W);
                if (fused)
                    bad |= SFX(posterior_grad)(n, b, L, st, cm, q->C, scale, occ, g + t * gs, w, wb);
                else if (!(bad |= posterior(n, b, L, st, gamma, w, wb)))
                    SFX(gamma_grad)(q, cm, gamma, scale, occc, g + t * gs);
                prev = n;
            }
        }
        st->flags_fwd |= bad;
    } else {
        double *cur = beta_row(rows, W, T, M, k, M - 1);
        double *seg = k > 1 ? segment_rows(rows, W, T, M, k, 1) : NULL;
        int seg_lo = M; /* with checkpoints: seg holds alpha of frames seg_lo.. (seg_lo a multiple of k) */
        for (int t = M - 1; t >= 0 && !bad; t--) {
            double *a = alpha_row(rows, W, M, k, t);
            if (a == NULL) { /* between checkpoints */
                if (t < seg_lo) { /* alpha of this segment again, from its checkpoint */
                    const int c = k * (t / k);
                    const double *an = alpha_row(rows, W, M, k, c);
                    for (int u = c + 1; u <= t; u++) {
                        double *au = seg + (int64_t)(u - c) * W;
                        SFX(frame_probs)(q, cm, x, norm, u, P2, tmp);
                        fwd_advance(L, stay, skipw, an, P2, au, sc);
                        normalise_rows(au, L, En, NULL);
                        an = au;
                    }
                    seg_lo = c;
                }
                a = seg + (int64_t)(t - seg_lo) * W;
            }
            double *nxt = NULL;
            if (t > 0) {
                nxt = sc + ((M - 1 - t) & 1) * W;
                if (q->ecache)
                    gather_labels(P, q->ecache + t * nd4, map_of(cm, L), L);
                else
                    bad |= SFX(label_probs)(cm, L, q->C, x + t * q->xs, norm + 2 * t, P, tmp,
                                            t - AHEAD > 0 ? x + (t - AHEAD) * q->xs : NULL, NULL);
                bwd_advance(L, stay, skipw, cur, P, nxt, sc);
                bad |= normalise_rows(nxt, L, En, NULL) & CYCTC_LOGSPACE;
            }
            if (k <= 1 && t - AHEAD >= 0)
                prefetch_row(rows + (int64_t)(t - AHEAD) * W, W);
            if (fused)
                bad |= SFX(posterior_grad)(a, cur, L, st, cm, q->C, scale, occ, g + t * gs, w, wb);
            else if (!(bad |= posterior(a, cur, L, st, gamma, w, wb)))
                SFX(gamma_grad)(q, cm, gamma, scale, occc, g + t * gs);
            cur = nxt;
        }
        st->flags_bwd |= bad;
    }
}

/* The log-space path scores a state at frame x by q = x[c] - ref, ref the largest logit among the classes the
 * sequence needs at that frame (frame_ref): exact as a double-double, and the frame's remaining log-probability
 * (ref - m - log s) is the same for every path, so it only enters the loss (frame_const). Path scores then differ
 * only by sums of exact input differences, and terms of any magnitude keep the few nats that decide between
 * paths (logits of -1e30 beside finite ones, frames mixing +-1e30). */
static inline double SFX(frame_ref)(const int32_t *cm, const REAL *x)
{
    const int nd = nd_of(cm);
    const int32_t *dist = dist_of(cm);
    double r = (double)x[dist[0]];
    for (int j = 1; j < nd; j++)
        r = (double)x[dist[j]] > r ? (double)x[dist[j]] : r;
    return r;
}

static inline cyctc_dd SFX(state_logp)(const cyctc_seq *q, const REAL *x, double ref, int s)
{
    const double v = (double)x[(s & 1) ? q->labels[s >> 1] : q->blank];
    if (v == -INFINITY || ref == -INFINITY)
        return CYCTC_DD_NEG_INF;
    return dd_two_sum(v, -ref);
}

void SFX(cyctc_logspace)(const cyctc_seq *q, const REAL *x, const double *norm, double *work, double *scratch,
                         int with_grad, cyctc_state *st, REAL *g, ptrdiff_t gs_t, double scale, double *occc)
{
    /* a loss the meeting computed (no stage-1 flag) is exact and is kept; stage 2 (two concurrent tasks) can only
     * raise flags_fwd / flags_bwd: a frame that lost range or whose posterior mass disagrees with P leaves gamma
     * unfinished, so fold those flags in here, after the barrier */
    const int meet_ok = st->flags == 0;
    const double meet_loss = st->loss;
    if (st->flags == 0 && (st->flags_fwd | st->flags_bwd))
        st->flags = CYCTC_LOGSPACE;
    if (!(st->flags & CYCTC_LOGSPACE))
        return;
    const int L = q->L, S = 2 * L + 1, T = q->T;
    const int64_t W = row_width(L);
    /* log alpha of every frame (gradient) or two (loss only), then two log beta rows: double-double, so they do
     * not fit the work rows; this path is the rare one and allocates its own */
    const int64_t na = with_grad ? T : 2;
    if (q->logspace_room >= 0 && (int64_t)(sizeof(cyctc_dd) / sizeof(double)) * (na + 2) * S > q->logspace_room) {
        st->flags = CYCTC_OVERBUDGET; /* within the work-space budget it cannot run */
        st->loss = NAN;
        return;
    }
    cyctc_dd *buf = (cyctc_dd *)malloc(sizeof(cyctc_dd) * (size_t)((na + 2) * (int64_t)S));
    if (buf == NULL) {
        st->flags = CYCTC_NOMEM;
        st->loss = NAN;
        return;
    }
#define LA_ROW(t) (buf + (with_grad ? (int64_t)(t) : (int64_t)((t) & 1)) * S)
    const int32_t *cm = classmap_of(work, L);
    cyctc_dd *a = LA_ROW(0);
    double ref = SFX(frame_ref)(cm, x);
    const cyctc_dd zero = {0.0, 0.0, 0.0};
    cyctc_dd k = frame_const(zero, ref, norm); /* the per-frame constants of log P */
    for (int s = 0; s < S; s++)
        a[s] = s < 2 ? SFX(state_logp)(q, x, ref, s) : CYCTC_DD_NEG_INF;
    for (int t = 1; t < T; t++) {
        const cyctc_dd *p = LA_ROW(t - 1);
        cyctc_dd *n = LA_ROW(t);
        const REAL *xt = x + t * q->xs;
        ref = SFX(frame_ref)(cm, xt);
        k = frame_const(k, ref, norm + 2 * t);
        for (int s = 0; s < S; s++) {
            cyctc_dd v = p[s];
            if ((s & 1) && !q->merge_repeated)
                v = CYCTC_DD_NEG_INF;
            if (s >= 1)
                v = dd_log_add(v, p[s - 1]);
            if ((s & 1) && can_skip(q, s))
                v = dd_log_add(v, p[s - 2]);
            n[s] = v.hi == -INFINITY ? v : dd_add(v, SFX(state_logp)(q, xt, ref, s));
        }
    }
    const cyctc_dd *last = LA_ROW(T - 1);
    const cyctc_dd lsum = L > 0 ? dd_log_add(last[S - 1], last[S - 2]) : last[S - 1];
    const cyctc_dd logp = lsum.hi > -INFINITY && isfinite(k.hi) ? dd_add(lsum, k) : CYCTC_DD_NEG_INF;
    if (!(logp.hi > -INFINITY)) { /* every alignment has probability exactly 0 */
        free(buf);
        st->flags = CYCTC_INFEASIBLE;
        st->loss = INFINITY;
        return;
    }
    st->loss = meet_ok ? meet_loss : fmax(0.0, -dd_value(logp)); /* P <= 1 */
    if (!with_grad) {
        free(buf);
        return;
    }
    cyctc_dd *bc = buf + na * S, *bn = bc + S;
    for (int s = 0; s < S; s++)
        bc[s] = (s == S - 1 || (L > 0 && s == S - 2)) ? (cyctc_dd){0.0, 0.0, 0.0} : CYCTC_DD_NEG_INF;
    double *gs = scratch_of(scratch, L, 0); /* S temporaries: the forward scratch rows */
    double *row = redo_of(scratch_of(scratch, L, 0), L); /* gamma in the split layout */
    const int fresh = !meet_ok; /* stage 2 ran (and may have written gradient rows) only after a good meeting */
    for (int t = T - 1; t >= 0; t--) {
        if (t > 0) { /* beta[t-1] from beta[t] and frame t */
            const REAL *xt = x + t * q->xs;
            const double nt = SFX(frame_ref)(cm, xt);
            for (int s = 0; s < S; s++) {
                cyctc_dd v = CYCTC_DD_NEG_INF;
                if ((!(s & 1) || q->merge_repeated) && bc[s].hi > -INFINITY)
                    v = dd_add(bc[s], SFX(state_logp)(q, xt, nt, s));
                if (s + 1 < S && bc[s + 1].hi > -INFINITY)
                    v = dd_log_add(v, dd_add(bc[s + 1], SFX(state_logp)(q, xt, nt, s + 1)));
                if (s + 2 < S && (s & 1) && can_skip(q, s + 2) && bc[s + 2].hi > -INFINITY)
                    v = dd_log_add(v, dd_add(bc[s + 2], SFX(state_logp)(q, xt, nt, s + 2)));
                bn[s] = v;
            }
        }
        /* gamma[t] = exp(log alpha + log beta - log z), z the frame's mass (= P up to rounding), in the split row
         * layout of the scaled path */
        const cyctc_dd *at = LA_ROW(t);
        cyctc_dd z = CYCTC_DD_NEG_INF;
        for (int s = 0; s < S; s++)
            if (at[s].hi > -INFINITY && bc[s].hi > -INFINITY)
                z = dd_log_add(z, dd_add(at[s], bc[s]));
        for (int s = 0; s < S; s++)
            gs[s] = (at[s].hi > -INFINITY && bc[s].hi > -INFINITY) ? exp(dd_diff(dd_add(at[s], bc[s]), z)) : 0.0;
        memset(row, 0, sizeof(double) * W);
        for (int s = 0; s < S; s++)
            row[state_slot(L, s)] = gs[s];
        REAL *gt = g + t * gs_t;
        if (!fresh) { /* stage 2 may have turned this row into a gradient already: the softmax again (same bits) */
            double nrm[2];
            SFX(cyctc_row_norm)(x + t * q->xs, q->C, gt, nrm);
        }
        SFX(gamma_grad)(q, cm, row, scale, occc, gt);
        cyctc_dd *tmpp = bc;
        bc = bn;
        bn = tmpp;
    }
#undef LA_ROW
    free(buf);
}

CYCTC_HOT void SFX(cyctc_grad_row)(const cyctc_seq *q, const cyctc_state *st, int t, REAL *g)
{
    const int C = q->C;
    if (t >= q->T || (st->flags & (CYCTC_INFEASIBLE | CYCTC_EMPTY))) {
        memset(g, 0, sizeof(REAL) * C);
        return;
    }
    if (st->flags & (CYCTC_NONFINITE | CYCTC_NOMEM | CYCTC_OVERBUDGET)) {
        for (int c = 0; c < C; c++)
            g[c] = (REAL)NAN;
    }
    /* otherwise stage 2 or the log-space path wrote the row */
}
