/* The dtype-dependent half of the C API, included by capi.c with REAL = float / double, SFX(name) = name##_f32 /
 * name##_f64 and CAPI_NAME the public function's name. See capi.c for the plan; the loop order and schedules
 * below follow cyctc/_cpu.pyx `_run` step by step. */

/* runs the kernel on checked arguments; returns 0, or -1 when a thread could not allocate its scratch row */
static int SFX(capi_run)(const REAL *x, ptrdiff_t xsb, ptrdiff_t xst, REAL *g, int B, int T, int C,
                         const cyctc_seq *seqs, cyctc_state *states, double *norm, double *work,
                         const int64_t *offsets, int nt)
{
    const int64_t nrows = (int64_t)B * T;
    const int with_grad = g != NULL;
    int failed = 0, max_label = 0;
    for (int b = 0; b < B; b++)
        max_label = seqs[b].L > max_label ? seqs[b].L : max_label;
    const int64_t tscr_size = cyctc_thread_scratch_size(max_label);
    (void)nt;
    CYCTC_OMP(parallel num_threads(nt))
    {
        double *occ = NULL, *tscr = NULL;
        if (with_grad) {
            occ = (double *)malloc(sizeof(double) * (size_t)C);
            tscr = (double *)malloc(sizeof(double) * (size_t)tscr_size);
            if (occ == NULL || tscr == NULL) {
                CYCTC_OMP_SET_FLAG
                failed = 1;
            }
        }
        /* frame normalisers */
        CYCTC_OMP(for schedule(static))
        for (int64_t r = 0; r < nrows; r++) {
            const int b = (int)(r / T), t = (int)(r - (int64_t)b * T);
            if (t < seqs[b].T)
                SFX(cyctc_row_norm)(x + b * xsb + t * xst, C, with_grad ? g + b * xsb + t * xst : NULL, norm + 2 * r);
        }
        CYCTC_OMP(for schedule(static))
        for (int b = 0; b < B; b++)
            cyctc_prepare(&seqs[b], norm + 2 * (int64_t)b * T, work + offsets[b], &states[b]);
        /* forward and backward halves: two independent tasks per sequence */
        CYCTC_OMP(for schedule(dynamic))
        for (int64_t i = 0; i < 2 * (int64_t)B; i++) {
            const int b = (int)(i >> 1);
            double *scr = with_grad ? tscr : cyctc_loss_scratch(work + offsets[b], seqs[b].L);
            if (scr != NULL)
                SFX(cyctc_stage1)(&seqs[b], x + b * xsb, norm + 2 * (int64_t)b * T, work + offsets[b], scr, with_grad,
                                  (int)(i & 1), &states[b]);
        }
        if (!with_grad) {
            CYCTC_OMP(for schedule(dynamic))
            for (int b = 0; b < B; b++) { /* the meeting, then log space where it was not enough */
                cyctc_meet(&seqs[b], work + offsets[b], 0, &states[b]);
                SFX(cyctc_logspace)(&seqs[b], x + b * xsb, norm + 2 * (int64_t)b * T, work + offsets[b],
                                    cyctc_loss_scratch(work + offsets[b], seqs[b].L), 0, &states[b], NULL, 0, 1.0,
                                    NULL);
            }
        } else {
            CYCTC_OMP(for schedule(static))
            for (int b = 0; b < B; b++)
                cyctc_meet(&seqs[b], work + offsets[b], 1, &states[b]);
            CYCTC_OMP(for schedule(dynamic))
            for (int64_t i = 0; i < 2 * (int64_t)B; i++) {
                const int b = (int)(i >> 1);
                if (tscr != NULL && occ != NULL)
                    SFX(cyctc_stage2)(&seqs[b], x + b * xsb, norm + 2 * (int64_t)b * T, work + offsets[b], tscr,
                                      (int)(i & 1), &states[b], g + b * xsb, xst, 1.0, occ);
            }
            /* per sequence: log space where needed (it also folds in what stage 2 flagged), then the gradient rows
             * stage 2 did not write */
            CYCTC_OMP(for schedule(dynamic))
            for (int b = 0; b < B; b++) {
                if (tscr == NULL || occ == NULL)
                    continue;
                SFX(cyctc_logspace)(&seqs[b], x + b * xsb, norm + 2 * (int64_t)b * T, work + offsets[b], tscr, 1,
                                    &states[b], g + b * xsb, xst, 1.0, occ);
                for (int t = 0; t < T; t++)
                    SFX(cyctc_grad_row)(&seqs[b], &states[b], t, g + b * xsb + t * xst);
            }
        }
        free(occ);
        free(tscr);
    }
    return failed ? -1 : 0;
}

cyctc_status CAPI_NAME(const REAL *logits, int max_time, int batch_size, int num_classes, int time_major,
                       const int32_t *labels, int max_label_length, const int32_t *label_lengths,
                       const int32_t *logit_lengths, int blank, int merge_repeated, int num_threads, REAL *losses,
                       REAL *grad)
{
    const int T = max_time, B = batch_size, C = num_classes, Lmax = max_label_length;
    int blank_class = 0;
    cyctc_status st = check_args(logits, T, B, C, time_major, labels, Lmax, label_lengths, logit_lengths, blank,
                                 merge_repeated, num_threads, losses, grad, sizeof(REAL), &blank_class);
    if (st != CYCTC_STATUS_OK || B == 0)
        return st;
    const int with_grad = grad != NULL;
    const ptrdiff_t xsb = time_major ? (ptrdiff_t)C : (ptrdiff_t)T * C; /* elements between sequences */
    const ptrdiff_t xst = time_major ? (ptrdiff_t)B * C : (ptrdiff_t)C; /* elements between frames */
    const size_t nrows = (size_t)B * (size_t)T;

    cyctc_seq *seqs = (cyctc_seq *)malloc(sizeof(cyctc_seq) * (size_t)B);
    cyctc_state *states = (cyctc_state *)malloc(sizeof(cyctc_state) * (size_t)B);
    int64_t *offsets = (int64_t *)malloc(sizeof(int64_t) * ((size_t)B + 1));
    double *norm = (double *)malloc(sizeof(double) * 2 * (nrows > 0 ? nrows : 1)); /* 2 normalisers a frame */
    double *work = NULL;
    if (seqs == NULL || states == NULL || offsets == NULL || norm == NULL) {
        st = CYCTC_STATUS_OUT_OF_MEMORY;
        goto done;
    }
    {
        int64_t total = 0;
        for (int b = 0; b < B; b++) {
            const int Tb = logit_lengths != NULL ? logit_lengths[b] : T;
            seqs[b].T = Tb;
            seqs[b].C = C;
            seqs[b].L = label_lengths[b];
            seqs[b].blank = blank_class;
            seqs[b].merge_repeated = merge_repeated;
            seqs[b].labels = labels != NULL ? labels + (int64_t)b * Lmax : NULL; /* NULL only when Lmax == 0 */
            seqs[b].xs = xst;
            seqs[b].ecache = NULL; /* no probability cache: the same bits, with fewer bytes */
            seqs[b].ckpt = 1;      /* every row stored */
            seqs[b].logspace_room = -1;
            offsets[b] = total;
            total += cyctc_work_size(Tb, label_lengths[b], with_grad);
        }
        offsets[B] = total;
        if ((uint64_t)total > (uint64_t)(SIZE_MAX / sizeof(double))) {
            st = CYCTC_STATUS_OUT_OF_MEMORY;
            goto done;
        }
        work = (double *)malloc(sizeof(double) * (size_t)(total > 0 ? total : 1));
        if (work == NULL) {
            st = CYCTC_STATUS_OUT_OF_MEMORY;
            goto done;
        }
    }
    if (SFX(capi_run)(logits, xsb, xst, grad, B, T, C, seqs, states, norm, work, offsets,
                      resolve_threads(num_threads)) != 0) {
        st = CYCTC_STATUS_OUT_OF_MEMORY; /* grad is partly written; losses are not */
        goto done;
    }
    for (int b = 0; b < B; b++) {
        if (states[b].flags & CYCTC_NOMEM) {
            st = CYCTC_STATUS_OUT_OF_MEMORY; /* the log-space path of a sequence could not allocate its rows */
            goto done;
        }
    }
    for (int b = 0; b < B; b++)
        losses[b] = (REAL)states[b].loss;
done:
    free(seqs);
    free(states);
    free(offsets);
    free(norm);
    free(work);
    return st;
}
