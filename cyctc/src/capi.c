/* cyctc public C API (include/cyctc.h): argument checks, then the batch driver of the CTC kernel.
 *
 * The driver (capi_impl.h, instantiated below for float and double) is the C twin of cyctc/_cpu.pyx `_run`: one
 * OpenMP parallel region whose work-sharing loops run, in this order, the frame normalisers, cyctc_prepare, the
 * forward/backward halves of stage 1, cyctc_meet, stage 2 (gradient only), the log-space fallback and the gradient
 * rows, on the same work-space layout (one block of cyctc_work_size() doubles per sequence, back to back). Each
 * task writes only its own outputs, so the numbers are bit-identical to the Python package for any thread count.
 *
 * Compiles as C99 and as C++ (the casts of malloc's result are for C++).
 */
#include "../include/cyctc.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ctc.h"

#ifdef _OPENMP
#include <omp.h>
#define CYCTC_PRAGMA(x) _Pragma(#x)
#define CYCTC_OMP(directive) CYCTC_PRAGMA(omp directive)
#else
#define CYCTC_OMP(directive)
#endif
/* a flag every thread may set: `atomic write` needs OpenMP 3.1; MSVC's /openmp is 2.0 (_OPENMP 200203), where a
 * named critical section does the same */
#if defined(_OPENMP) && _OPENMP >= 201107
#define CYCTC_OMP_SET_FLAG CYCTC_OMP(atomic write)
#else
#define CYCTC_OMP_SET_FLAG CYCTC_OMP(critical(cyctc_flag))
#endif

const char *cyctc_status_string(int status)
{
    switch (status) {
    case CYCTC_STATUS_OK:
        return "success";
    case CYCTC_STATUS_NULL_POINTER:
        return "a required pointer argument is NULL";
    case CYCTC_STATUS_INVALID_SIZE:
        return "invalid size: max_time, batch_size and max_label_length must be >= 0, num_classes >= 1, and the "
               "arrays small enough to index";
    case CYCTC_STATUS_INVALID_FLAG:
        return "time_major and merge_repeated must be 0 or 1";
    case CYCTC_STATUS_INVALID_BLANK:
        return "blank must be in [-num_classes, num_classes)";
    case CYCTC_STATUS_INVALID_LENGTH:
        return "a label length is outside [0, max_label_length] or a logit length outside [0, max_time]";
    case CYCTC_STATUS_INVALID_LABEL:
        return "a label is outside [0, num_classes) or equal to the blank";
    case CYCTC_STATUS_INVALID_THREADS:
        return "num_threads must be nonzero (n > 0: n threads; n < 0: counts back from the core count)";
    case CYCTC_STATUS_OVERLAP:
        return "grad overlaps logits or losses";
    case CYCTC_STATUS_OUT_OF_MEMORY:
        return "cannot allocate the CTC work space";
    default:
        return "unknown status";
    }
}

int cyctc_capi_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* the thread-count rule of the Python API (cyctc._threads), with omp_get_num_procs() as the usable cores */
static int resolve_threads(int n)
{
#ifdef _OPENMP
    if (n < 0) {
        int procs = omp_get_num_procs();
        n = procs + 1 + n;
    }
    return n < 1 ? 1 : n;
#else
    (void)n;
    return 1;
#endif
}

static int byte_ranges_overlap(const void *a, size_t na, const void *b, size_t nb)
{
    const uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    if (na == 0 || nb == 0 || a == NULL || b == NULL)
        return 0;
    return pa < pb + nb && pb < pa + na;
}

/* Everything that does not depend on the dtype. On success *blank_out is the blank in [0, C). */
static cyctc_status check_args(const void *logits, int T, int B, int C, int time_major, const int32_t *labels,
                               int Lmax, const int32_t *label_lengths, const int32_t *logit_lengths, int blank,
                               int merge_repeated, int num_threads, const void *losses, const void *grad,
                               size_t item, int *blank_out)
{
    if (T < 0 || B < 0 || Lmax < 0 || C < 1)
        return CYCTC_STATUS_INVALID_SIZE;
    /* every element index, and every byte count we allocate, must fit ptrdiff_t / size_t */
    const int64_t limit = (int64_t)(PTRDIFF_MAX / 16);
    const int64_t nrows = (int64_t)B * T;
    if (nrows > limit / C || (int64_t)B * Lmax > limit)
        return CYCTC_STATUS_INVALID_SIZE;
    const int64_t n = nrows * C;
    if (time_major != 0 && time_major != 1)
        return CYCTC_STATUS_INVALID_FLAG;
    if (merge_repeated != 0 && merge_repeated != 1)
        return CYCTC_STATUS_INVALID_FLAG;
    if (num_threads == 0)
        return CYCTC_STATUS_INVALID_THREADS;
    if (blank < -C || blank >= C)
        return CYCTC_STATUS_INVALID_BLANK;
    if (blank < 0)
        blank += C;
    if ((n > 0 && logits == NULL) || (B > 0 && (label_lengths == NULL || losses == NULL)) ||
        (B > 0 && Lmax > 0 && labels == NULL))
        return CYCTC_STATUS_NULL_POINTER;
    if (grad != NULL && (byte_ranges_overlap(grad, (size_t)n * item, logits, (size_t)n * item) ||
                         byte_ranges_overlap(grad, (size_t)n * item, losses, (size_t)B * item)))
        return CYCTC_STATUS_OVERLAP;
    for (int b = 0; b < B; b++) {
        const int L = label_lengths[b];
        if (L < 0 || L > Lmax)
            return CYCTC_STATUS_INVALID_LENGTH;
        if (logit_lengths != NULL && (logit_lengths[b] < 0 || logit_lengths[b] > T))
            return CYCTC_STATUS_INVALID_LENGTH;
    }
    for (int b = 0; b < B; b++) {
        const int32_t *lab = labels + (int64_t)b * Lmax;
        for (int k = 0; k < label_lengths[b]; k++)
            if (lab[k] < 0 || lab[k] >= C || lab[k] == blank)
                return CYCTC_STATUS_INVALID_LABEL;
    }
    *blank_out = blank;
    return CYCTC_STATUS_OK;
}

#define REAL float
#define SFX(name) name##_f32
#define CAPI_NAME cyctc_ctc_loss_float
#include "capi_impl.h"
#undef REAL
#undef SFX
#undef CAPI_NAME

#define REAL double
#define SFX(name) name##_f64
#define CAPI_NAME cyctc_ctc_loss_double
#include "capi_impl.h"
#undef REAL
#undef SFX
#undef CAPI_NAME
