/*
 * cyctc per-sequence CTC decoders and forced alignment: plain C, no Python.
 *
 * Every function works on ONE sequence: its logits (or log-probabilities) are T frames of C values, frame t at
 * x + t * xs (xs in elements, the class axis contiguous). A batch driver (cyctc/_decode.pyx) calls them for many
 * sequences at once; they share no state, so any assignment of sequences to threads gives bit-identical results.
 * Internally everything is computed in double; the _f32/_f64 suffix is only how the input is read.
 *
 *   cyctc_greedy_decode_*   best path (TF's ctc_greedy_decoder): argmax per frame, optional merge of repeats,
 *                           blanks removed; neg_sum_logits = -sum_t max_c x[t, c] on the raw values
 *   cyctc_beam_search_*     prefix beam search with TF's ctc_beam_search_decoder semantics (log-softmax applied
 *                           internally; probabilities summed over the alignments the beam kept)
 *   cyctc_chain_align_*     forced alignment: the most probable frame-level path that collapses to given labels,
 *                           optionally with untranscribed stretches, and its posteriors, within a memory budget
 */
#ifndef CYCTC_DECODE_H
#define CYCTC_DECODE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* outcome codes of cyctc_beam_search_* and cyctc_viterbi_align_* */
#define CYCTC_DECODE_OK 0
#define CYCTC_DECODE_INFEASIBLE 1 /* alignment: no path of non-zero probability (too few frames or -inf scores) */
#define CYCTC_DECODE_NONFINITE 2  /* a valid frame holds NaN (or +inf): result NaN */
#define CYCTC_DECODE_POSTERIOR_LOST 3 /* alignment found; its posteriors exceed the scaled rows' range */
#define CYCTC_DECODE_NOMEM (-1)   /* out of memory: outputs undefined */
#define CYCTC_DECODE_BUDGET (-2)  /* the memory budget is below the smallest work space of the call */

/* the token of an untranscribed stretch in cyctc_chain_align_* */
#define CYCTC_GAP (-1)

/*
 * Greedy (best-path) decoding of one sequence.
 *   x, xs, T, C      T valid frames of C raw scores (logits or log-probabilities)
 *   blank            the blank class in [0, C)
 *   merge_repeated   1: a frame whose argmax equals the previous frame's argmax (blank included) emits nothing
 *   out              receives the decoded classes (room for T values)
 *   neg_sum_logits   receives -sum_t max_c x[t, c]
 * The argmax of a frame is the first maximal class (x[t, c] > running max), as in TF. Returns the decoded length.
 */
int cyctc_greedy_decode_f32(const float *x, ptrdiff_t xs, int T, int C, int blank, int merge_repeated,
                            int32_t *out, double *neg_sum_logits);
int cyctc_greedy_decode_f64(const double *x, ptrdiff_t xs, int T, int C, int blank, int merge_repeated,
                            int32_t *out, double *neg_sum_logits);

/*
 * Prefix beam search of one sequence (TF's CTCBeamSearchDecoder with the default scorer).
 *   x, xs, T, C      T valid frames of C logits; each frame is log-softmax normalised internally
 *   blank            the blank class (TF: C - 1); children are grown for every other class
 *   beam_width       >= 1; top_paths in [1, beam_width]
 *   merge_repeated   1: equal neighbours of a returned sequence are collapsed (TF1's merge_repeated=True)
 *   paths            path k (best first) goes to paths + k * path_stride (room for T values each)
 *   lengths, log_probs  top_paths entries: the length of each path and log P accumulated in the beam.
 *                    When the beam holds fewer than top_paths entries, the rest get length 0 and -inf.
 * Returns CYCTC_DECODE_OK, CYCTC_DECODE_NONFINITE (a frame whose log-softmax is not finite: every length 0,
 * every log_prob NaN) or CYCTC_DECODE_NOMEM.
 */
int cyctc_beam_search_f32(const float *x, ptrdiff_t xs, int T, int C, int blank, int beam_width, int top_paths,
                          int merge_repeated, int32_t *paths, ptrdiff_t path_stride, int32_t *lengths,
                          double *log_probs);
int cyctc_beam_search_f64(const double *x, ptrdiff_t xs, int T, int C, int blank, int beam_width, int top_paths,
                          int merge_repeated, int32_t *paths, ptrdiff_t path_stride, int32_t *lengths,
                          double *log_probs);

/*
 * Alignment of one sequence to a chain of tokens (see decode.c, "chain alignment", for the graph and the rules).
 *   x, xs, T, C      T valid frames of C log-probabilities (used as given, or log-softmax normalised first
 *                    when normalize is 1)
 *   tokens, n        label classes in [0, C), never the blank, or CYCTC_GAP: a stretch of untranscribed audio of
 *                    any length (zero frames included); no two gaps next to each other. Labels only: CTC.
 *   gap_penalty      an untranscribed frame scores the frame's best log-probability minus gap_penalty (>= 0)
 *   budget           bytes of work space this call may allocate (see cyctc_chain_work_bytes)
 *   path             receives T states of the best path: state 2j + 1 is token j, even states are blanks
 *   log_prob         receives the best path's score
 *   post             NULL, or receives T posteriors: the probability of the path's state at each frame over all
 *                    paths of the graph
 *   nthreads         threads for this one sequence (OpenMP; 2 are used at most, in the Viterbi's first pass; the
 *                    results are the same bits for any count). Called from inside a parallel region, nested
 *                    parallelism decides whether the second thread runs.
 * Returns CYCTC_DECODE_OK; CYCTC_DECODE_INFEASIBLE (path all -1, log_prob -inf); CYCTC_DECODE_NONFINITE (NaN or
 * +inf in a valid frame: path all -1, log_prob NaN); CYCTC_DECODE_BUDGET (the budget is below the minimum: see
 * cyctc_chain_work_bytes); CYCTC_DECODE_POSTERIOR_LOST (path and log_prob are valid, the posteriors could not be
 * represented: post all NaN); CYCTC_DECODE_NOMEM. post is all NaN unless the result is OK.
 */
int cyctc_chain_align_f32(const float *x, ptrdiff_t xs, int64_t T, int C, const int32_t *tokens, int64_t n,
                          int blank, int normalize, double gap_penalty, double budget, int32_t *path,
                          double *log_prob, double *post, int nthreads);
int cyctc_chain_align_f64(const double *x, ptrdiff_t xs, int64_t T, int C, const int32_t *tokens, int64_t n,
                          int blank, int normalize, double gap_penalty, double budget, int32_t *path,
                          double *log_prob, double *post, int nthreads);

/*
 * The work space cyctc_chain_align_* allocates for T frames, C classes and n tokens (with posteriors: the larger
 * of its two phases, which run one after the other) within budget bytes: a positive byte count, or minus the
 * smallest budget that works when budget is below it.
 */
double cyctc_chain_work_bytes(int64_t T, int C, int64_t n, int posteriors, double budget);

/* Test hooks of the posteriors' band (decode.c, "posteriors in a band"): the first band's half-width in states
 * (default 512), and the half-width the last alignment with posteriors finished with (the whole row: S or more).
 * decode.c reads and writes them as relaxed atomics (no data race when alignments run in parallel). */
extern int cyctc_chain_band_init;
extern int64_t cyctc_chain_band_last;
/* Test hook: the plan of the last alignment's posteriors, 2 * levels + 1 when its two halves had rows of their own
 * (run at the same time when two threads are given) or 2 * levels when they shared all but their top levels' rows
 * (decode.c, "two halves"); 0 before any. A relaxed atomic, as the band's. */
extern int cyctc_chain_fb_plan_last;
/* Test hook: the mass that left the band forwards and backwards ([0], [1]) in the last alignment's posteriors, at the
 * band it finished with (the sums that decide the widening: the same bits for every thread count and budget) */
extern double cyctc_chain_leak_last[2];

#ifdef __cplusplus
}
#endif

#endif /* CYCTC_DECODE_H */
