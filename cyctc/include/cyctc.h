/*
 * cyctc.h -- the public C API of cyctc: CTC loss and gradient for C and C++ programs, no Python involved.
 *
 * The functions below run the same per-sequence kernel (cyctc/src/ctc.c) in the same order as the Python package
 * (cyctc.ctc_loss), so for the same inputs they return bit-identical numbers, for any thread count.
 *
 * Shapes: B batch, T frames (max_time), C classes (blank included), Lmax = max_label_length.
 *
 * Compiling and linking (the package ships the sources, there is no library to link):
 *
 *     INC=$(python -c 'import cyctc; print(cyctc.get_include())')
 *     SRC=$(python -c 'import cyctc; print(" ".join(cyctc.get_sources()))')
 *     gcc -O2 -ffp-contract=off -fopenmp -c $SRC                 # ctc.o capi.o (C99; g++ compiles them as C++ too)
 *     g++ -O2 -ffp-contract=off -fopenmp -I"$INC" my-ctc-bin.cc ctc.o capi.o -o my-ctc-bin
 *
 * -ffp-contract=off (as the package's own build) keeps the results bit-identical to the Python API on the same
 * machine. Without -fopenmp everything runs on one thread (same results). README.md, "C API", has a whole program.
 *
 * Example:
 *
 *     #include <cyctc.h>
 *     float loss[2];
 *     cyctc_status st = cyctc_ctc_loss_float(logits, T, 2, C, 1, labels, Lmax, label_lengths, NULL,
 *                                            0, 1, CYCTC_THREADS_ALL, loss, grad);
 *     if (st != CYCTC_STATUS_OK)
 *         fprintf(stderr, "cyctc: %s\n", cyctc_status_string(st));
 */
#ifndef CYCTC_PUBLIC_H
#define CYCTC_PUBLIC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this API (incremented when a declaration changes). */
#define CYCTC_API_VERSION 1

/* num_threads value meaning "all cores this process may run on" (omp_get_num_procs()). */
#define CYCTC_THREADS_ALL (-1)

/* Outcome of a call. Every argument is checked before any work is done. */
typedef enum cyctc_status {
    CYCTC_STATUS_OK = 0,
    CYCTC_STATUS_NULL_POINTER = 1,   /* a required pointer is NULL (see each argument for when NULL is allowed) */
    CYCTC_STATUS_INVALID_SIZE = 2,   /* max_time, batch_size or max_label_length < 0, num_classes < 1, or the arrays
                                        are too large to index */
    CYCTC_STATUS_INVALID_FLAG = 3,   /* time_major or merge_repeated is not 0 or 1 */
    CYCTC_STATUS_INVALID_BLANK = 4,  /* blank outside [-C, C) */
    CYCTC_STATUS_INVALID_LENGTH = 5, /* a label length outside [0, Lmax] or a logit length outside [0, T] */
    CYCTC_STATUS_INVALID_LABEL = 6,  /* a label (within its label length) outside [0, C) or equal to the blank */
    CYCTC_STATUS_INVALID_THREADS = 7, /* num_threads == 0 */
    CYCTC_STATUS_OVERLAP = 8,        /* grad overlaps logits or losses (outputs must not alias the inputs) */
    CYCTC_STATUS_OUT_OF_MEMORY = 9   /* work space could not be allocated */
} cyctc_status;

/* A static, human-readable description of a status code (never NULL; unknown codes get "unknown status"). */
const char *cyctc_status_string(int status);

/*
 * CTC loss of each sequence of a batch, and optionally its gradient with respect to the logits.
 *
 * logits          T * B * C values, C-contiguous, laid out (T, B, C) when time_major == 1, (B, T, C) when 0.
 *                 Unnormalised scores: a softmax over the class axis is applied. Log-probabilities may be given
 *                 as they are (their softmax is themselves). Never modified. May be NULL only when T * B * C == 0.
 * max_time        T >= 0, batch_size B >= 0, num_classes C >= 1.
 * time_major      1: (T, B, C); 0: (B, T, C). Applies to logits and grad.
 * labels          B * Lmax class numbers, row-major (B, Lmax); row b holds label_lengths[b] labels followed by
 *                 anything (padding is never read). Each label is in [0, C) and differs from the blank. Class
 *                 numbers are never renumbered, whatever the blank. May be NULL when B == 0 or Lmax == 0.
 * max_label_length  Lmax >= 0, the row length of labels.
 * label_lengths   B values in [0, Lmax]. May be NULL only when B == 0.
 * logit_lengths   B values in [0, T]: the valid frames of each sequence. NULL means every sequence has T frames.
 * blank           the blank class, in [-C, C); negative values count from C (-1 is the last class).
 * merge_repeated  1: standard CTC (a run of one class is one label; equal adjacent labels need a blank between
 *                 them). 0: TensorFlow 1's ctc_merge_repeated=False model (every frame of a label is a separate
 *                 emission; label states have no self-loop).
 * num_threads     n > 0: n OpenMP threads; n < 0 counts back from the cores this process may use
 *                 (CYCTC_THREADS_ALL = -1: all of them, -2: all but one; at least 1); 0 is an error
 *                 (CYCTC_STATUS_INVALID_THREADS), as in the Python API. Results do not depend on it.
 * losses          output, B values: -log p(labels[b] | logits[b]) computed in double precision, rounded once to
 *                 the output type. +inf for an infeasible sequence (fewer valid frames than labels plus adjacent
 *                 repeats); NaN when a valid frame holds a NaN or infinite logit; 0 when T_b == 0 and L_b == 0.
 *                 May be NULL only when B == 0.
 * grad            output or NULL (loss only, faster). Same shape and layout as logits: d losses[b] / d logits,
 *                 i.e. softmax - state occupancy, on the valid frames; exactly 0 on frames t >= logit_lengths[b]
 *                 and for infeasible sequences; NaN on the valid frames of a sequence whose loss is NaN. Every
 *                 element is written. Must not overlap logits or losses.
 *
 * Returns CYCTC_STATUS_OK, or an error status: then nothing has been written, except after
 * CYCTC_STATUS_OUT_OF_MEMORY, when grad may be partly written.
 * Thread safety: the functions keep no global state; concurrent calls on distinct outputs are safe.
 */
cyctc_status cyctc_ctc_loss_float(const float *logits, int max_time, int batch_size, int num_classes,
                                  int time_major, const int32_t *labels, int max_label_length,
                                  const int32_t *label_lengths, const int32_t *logit_lengths, int blank,
                                  int merge_repeated, int num_threads, float *losses, float *grad);

/* The same in double precision. */
cyctc_status cyctc_ctc_loss_double(const double *logits, int max_time, int batch_size, int num_classes,
                                   int time_major, const int32_t *labels, int max_label_length,
                                   const int32_t *label_lengths, const int32_t *logit_lengths, int blank,
                                   int merge_repeated, int num_threads, double *losses, double *grad);

/* 1 when these sources were compiled with OpenMP (else every call runs on one thread). */
int cyctc_capi_openmp_enabled(void);

#ifdef __cplusplus
} /* extern "C" */

/* C++ convenience: one overloaded name for both precisions (for templated code such as Kaldi's BaseFloat). */
namespace cyctc {
inline cyctc_status ctc_loss(const float *logits, int max_time, int batch_size, int num_classes, int time_major,
                             const int32_t *labels, int max_label_length, const int32_t *label_lengths,
                             const int32_t *logit_lengths, int blank, int merge_repeated, int num_threads,
                             float *losses, float *grad)
{
    return cyctc_ctc_loss_float(logits, max_time, batch_size, num_classes, time_major, labels, max_label_length,
                                label_lengths, logit_lengths, blank, merge_repeated, num_threads, losses, grad);
}
inline cyctc_status ctc_loss(const double *logits, int max_time, int batch_size, int num_classes, int time_major,
                             const int32_t *labels, int max_label_length, const int32_t *label_lengths,
                             const int32_t *logit_lengths, int blank, int merge_repeated, int num_threads,
                             double *losses, double *grad)
{
    return cyctc_ctc_loss_double(logits, max_time, batch_size, num_classes, time_major, labels, max_label_length,
                                 label_lengths, logit_lengths, blank, merge_repeated, num_threads, losses, grad);
}
} /* namespace cyctc */
#endif

#endif /* CYCTC_PUBLIC_H */
