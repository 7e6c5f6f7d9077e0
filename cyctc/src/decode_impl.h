/* The dtype-dependent half of decode.c, included once with REAL = float (SFX: _f32) and once with REAL = double
 * (SFX: _f64). Frames are read as REAL and turned into double rows for the engines in decode.c. */

/* out = the frame as double (log-softmax normalised when normalize); 1 when it holds NaN or +inf (or, when
 * normalising, only -inf), which makes its probabilities undefined */
static int SFX(load_row)(const REAL *r, int C, int normalize, double *out)
{
    double m = NEG_INF;
    int bad = 0;
    for (int c = 0; c < C; c++) {
        const double v = (double)r[c];
        out[c] = v;
        bad |= (v != v) | (v == INFINITY);
        m = v > m ? v : m;
    }
    if (bad)
        return 1;
    if (normalize) {
        if (m == NEG_INF)
            return 1;
        /* (x - m) - log(s), never x - (m + log s): once |m| is large, m + log(s) rounds log(s) away (logits all
         * 1e30 would look certain); x - m is exact near the maximum, so the result keeps its precision at any
         * magnitude or shift */
        double sum = 0.0;
        for (int c = 0; c < C; c++)
            sum += exp(out[c] - m);
        const double log_sum = log(sum);
        for (int c = 0; c < C; c++)
            out[c] = (out[c] - m) - log_sum;
    }
    return 0;
}

int SFX(cyctc_greedy_decode)(const REAL *x, ptrdiff_t xs, int T, int C, int blank, int merge_repeated,
                             int32_t *out, double *neg_sum_logits)
{
    double acc = 0.0;
    int n = 0, prev = -1;
    for (int t = 0; t < T; t++) {
        const REAL *r = x + t * xs;
        REAL m = r[0];
        int arg = 0;
        for (int c = 1; c < C; c++) {
            if (r[c] > m) {
                m = r[c];
                arg = c;
            }
        }
        acc -= (double)m;
        if (arg != blank && !(merge_repeated && arg == prev))
            out[n++] = arg;
        prev = arg;
    }
    *neg_sum_logits = acc;
    return n;
}

int SFX(cyctc_beam_search)(const REAL *x, ptrdiff_t xs, int T, int C, int blank, int beam_width, int top_paths,
                           int merge_repeated, int32_t *paths, ptrdiff_t path_stride, int32_t *lengths,
                           double *log_probs)
{
    double *row = (double *)malloc((size_t)C * sizeof(double));
    beam_state s;
    if (!row)
        return CYCTC_DECODE_NOMEM;
    if (beam_init(&s, C, blank, beam_width) != CYCTC_DECODE_OK) {
        free(row);
        return CYCTC_DECODE_NOMEM;
    }
    int rc = CYCTC_DECODE_OK;
    for (int t = 0; t < T && rc == CYCTC_DECODE_OK; t++) {
        if (SFX(load_row)(x + t * xs, C, 1, row))
            rc = CYCTC_DECODE_NONFINITE;
        else
            rc = beam_step(&s, row);
    }
    if (rc == CYCTC_DECODE_OK) {
        beam_finish(&s, top_paths, merge_repeated, paths, path_stride, lengths, log_probs);
    } else if (rc == CYCTC_DECODE_NONFINITE) {
        for (int k = 0; k < top_paths; k++) {
            lengths[k] = 0;
            log_probs[k] = NAN;
        }
    }
    beam_free(&s);
    free(row);
    return rc;
}

static int SFX(chain_load)(const void *x, ptrdiff_t xs, int64_t t, int C, int normalize, double *out)
{
    return SFX(load_row)((const REAL *)x + t * xs, C, normalize, out);
}

int SFX(cyctc_chain_align)(const REAL *x, ptrdiff_t xs, int64_t T, int C, const int32_t *tokens, int64_t n,
                           int blank, int normalize, double gap_penalty, double budget, int32_t *path,
                           double *log_prob, double *post, int nthreads)
{
    return cyctc_chain_run(x, xs, SFX(chain_load), T, C, tokens, n, blank, normalize, gap_penalty, budget, path,
                           log_prob, post, nthreads);
}
