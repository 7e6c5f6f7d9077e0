/* cyctc per-sequence CTC kernel: the dtype-independent parts, and the float/double instantiations of ctc_impl.h.
 * See ctc.h for the plan of the computation. */
/* Python's build flags include -fwrapv, under which GCC cannot prove that int loop indices do not wrap and leaves
 * the kernel's loops scalar; nothing here relies on wrapping arithmetic. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-wrapv")
#endif
#include "ctc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctc_common.h"
#include "ctc_rows.h"

int64_t cyctc_grad_work_size(int T, int L, int k)
{
    return 2 * ((int64_t)L + 1) + stored_rows(T, k) * row_width(L); /* skip weights and class map, the rows */
}

int64_t cyctc_work_size(int T, int L, int with_grad)
{
    if (with_grad)
        return cyctc_grad_work_size(T, L, 1);
    return 2 * ((int64_t)L + 1) + 2 * scratch_size(L);
}

int64_t cyctc_row_width(int L) { return row_width(L); }

int64_t cyctc_thread_scratch_size(int Lmax) { return 2 * scratch_size(Lmax); }

int64_t cyctc_ecache_size(const cyctc_seq *q)
{
    const int nd4 = (fill_class_map(q, NULL) + 3) & ~3; /* the rows of label_probs: whole vectors of 4 */
    return (int64_t)q->T * nd4;
}

double *cyctc_loss_scratch(double *work, int L) { return loss_scratch_of(work, L); }

int cyctc_min_frames(const int32_t *labels, int L, int merge_repeated)
{
    int n = L;
    if (merge_repeated)
        for (int k = 1; k < L; k++)
            n += labels[k] == labels[k - 1];
    return n;
}

void cyctc_prepare(const cyctc_seq *q, const double *norm, double *work, cyctc_state *st)
{
    st->flags = st->flags_fwd = st->flags_bwd = 0;
    st->lost_fwd = st->lost_bwd = 0;
    st->lost_row_fwd = st->lost_row_bwd = NULL;
    st->M = 0;
    st->loss = 0.0;
    st->z_mid = 1.0;
    st->e_mid = 0;
    st->eps_fwd = st->eps_bwd = 0.0;
    if (q->T < cyctc_min_frames(q->labels, q->L, q->merge_repeated)) {
        st->flags = CYCTC_INFEASIBLE;
        st->loss = INFINITY;
        return;
    }
    if (q->T == 0) { /* and L == 0 */
        st->flags = CYCTC_EMPTY;
        return;
    }
    for (int t = 0; t < q->T; t++) {
        if (!isfinite(norm[2 * t]) || !isfinite(norm[2 * t + 1])) {
            st->flags = CYCTC_NONFINITE;
            st->loss = NAN;
            return;
        }
    }
    st->M = (q->T + 1) / 2;
    fill_skip_weights(q, skipw_of(work));
    fill_class_map(q, classmap_of(work, q->L));
}

/* the meeting proper (cyctc_meet frees the lost-mass rows of gradient calls around it) */
static void meet(const cyctc_seq *q, double *work, int with_grad, cyctc_state *st)
{
    if (st->flags)
        return;
    if (st->flags_fwd | st->flags_bwd) {
        st->flags |= CYCTC_LOGSPACE;
        return;
    }
    const int L = q->L;
    const int64_t W = row_width(L);
    const double *a, *b;
    if (with_grad) {
        a = alpha_row(rows_of(work, L), W, st->M, q->ckpt, st->M - 1);
        b = beta_row(rows_of(work, L), W, q->T, st->M, q->ckpt, st->M - 1);
    } else {
        a = scratch_of(loss_scratch_of(work, L), L, 0);
        b = scratch_of(loss_scratch_of(work, L), L, 1);
    }
    double z, e;
    if (rows_dot(a, b, L, &z, &e, NULL, NULL)) {
        st->flags |= CYCTC_LOGSPACE;
        return;
    }
    const double log2p = log2(z) + e;
    /* how much of P the flushed products can have taken (ctc_rows.h, "Lost mass"), relative to P */
    double rel = st->eps_fwd + st->eps_bwd;
    if (st->lost_fwd | st->lost_bwd) {
        const double *la, *lb;
        double worst = -INFINITY;
        if (with_grad) {
            la = st->lost_row_fwd;
            lb = st->lost_row_bwd;
        } else {
            la = lost_of(scratch_of(loss_scratch_of(work, L), L, 0), L);
            lb = lost_of(scratch_of(loss_scratch_of(work, L), L, 1), L);
        }
        if (st->lost_fwd)
            worst = fmax(worst, rows_dot_bound_log2(la, b, L));
        if (st->lost_bwd)
            worst = fmax(worst, rows_dot_bound_log2(a, lb, L));
        if (st->lost_fwd && st->lost_bwd)
            worst = fmax(worst, rows_dot_bound_log2(la, lb, L));
        rel += 3.0 * exp2(fmin(worst - log2p, 0.0)); /* 3 terms */
    }
    /* and a factor 2 of margin (inject_lost's over-estimates below 2^-1000) */
    if (!(2.0 * rel <= exp2((double)CYCTC_LOST_REL_LOG2))) {
        st->flags |= CYCTC_LOGSPACE;
        return;
    }
    st->z_mid = z;
    st->e_mid = (int64_t)e;
    /* P <= 1: a result a rounding error below 0 (P ~ 1) is reported as 0 */
    st->loss = fmax(0.0, -(log(z) + e * CYCTC_LN2));
}

void cyctc_meet(const cyctc_seq *q, double *work, int with_grad, cyctc_state *st)
{
    meet(q, work, with_grad, st);
    free(st->lost_row_fwd);
    free(st->lost_row_bwd);
    st->lost_row_fwd = st->lost_row_bwd = NULL;
}

#define REAL float
#define SFX(name) name##_f32
#define VN 8 /* lanes of the 32-byte vectors: VREAL, with VMASK its comparison result */
#define VREAL cyctc_v8f
#define VMASK cyctc_v8i
#include "ctc_impl.h"
#undef REAL
#undef SFX
#undef VN
#undef VREAL
#undef VMASK

#define REAL double
#define SFX(name) name##_f64
#define VN 4
#define VREAL cyctc_v4d
#define VMASK cyctc_v4l
#include "ctc_impl.h"
#undef REAL
#undef SFX
#undef VN
#undef VREAL
#undef VMASK
