/* Driver of tests/test_chain_c.py: the chain alignment kernel (src/decode.c) compiled on its own, run on random
 * problems (labels, repeats, gaps, normalised or not, gap penalties) at budgets from the minimum up: every budget
 * must give the same path, score and posteriors, bit for bit, and a budget below the minimum CYCTC_DECODE_BUDGET.
 * Built with the sanitizers when the compiler has them, so that the arena's layout is checked too. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "decode.h"

static double urand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffffff) / 16777216.0;
}

int main(void)
{
    unsigned seed = 1;
    int checked = 0;
    for (int trial = 0; trial < 300; trial++) {
        const int T = 1 + (int)(urand(&seed) * 80), C = 2 + (int)(urand(&seed) * 5), n = (int)(urand(&seed) * 12);
        double *x = malloc(sizeof(double) * (size_t)(T * C));
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)(n + 1));
        int32_t *p0 = malloc(4 * (size_t)T), *p1 = malloc(4 * (size_t)T);
        double *q0 = malloc(8 * (size_t)T), *q1 = malloc(8 * (size_t)T), l0, l1;
        for (int i = 0; i < T * C; i++)
            x[i] = log(urand(&seed) + 1e-3);
        for (int j = 0; j < n; j++) {
            tok[j] = 1 + (int)(urand(&seed) * (C - 1));
            if (urand(&seed) < 0.25 && (j == 0 || tok[j - 1] != CYCTC_GAP))
                tok[j] = CYCTC_GAP;
        }
        const double need = -cyctc_chain_work_bytes(T, C, n, 1, 0.0), pen = 0.1 * (trial % 3);
        const int norm = trial % 2;
        const int r0 = cyctc_chain_align_f64(x, C, T, C, tok, n, 0, norm, pen, 1e9, p0, &l0, q0, 1);
        const double budgets[3] = {need, need * 1.7, need * 4};
        for (int k = 0; k < 3; k++) {
            /* one or two threads: the same bits */
            const int r1 =
                cyctc_chain_align_f64(x, C, T, C, tok, n, 0, norm, pen, budgets[k], p1, &l1, q1, 1 + (k & 1));
            if (r1 != r0 || (r0 == 0 && l0 != l1)) {
                printf("trial %d budget %.0f: rc %d vs %d\n", trial, budgets[k], r1, r0);
                return 1;
            }
            for (int t = 0; t < T; t++) {
                if (p0[t] != p1[t] || (q0[t] != q1[t] && !(isnan(q0[t]) && isnan(q1[t])))) {
                    printf("trial %d budget %.0f: frame %d differs\n", trial, budgets[k], t);
                    return 1;
                }
            }
        }
        if (r0 == CYCTC_DECODE_OK) {
            checked++;
            if (cyctc_chain_align_f64(x, C, T, C, tok, n, 0, norm, pen, need - 1, p1, &l1, q1, 2) != CYCTC_DECODE_BUDGET) {
                printf("trial %d: no CYCTC_DECODE_BUDGET below the minimum\n", trial);
                return 1;
            }
        }
        free(x);
        free(tok);
        free(p0);
        free(p1);
        free(q0);
        free(q1);
    }
    printf("ok %d\n", checked);
    return checked > 50 ? 0 : 1;
}
