/*
 * cyctc per-sequence CTC kernel: plain C, no Python.
 *
 * The loss of one sequence is computed in four steps that a batch driver (cyctc/_cpu.pyx, or the C API in
 * cyctc/src/capi.c) schedules over many sequences and threads:
 *
 *   1. cyctc_row_norm_*    per frame: norm[2t] = m = max_c x[t, c], norm[2t + 1] = log sum_c exp(x[t, c] - m), so
 *                          that log p = (x - m) - log s stays exact under any shift of the logits; with a gradient
 *                          wanted it also writes the frame's softmax into the gradient row   (independent per frame)
 *   2. cyctc_prepare       per sequence: feasibility, non-finite frames, meeting frame M
 *   3. cyctc_stage1_*      two independent tasks per sequence: the forward variables for frames [0, M) and the
 *                          backward variables for frames [M-1, T), in scaled linear space (see "Scaling" below);
 *                          every product that underflows is accounted for in a shadow row of lost mass
 *                          (ctc_rows.h, "Lost mass")
 *      cyctc_meet          per sequence: P = sum_s alpha[M-1, s] beta[M-1, s] gives the loss, unless the mass
 *                          lost to underflow could matter (then log space)
 *      cyctc_stage2_*      (gradient only) two tasks per sequence: the forward task carries alpha on through
 *                          [M, T), the backward task carries beta back through [0, M-1); each turns every frame's
 *                          alpha*beta, normalised per frame, into the frame's gradient row (written over the softmax
 *                          in g while the rows are hot: scale * (softmax - class occupancy)); sequences with more
 *                          than CYCTC_DEDUP_MAX distinct classes go through a row of state posteriors (gamma) first
 *      cyctc_logspace_*    per sequence, only where the scaled recursion could not keep full precision
 *                          (underflow, or a frame whose posterior mass disagrees with P): the same result
 *                          recomputed in double-double log space (exact at any logit magnitude; it allocates its
 *                          own O(T x L) rows and raises CYCTC_NOMEM when it cannot), gradient rows included (the
 *                          frame's softmax computed again first where stage 2 had begun). Drivers call it for every
 *                          sequence after stage 2: it first folds in the flags the stage-2 tasks raised
 *                          (flags_fwd / flags_bwd); a loss the meeting computed is kept, so a loss-only call
 *                          returns exactly the loss of the gradient call
 *   4. cyctc_grad_row_*    per frame: the rows nothing else wrote: padding frames and sequences without a gradient
 *                          (0), sequences whose loss is NaN (NaN on their valid frames)
 *
 * Scaling (the one scheme of the CPU kernel, ctc_rows.h): a row of 2L + 1 states is cut into blocks of 16 states
 * (blank and label k for 8 consecutive k), and each block keeps its own binary exponent; after every step each
 * block is scaled by an exact power of two so that its sum lies in [0.5, 1). A row may thus span any range (the
 * forward row of an untrained model's long input runs thousands of nats ahead of where the posterior lies, far
 * beyond one double's range), while the states of one block, which carry the posterior mass together, stay within
 * a few dozen nats of their block's maximum. The few values that cross a block boundary in a step are rescaled by
 * the exponent difference; a block that was empty starts at the scale of what enters it. Underflow is still
 * possible inside a block (the front of a forward row); it is detected by one compare per state and bounded by the
 * lost-mass rows, and only where that bound is not negligible (above P x 2^-50) does the sequence go to log space.
 * The log-space path thus remains for needed classes less probable than e^-650 in some frame (logits beyond about
 * +-650 apart), for lost mass that could matter (a confident model whose every frame disagrees with the labels, so
 * that states flushed early come to carry the answer), and for a frame whose posterior mass disagrees with P.
 * The alignment chain kernel (decode.c, ctc_align's and ctc_segment's posteriors) scales its rows the same way,
 * with blocks of 32 of its own states (its graph has untranscribed states and no split layout). The CUDA chain
 * kernel (cyctc/cuda/ctc.cu, cyctc_chain) follows the same scheme with the state block a thread holds in registers
 * (K = 8 float32 / 4 float64 states, in every plan), each block's maximum kept near
 * 2^head rather than its sum in [0.5, 1) (float32 has less range to spend), the same per-state flush test and
 * lost-mass rows (run only from the first flush on) and the same log-space fallback.
 *
 * The stage functions take `scratch`: cyctc_loss_scratch(work, L) for loss-only calls (the sequence's own), or a
 * buffer of cyctc_thread_scratch_size(Lmax) doubles owned by the calling thread for gradient calls.
 *
 * Every step writes only its own outputs and reads nothing another concurrent task writes, so any assignment of
 * tasks to threads gives bit-identical results.
 */
#ifndef CYCTC_CTC_H
#define CYCTC_CTC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* per-sequence outcome flags */
#define CYCTC_INFEASIBLE 1 /* no alignment exists: loss +inf, gradient 0 */
#define CYCTC_NONFINITE 2  /* a valid frame holds NaN or inf logits: loss NaN, gradient NaN on valid frames */
#define CYCTC_LOGSPACE 4   /* the scaled recursion lost precision: recomputed in log space */
#define CYCTC_EMPTY 8      /* no frames and no labels: loss 0, nothing to compute */
#define CYCTC_NOMEM 16     /* the log-space path could not allocate its rows: loss NaN; drivers report an error */
#define CYCTC_OVERBUDGET 32 /* the log-space path's rows exceed q->logspace_room: loss NaN; drivers report an error */

typedef struct {
    int T;                 /* valid frames */
    int C;                 /* classes */
    int L;                 /* label length */
    int blank;             /* blank class, in [0, C) */
    int merge_repeated;    /* 1: standard CTC; 0: TF1's ctc_merge_repeated=False (labels have no self-loop) */
    const int32_t *labels; /* L class numbers, none equal to blank */
    ptrdiff_t xs;          /* elements between consecutive frames of this sequence's logits (class axis contiguous) */
    double *ecache;        /* gradient calls: NULL, or cyctc_ecache_size(q) doubles where stage 1 keeps each frame's
                            * class probabilities for stage 2 (same results, fewer exponentials) */
    int64_t logspace_room; /* doubles the log-space path may allocate for this sequence; < 0: no bound */
    int ckpt;              /* gradient calls: 0 or 1, every row stored; k > 1, a row every k frames (ctc_rows.h, the
                            * stored rows; cyctc_grad_work_size): the same results in less memory */
} cyctc_seq;

typedef struct {
    int flags;      /* CYCTC_* */
    int flags_fwd;  /* raised by the forward tasks (kept apart so concurrent tasks never share a word) */
    int flags_bwd;  /* raised by the backward tasks */
    int lost_fwd;   /* the forward stage-1 task flushed a product: its lost-mass row is live */
    int lost_bwd;   /* the same for the backward task */
    double *lost_row_fwd; /* gradient calls: those rows, allocated by the tasks that flushed, freed by cyctc_meet */
    double *lost_row_bwd;
    int M;          /* forward covers frames [0, M), backward [M-1, T) */
    double z_mid;   /* sum_s a[M-1, s] b[M-1, s] of the scaled rows, for the per-frame consistency check */
    int64_t e_mid;  /* binary exponent of that product */
    double eps_fwd; /* lost mass dropped from the forward task's shadow row, relative to P (ctc_rows.h) */
    double eps_bwd; /* the same for the backward task */
    double loss;
} cyctc_state;

/* doubles of work space one sequence needs (with_grad: alpha and beta rows are stored, every one) */
int64_t cyctc_work_size(int T, int L, int with_grad);

/* the same for a gradient call that stores a row every k frames (q->ckpt = k) */
int64_t cyctc_grad_work_size(int T, int L, int k);

/* doubles of one stored row of states (2L + 1 states, padded to whole blocks, and the blocks' exponents) */
int64_t cyctc_row_width(int L);

/* doubles of scratch each thread needs for gradient calls (Lmax: the longest label of the batch) */
int64_t cyctc_thread_scratch_size(int Lmax);

/* doubles of the optional probability cache of a gradient call (q->ecache; needs q's T, L, labels, blank) */
int64_t cyctc_ecache_size(const cyctc_seq *q);

/* the scratch of a loss-only call: inside the sequence's own work space */
double *cyctc_loss_scratch(double *work, int L);

/* minimum number of frames an alignment needs */
int cyctc_min_frames(const int32_t *labels, int L, int merge_repeated);

/* step 2: fills st (flags, M) and the sequence's constants in work; norm holds the valid frames' normalisers
 * (2 doubles a frame, see cyctc_row_norm) */
void cyctc_prepare(const cyctc_seq *q, const double *norm, double *work, cyctc_state *st);

/* the meeting: combines the two stage-1 rows into the loss (or raises CYCTC_LOGSPACE) */
void cyctc_meet(const cyctc_seq *q, double *work, int with_grad, cyctc_state *st);

#define CYCTC_DECLARE(SFX, REAL)                                                                                    \
    void cyctc_row_norm_##SFX(const REAL *x, int C, REAL *softmax, double *norm);                                   \
    void cyctc_stage1_##SFX(const cyctc_seq *q, const REAL *x, const double *norm, double *work, double *scratch,   \
                            int with_grad, int backward, cyctc_state *st);                                          \
    void cyctc_stage2_##SFX(const cyctc_seq *q, const REAL *x, const double *norm, double *work, double *scratch,   \
                            int backward, cyctc_state *st, REAL *g, ptrdiff_t gs, double scale, double *occ);       \
    void cyctc_logspace_##SFX(const cyctc_seq *q, const REAL *x, const double *norm, double *work, double *scratch, \
                              int with_grad, cyctc_state *st, REAL *g, ptrdiff_t gs, double scale, double *occ);    \
    void cyctc_grad_row_##SFX(const cyctc_seq *q, const cyctc_state *st, int t, REAL *g);

CYCTC_DECLARE(f32, float)
CYCTC_DECLARE(f64, double)

#ifdef __cplusplus
}
#endif

#endif
