# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""CPU backend: the batch loops of the CTC loss, run under ``nogil`` with OpenMP ``prange``.

Three layers (see src/ctc.h for the kernel's plan):

* ``src/ctc.c`` -- per-frame and per-sequence C functions (no Python);
* ``_run`` below -- one OpenMP parallel region whose ``prange`` loops walk frames (normalisers), sequence halves
  (the forward and backward recursions run as two independent tasks per sequence, so even a single long utterance
  keeps two threads busy; the second half-pass writes the gradient rows) and sequences (meeting, log-space
  fallback, the gradient rows of padding and of the fallback);
* ``ctc_loss_grad`` -- takes arrays already validated by ``cyctc._args`` and allocates the work space.

Arguments arrive validated: no check here is a user-facing one. Scratch memory comes from PyMem_RawMalloc
(callable without the GIL), so tracemalloc sees it.
"""
from cython.parallel cimport parallel, prange
from libc.stdint cimport int32_t, int64_t
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef extern from "src/omp_compat.h":
    int cyctc_openmp_enabled() noexcept nogil
    int cyctc_omp_max_threads() noexcept nogil

cdef extern from "src/ctc.h":
    int CYCTC_LOGSPACE
    int CYCTC_NOMEM
    int CYCTC_OVERBUDGET
    ctypedef struct cyctc_seq:
        int T
        int C
        int L
        int blank
        int merge_repeated
        const int32_t *labels
        Py_ssize_t xs
        double *ecache
        int64_t logspace_room
        int ckpt
    ctypedef struct cyctc_state:
        int flags
        int M
        double loss
    int64_t cyctc_work_size(int T, int L, int with_grad) noexcept nogil
    int64_t cyctc_thread_scratch_size(int Lmax) noexcept nogil
    int64_t cyctc_row_width(int L) noexcept nogil
    int64_t cyctc_grad_work_size(int T, int L, int k) noexcept nogil
    int64_t cyctc_ecache_size(const cyctc_seq *q) noexcept nogil
    double *cyctc_loss_scratch(double *work, int L) noexcept nogil
    void cyctc_prepare(const cyctc_seq *q, const double *norm, double *work, cyctc_state *st) noexcept nogil
    void cyctc_meet(const cyctc_seq *q, double *work, int with_grad, cyctc_state *st) noexcept nogil
    void cyctc_row_norm_f32(const float *x, int C, float *softmax, double *norm) noexcept nogil
    void cyctc_row_norm_f64(const double *x, int C, double *softmax, double *norm) noexcept nogil
    void cyctc_stage1_f32(const cyctc_seq *q, const float *x, const double *norm, double *work, double *scratch, int with_grad,
                          int backward, cyctc_state *st) noexcept nogil
    void cyctc_stage1_f64(const cyctc_seq *q, const double *x, const double *norm, double *work, double *scratch, int with_grad,
                          int backward, cyctc_state *st) noexcept nogil
    void cyctc_stage2_f32(const cyctc_seq *q, const float *x, const double *norm, double *work, double *scratch, int backward,
                          cyctc_state *st, float *g, Py_ssize_t gs, double scale, double *occ) noexcept nogil
    void cyctc_stage2_f64(const cyctc_seq *q, const double *x, const double *norm, double *work, double *scratch, int backward,
                          cyctc_state *st, double *g, Py_ssize_t gs, double scale, double *occ) noexcept nogil
    void cyctc_logspace_f32(const cyctc_seq *q, const float *x, const double *norm, double *work, double *scratch, int with_grad,
                            cyctc_state *st, float *g, Py_ssize_t gs, double scale, double *occ) noexcept nogil
    void cyctc_logspace_f64(const cyctc_seq *q, const double *x, const double *norm, double *work, double *scratch, int with_grad,
                            cyctc_state *st, double *g, Py_ssize_t gs, double scale, double *occ) noexcept nogil
    void cyctc_grad_row_f32(const cyctc_seq *q, const cyctc_state *st, int t, float *g) noexcept nogil
    void cyctc_grad_row_f64(const cyctc_seq *q, const cyctc_state *st, int t, double *g) noexcept nogil

ctypedef fused real:
    float
    double

# Work (in logit elements and state updates) below which one more thread costs more than it saves: small calls
# run on fewer threads. Results do not depend on the thread count, so this only changes the speed.
DEF MIN_WORK_PER_THREAD = 60000


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(cyctc_openmp_enabled())


def omp_max_threads():
    """OpenMP's default team size (OMP_NUM_THREADS when set), 1 without OpenMP."""
    return cyctc_omp_max_threads()


cdef inline void _row_norm(const real *x, int C, real *softmax, double *norm) noexcept nogil:
    if real is float:
        cyctc_row_norm_f32(x, C, softmax, norm)
    else:
        cyctc_row_norm_f64(x, C, softmax, norm)


cdef inline void _stage1(const cyctc_seq *q, const real *x, const double *norm, double *work, double *scratch, int with_grad,
                         int backward, cyctc_state *st) noexcept nogil:
    if real is float:
        cyctc_stage1_f32(q, x, norm, work, scratch, with_grad, backward, st)
    else:
        cyctc_stage1_f64(q, x, norm, work, scratch, with_grad, backward, st)


cdef inline void _stage2(const cyctc_seq *q, const real *x, const double *norm, double *work, double *scratch, int backward,
                         cyctc_state *st, real *g, Py_ssize_t gs, double scale, double *occ) noexcept nogil:
    if real is float:
        cyctc_stage2_f32(q, x, norm, work, scratch, backward, st, g, gs, scale, occ)
    else:
        cyctc_stage2_f64(q, x, norm, work, scratch, backward, st, g, gs, scale, occ)


cdef inline void _logspace(const cyctc_seq *q, const real *x, const double *norm, double *work, double *scratch, int with_grad,
                           cyctc_state *st, real *g, Py_ssize_t gs, double scale, double *occ) noexcept nogil:
    if real is float:
        cyctc_logspace_f32(q, x, norm, work, scratch, with_grad, st, g, gs, scale, occ)
    else:
        cyctc_logspace_f64(q, x, norm, work, scratch, with_grad, st, g, gs, scale, occ)


cdef inline void _grad_row(const cyctc_seq *q, const cyctc_state *st, int t, real *g) noexcept nogil:
    if real is float:
        cyctc_grad_row_f32(q, st, t, g)
    else:
        cyctc_grad_row_f64(q, st, t, g)


cdef inline double *_scratch(double *work, int L, double *thread_scratch, int with_grad) noexcept nogil:
    """Where a task's scratch lives (see src/ctc.h): the thread's for gradient calls, the sequence's otherwise."""
    return thread_scratch if with_grad else cyctc_loss_scratch(work, L)


cdef inline int _row_b(Py_ssize_t r, bint t_outer, int B, int T) noexcept nogil:
    """Example of row r of the frame loops, which walk frames in memory order (t outer for time-major logits)."""
    return <int>(r - (r // B) * B) if t_outer else <int>(r // T)


cdef inline int _row_t(Py_ssize_t r, bint t_outer, int B, int T) noexcept nogil:
    """Frame of row r of the frame loops (see _row_b)."""
    return <int>(r // B) if t_outer else <int>(r - (r // T) * T)


cdef int _run(const real *x, Py_ssize_t xsb, Py_ssize_t xst, real *g, Py_ssize_t gsb, Py_ssize_t gst,
              int B, int T, int C, const cyctc_seq *seqs, cyctc_state *states, double *norm,
              double *work, const int64_t *offsets, const double *scale, int nt) noexcept nogil:
    """Returns 0, or -1 when a thread's scratch could not be allocated."""
    cdef Py_ssize_t r, i, nrows = <Py_ssize_t>B * T
    cdef int b, t, failed = 0
    cdef int *failed_p = &failed      # written through a pointer so it stays shared in the parallel block
    cdef int with_grad = g != NULL
    cdef bint t_outer = xst > xsb
    cdef double *occ
    cdef double *tscr
    cdef int64_t tscr_size = 0
    cdef int max_label = 0
    for b in range(B):
        max_label = max(max_label, seqs[b].L)
    tscr_size = cyctc_thread_scratch_size(max_label)
    with parallel(num_threads=nt):
        occ = NULL
        tscr = NULL
        if with_grad:
            occ = <double *>malloc(sizeof(double) * C)  # O(threads x C), plain malloc: no GIL games
            tscr = <double *>malloc(sizeof(double) * tscr_size)  # the recursion's scratch: O(threads x Lmax)
            if occ == NULL or tscr == NULL:
                failed_p[0] = 1
        # frame normalisers
        # (frames are visited in memory order: t outer for time-major logits, b outer for batch-major)
        for r in prange(nrows, schedule='static'):
            b = _row_b(r, t_outer, B, T)
            t = _row_t(r, t_outer, B, T)
            if t < seqs[b].T:
                _row_norm(x + b * xsb + t * xst, C, g + b * gsb + t * gst if with_grad else NULL,
                          norm + 2 * (<Py_ssize_t>b * T + t))
        for b in prange(B, schedule='static'):
            cyctc_prepare(&seqs[b], norm + 2 * <Py_ssize_t>b * T, work + offsets[b], &states[b])
        # forward and backward halves: two independent tasks per sequence
        for i in prange(2 * B, schedule='dynamic'):
            b = i >> 1
            if with_grad and tscr == NULL:
                continue  # out of memory: reported after the region
            _stage1(&seqs[b], x + b * xsb, norm + 2 * <Py_ssize_t>b * T, work + offsets[b],
                    _scratch(work + offsets[b], seqs[b].L, tscr, with_grad), with_grad, i & 1,
                    &states[b])
        if not with_grad:
            for b in prange(B, schedule='dynamic'):  # the meeting, then log space where it was not enough
                cyctc_meet(&seqs[b], work + offsets[b], 0, &states[b])
                _logspace(&seqs[b], x + b * xsb, norm + 2 * <Py_ssize_t>b * T, work + offsets[b],
                          cyctc_loss_scratch(work + offsets[b], seqs[b].L), 0, &states[b], NULL, 0, 1.0, NULL)
        else:
            for b in prange(B, schedule='static'):
                cyctc_meet(&seqs[b], work + offsets[b], 1, &states[b])
            for i in prange(2 * B, schedule='dynamic'):
                b = i >> 1
                if tscr == NULL or occ == NULL:
                    continue
                _stage2(&seqs[b], x + b * xsb, norm + 2 * <Py_ssize_t>b * T, work + offsets[b], tscr, i & 1, &states[b],
                        g + b * gsb, gst, scale[b], occ)
            # per sequence: log space where the scaled path was not enough (it also folds in what stage 2 flagged),
            # then the gradient rows stage 2 did not write (padding, and the cases in cyctc_grad_row)
            for b in prange(B, schedule='dynamic'):
                if tscr == NULL or occ == NULL:
                    continue
                _logspace(&seqs[b], x + b * xsb, norm + 2 * <Py_ssize_t>b * T, work + offsets[b], tscr, 1, &states[b],
                          g + b * gsb, gst, scale[b], occ)
                for t in range(T):
                    _grad_row(&seqs[b], &states[b], t, g + b * gsb + t * gst)
        free(occ)
        free(tscr)
    return -1 if failed else 0


cdef double _CHOSEN  # marks the sequences given a probability cache before the work space exists


cdef inline int _best_ckpt(int T, int L) noexcept nogil:
    """The checkpoint interval k that stores the fewest rows of one sequence's gradient call (about sqrt(T / 2))."""
    cdef int k = 2, c
    cdef int64_t best = cyctc_grad_work_size(T, L, 2), w
    c = 2
    while <int64_t>c * c <= T + 1:
        c += 1
    for c in range(max(2, c // 2 - 2), c + 3):
        w = cyctc_grad_work_size(T, L, c)
        if w < best:
            best = w
            k = c
    return k


def ctc_loss_grad(cnp.ndarray x, cnp.ndarray labels, cnp.ndarray label_length, cnp.ndarray logit_length,
                  int blank, bint merge_repeated, cnp.ndarray grad, cnp.ndarray grad_scale, int num_threads,
                  cnp.ndarray flags_out=None, double cache_room=-1, int64_t memory_limit=0, int force_ckpt=0):
    """CTC loss (and gradient into ``grad`` when it is not None) of validated, normalised arguments.

    x: float32/float64 (B, T, C), class axis contiguous, any other strides. labels: int32 (B, Lmax) C-contiguous.
    label_length, logit_length: int32 (B,). grad: None or an array like x (written). grad_scale: float64 (B,), or
    None for all 1. Returns float64 (B,) losses. flags_out (tests): None or int32 (B,), receives each sequence's
    CYCTC_* flags (4 = CYCTC_LOGSPACE: the scaled recursion handed the sequence to the log-space path).
    cache_room (tests): doubles available for stage 2's probability caches, -1 = what the memory bound leaves.
    memory_limit: bytes of work space the call may use (0: no bound). Over it, gradient calls keep a row every k
    frames (the same results) and sequences are run a group at a time; a bound below what the largest sequence
    needs alone raises MemoryError naming that minimum. force_ckpt (tests): k > 1 for every sequence.

    The work space counted: the frame normalisers and per-sequence records, each thread's scratch, the sequences'
    rows (and the lost-mass rows a gradient task may keep), the probability caches. Not counted: the log-space
    fallback's rows (the rare path: 48 bytes a state-frame of a sequence that takes it).
    """
    cdef int B = x.shape[0], T = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x)
    cdef Py_ssize_t xsb = x.strides[0] // item, xst = x.strides[1] // item
    cdef Py_ssize_t gsb = 0, gst = 0
    cdef Py_ssize_t Lmax = labels.shape[1]
    cdef const int32_t *lab = <const int32_t *>cnp.PyArray_DATA(labels)
    cdef const int32_t *ll = <const int32_t *>cnp.PyArray_DATA(label_length)
    cdef const int32_t *tl = <const int32_t *>cnp.PyArray_DATA(logit_length)
    cdef const double *scale = NULL
    cdef int with_grad = grad is not None
    cdef int b, b0, b1, rc = 0, nt
    cdef int64_t total = 0, work_units, cache_total = 0, max_ll = 0, cache_b, fixed, limit, chunk, need, w_b
    cdef double room
    cdef bint planned = False
    cdef Py_ssize_t nnorm = 2 * max(<Py_ssize_t>B * T, 1)  # 2 normalisers a frame
    cdef Py_ssize_t nones = B if with_grad and grad_scale is None else 0
    cdef char *state = NULL  # one block for everything but the work space (whose size it helps to find)
    cdef cyctc_seq *seqs = NULL
    cdef cyctc_state *states = NULL
    cdef int64_t *offsets = NULL
    cdef double *norm = NULL
    cdef double *ones = NULL
    cdef double *work = NULL
    cdef cnp.npy_intp nb = B
    # the C API, not np.empty: this function's fixed cost matters for small calls
    cdef cnp.ndarray loss = cnp.PyArray_EMPTY(1, &nb, cnp.NPY_FLOAT64, 0)
    cdef double *lossp = <double *>cnp.PyArray_DATA(loss)
    cdef int *flagsp = <int *>cnp.PyArray_DATA(flags_out) if flags_out is not None else NULL
    cdef bint is_f32 = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT
    cdef char *xp = <char *>cnp.PyArray_DATA(x)
    cdef char *gp = NULL
    if with_grad:
        gp = <char *>cnp.PyArray_DATA(grad)
        gsb = grad.strides[0] // item
        gst = grad.strides[1] // item
        if grad_scale is not None:
            scale = <const double *>cnp.PyArray_DATA(grad_scale)
    if B == 0:
        return loss
    try:
        # doubles first (malloc's alignment), then the 8-byte-aligned structs: every part stays aligned
        state = <char *>PyMem_RawMalloc(sizeof(double) * (nnorm + nones) + sizeof(int64_t) * (B + 1)
                                        + (sizeof(cyctc_state) + sizeof(cyctc_seq)) * <size_t>B)
        if state == NULL:
            raise MemoryError("cyctc: cannot allocate the per-sequence state")
        norm = <double *>state
        ones = norm + nnorm
        offsets = <int64_t *>(ones + nones)
        states = <cyctc_state *>(offsets + B + 1)
        seqs = <cyctc_seq *>(states + B)
        # in doubles; a budget of 1..7 bytes is 1 double (not 0, which would mean no bound)
        limit = max(memory_limit // 8, 1) if memory_limit > 0 else 0
        with nogil:
            for b in range(B):
                seqs[b].T = tl[b]
                seqs[b].C = C
                seqs[b].L = ll[b]
                seqs[b].blank = blank
                seqs[b].merge_repeated = merge_repeated
                seqs[b].labels = lab + <Py_ssize_t>b * Lmax
                seqs[b].xs = xst
                seqs[b].ecache = NULL
                seqs[b].ckpt = 1
                seqs[b].logspace_room = -1
                offsets[b] = total
                total += cyctc_work_size(tl[b], ll[b], with_grad)
                max_ll = max(max_ll, <int64_t>ll[b])
            offsets[B] = total
            if nones:
                for b in range(B):
                    ones[b] = 1.0
                scale = ones
            # what every group of sequences needs besides its rows: the records above, and each thread's scratch
            fixed = (<int64_t>(sizeof(double) * (nnorm + nones) + sizeof(int64_t) * (B + 1)
                     + (sizeof(cyctc_state) + sizeof(cyctc_seq)) * <size_t>B) + 7) // 8
            if with_grad:
                fixed += <int64_t>num_threads * (cyctc_thread_scratch_size(<int>max_ll) + C)
                total += 2 * <int64_t>B * cyctc_row_width(<int>max_ll)  # lost-mass rows the tasks may keep
            planned = (limit == 0 or fixed + total <= limit) and force_ckpt <= 1
            if planned and with_grad:
                # gradient calls keep frames' class probabilities for stage 2 (cyctc_ecache_size) for as many
                # sequences as the memory bound has room for: 8 x B x T x W bytes (W: a stored row's doubles,
                # 2L + 1 states padded to whole blocks and their exponents), less the work space, the normalisers,
                # the per-sequence records and 1%, and within memory_limit; the results are the same bits either
                # way (in double: the product overflows int64 for absurd shapes, which then fail to allocate anyway)
                room = 0.99 * <double>B * T * cyctc_row_width(<int>max_ll) - <double>total - 2.0 * B * T - 32.0 * B
                if limit > 0:
                    room = min(room, <double>(limit - fixed - total))
                if cache_room >= 0:
                    room = cache_room
                for b in range(B):
                    cache_b = cyctc_ecache_size(&seqs[b])
                    if 0 < cache_b <= room:
                        seqs[b].ecache = &_CHOSEN  # placed below
                        room -= cache_b
                        cache_total += cache_b
        if not planned:
            # over the budget: gradient rows every k frames; groups of sequences that fit the budget together
            need = 0
            with nogil:
                for b in range(B):
                    if with_grad:
                        seqs[b].ckpt = force_ckpt if force_ckpt > 1 else _best_ckpt(tl[b], ll[b])
                        w_b = (cyctc_grad_work_size(tl[b], ll[b], seqs[b].ckpt)
                               + 2 * cyctc_row_width(ll[b]))
                    else:
                        w_b = cyctc_work_size(tl[b], ll[b], 0)
                    need = max(need, w_b)
            if limit > 0 and fixed + need > limit:
                from ._memory import budget_error
                raise budget_error("cyctc (CTC loss)", 8 * (fixed + need), memory_limit)
        b0 = 0
        while b0 < B:
            # the group [b0, b1): as many sequences as fit the budget (all of them when planned)
            chunk = 0
            need = 0  # what the group counts against the budget: its rows, and the lost-mass rows it may keep
            b1 = b0
            with nogil:
                while b1 < B:
                    if with_grad:
                        w_b = cyctc_grad_work_size(tl[b1], ll[b1], seqs[b1].ckpt)
                        cache_b = w_b + 2 * cyctc_row_width(ll[b1])
                    else:
                        w_b = cyctc_work_size(tl[b1], ll[b1], 0)
                        cache_b = w_b
                    if not planned and b1 > b0 and limit > 0 and fixed + need + cache_b > limit:
                        break
                    offsets[b1] = chunk
                    chunk += w_b
                    need += cache_b
                    b1 += 1
            work = <double *>PyMem_RawMalloc(sizeof(double) * max(chunk + cache_total, 1))
            if work == NULL:
                raise MemoryError(f"cyctc: cannot allocate {8 * (chunk + cache_total)} bytes of CTC work space")
            if cache_total:
                with nogil:
                    cache_total = chunk
                    for b in range(b0, b1):
                        if seqs[b].ecache != NULL:
                            seqs[b].ecache = work + cache_total
                            cache_total += cyctc_ecache_size(&seqs[b])
            nt = num_threads
            if limit > 0:  # the log-space fallback's rows too: what the group leaves, shared by the threads
                with nogil:
                    for b in range(b0, b1):
                        seqs[b].logspace_room = max(0, limit - fixed - need - cache_total) // max(nt, 1)
            work_units = <int64_t>(b1 - b0) * T * (C + 8 * Lmax)
            if nt > 1 and work_units < <int64_t>nt * MIN_WORK_PER_THREAD:
                nt = max(1, <int>(work_units // MIN_WORK_PER_THREAD))
            with nogil:
                if is_f32:
                    rc = _run(<const float *>(xp + b0 * xsb * item), xsb, xst,
                              <float *>(gp + b0 * gsb * item) if gp != NULL else NULL, gsb, gst,
                              b1 - b0, T, C, seqs + b0, states + b0, norm + 2 * <Py_ssize_t>b0 * T, work,
                              offsets + b0, scale + b0 if scale != NULL else NULL, nt)
                else:
                    rc = _run(<const double *>(xp + b0 * xsb * item), xsb, xst,
                              <double *>(gp + b0 * gsb * item) if gp != NULL else NULL, gsb, gst,
                              b1 - b0, T, C, seqs + b0, states + b0, norm + 2 * <Py_ssize_t>b0 * T, work,
                              offsets + b0, scale + b0 if scale != NULL else NULL, nt)
                for b in range(b0, b1):
                    lossp[b] = states[b].loss
                    if flagsp != NULL:
                        flagsp[b] = states[b].flags
                    if states[b].flags & CYCTC_NOMEM:
                        rc = -2
                    if states[b].flags & CYCTC_OVERBUDGET and rc == 0:
                        rc = -3
                        cache_b = b
            PyMem_RawFree(work)
            work = NULL
            if rc == -1:
                raise MemoryError("cyctc: cannot allocate per-thread scratch")
            if rc == -2:
                raise MemoryError("cyctc: cannot allocate the log-space rows of a sequence")
            if rc == -3:
                b = <int>cache_b
                w_b = 3 * 8 * (<int64_t>(tl[b] if with_grad else 2) + 2) * (2 * <int64_t>ll[b] + 1)
                raise MemoryError(
                    f"cyctc (CTC loss): example {b} needs the log-space fallback (its logits defeat the scaled "
                    f"recursion), whose rows take {w_b} bytes, more than memory_limit of {memory_limit} bytes leaves "
                    f"({8 * seqs[b].logspace_room} bytes a thread); raise memory_limit (or CYCTC_MEMORY_LIMIT)")
            b0 = b1
    finally:
        PyMem_RawFree(state)
        PyMem_RawFree(work)
    return loss


# ---- validation scans for cyctc._args: one pass without the GIL instead of several numpy reductions ----------------
ctypedef fused intlike:
    int32_t
    int64_t


def int_range(const intlike[:] v):
    """(min, max) of a non-empty int32/int64 vector."""
    cdef Py_ssize_t i, n = v.shape[0]
    cdef int64_t lo = v[0], hi = v[0], x
    with nogil:
        for i in range(1, n):
            x = v[i]
            if x < lo:
                lo = x
            if x > hi:
                hi = x
    return lo, hi


cdef inline int64_t _int_at(const char *p, Py_ssize_t stride, bint wide, Py_ssize_t i) noexcept nogil:
    """Entry i of an int32/int64 (``wide``) vector at p with a byte stride."""
    p += i * stride
    return (<const int64_t *>p)[0] if wide else (<const int32_t *>p)[0]


cdef Py_ssize_t _first_bad_label(const char *lp, Py_ssize_t ls0, Py_ssize_t ls1, bint wide, const char *llp,
                                 Py_ssize_t lls, bint llwide, Py_ssize_t B, Py_ssize_t Lmax, int64_t C,
                                 int64_t blank) noexcept nogil:
    """The scan of first_bad_label over raw int32/int64 (``wide``) arrays given by pointer and byte strides (labels
    (B, Lmax), lengths (B,)); accept_loss_args runs it too."""
    cdef Py_ssize_t b, j, n
    cdef int64_t x
    for b in range(B):
        n = min(<Py_ssize_t>_int_at(llp, lls, llwide, b), Lmax)
        for j in range(n):
            x = _int_at(lp + b * ls0, ls1, wide, j)
            if x < 0 or x >= C or x == blank:
                return b * Lmax + j
    return -1


def first_bad_label(const intlike[:, :] labels, const int32_t[:] label_length, int64_t C, int64_t blank):
    """Row-major index b * Lmax + j of the first label within its row's length that lies outside [0, C) or equals
    the blank, or -1."""
    cdef Py_ssize_t B = labels.shape[0], Lmax = labels.shape[1], found = -1
    if B == 0 or Lmax == 0:
        return -1
    with nogil:
        found = _first_bad_label(<const char *>&labels[0, 0], labels.strides[0], labels.strides[1],
                                 intlike is int64_t, <const char *>&label_length[0], label_length.strides[0], False,
                                 B, Lmax, C, blank)
    return found


# ---- the fast acceptance test of cyctc._args.normalize_loss_args --------------------------------------------------
# The common call (numpy arrays already of the kernel's types and layout, valid values) is recognised by one pass
# without the GIL; everything else, and every error, goes through normalize_loss_args's full path, which names the
# problem. So this raises nothing of its own and explains nothing: it answers "these are the normalised arguments"
# or None.

cdef int64_t _INT32_MAX = 2147483647
cdef int64_t _MAX_ELEMENTS = (<int64_t>1) << 59
MAX_ELEMENTS = _MAX_ELEMENTS  # the most elements B * T * C a logits array may have (cyctc._args takes it from here)


cdef inline bint _plain_ints(cnp.ndarray v, int ndim) noexcept:
    """v holds aligned, native int32 or int64 (whatever the C type's name) in ndim dimensions: what the scans read,
    and what _args's int_range / first_bad_label take."""
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(v)
    return (cnp.PyArray_NDIM(v) == ndim and cnp.PyArray_ISSIGNED(v) and (item == 4 or item == 8)
            and cnp.PyArray_ISNOTSWAPPED(v) and cnp.PyArray_ISALIGNED(v))


cdef bint _lengths_ok(cnp.ndarray v, Py_ssize_t B, int64_t most) noexcept:
    """v is a plain (B,) int vector with every entry in [0, most]."""
    if not _plain_ints(v, 1) or v.shape[0] != B:
        return False
    cdef const char *p = <const char *>cnp.PyArray_DATA(v)
    cdef Py_ssize_t i, stride = v.strides[0]
    cdef bint wide = cnp.PyArray_ITEMSIZE(v) == 8, ok = True
    cdef int64_t n
    with nogil:
        for i in range(B):
            n = _int_at(p, stride, wide, i)
            if n < 0 or n > most:
                ok = False
                break
    return ok


cdef object _int32_c(cnp.ndarray v):
    """np.ascontiguousarray(v, dtype=np.int32) for validated plain ints: v itself when it already is that."""
    if cnp.PyArray_ITEMSIZE(v) == 4 and cnp.PyArray_IS_C_CONTIGUOUS(v):
        return v
    return np.ascontiguousarray(v, dtype=np.int32)


def accept_loss_args(labels, logits, label_length, logit_length, time_major, unique, blank_index,
                     int64_t default_blank):
    """(x, labels, label_length, logit_length, blank) exactly as ``cyctc._args.normalize_loss_args`` would make
    them, when the arguments are the common case and valid; None for anything else (the full path decides then).

    The common case: logits an aligned native float32/float64 ndarray (B, T, C) (T, B, C when ``time_major``) that
    needs no copy for the kernels, with C >= 1 and within check_size's limits; labels an int32/int64 ndarray
    (B, Lmax >= 1); label_length and logit_length int32/int64 ndarrays (B,) (logit_length may be None); unique None;
    blank_index None or an int in [-C, C); time_major a bool; values as the full path requires.
    """
    if not (cnp.PyArray_CheckExact(logits) and cnp.PyArray_CheckExact(labels) and cnp.PyArray_CheckExact(label_length)
            and (logit_length is None or cnp.PyArray_CheckExact(logit_length))
            and unique is None and (time_major is True or time_major is False)):
        return None
    cdef cnp.ndarray x = logits, lab = labels, ll = label_length, tl
    if cnp.PyArray_NDIM(x) != 3 or not (cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT or cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE) \
            or not cnp.PyArray_ISNOTSWAPPED(x) or not cnp.PyArray_ISALIGNED(x):
        return None
    if time_major:
        x = cnp.PyArray_SwapAxes(x, 0, 1)
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], C = x.shape[2], Lmax, b
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(x), s0 = x.strides[0], s1 = x.strides[1], s2 = x.strides[2]
    # check_size, and kernel_view's conditions for using x as it is
    if C == 0 or B > _INT32_MAX or T > _INT32_MAX or C > _INT32_MAX or (B * T > _MAX_ELEMENTS // C):
        return None
    if (C > 1 and s2 != item) or s0 % item or s1 % item or s2 % item or s0 < 0 or s1 < 0:
        return None
    cdef int64_t blank
    if blank_index is None:
        blank = default_blank
    elif type(blank_index) is int and -C <= blank_index < C:
        blank = blank_index
        if blank < 0:
            blank += C
    else:
        return None
    if not _plain_ints(lab, 2) or lab.shape[0] != B:
        return None
    Lmax = lab.shape[1]
    if Lmax == 0 or not _lengths_ok(ll, B, min(<int64_t>Lmax, _INT32_MAX)):
        return None
    cdef cnp.npy_intp nb = B
    cdef int32_t *full
    if logit_length is None:
        tl = cnp.PyArray_EMPTY(1, &nb, cnp.NPY_INT32, 0)  # np.full(B, T, dtype=np.int32)
        full = <int32_t *>cnp.PyArray_DATA(tl)
        for b in range(B):
            full[b] = <int32_t>T
    else:
        tl = logit_length
        if not _lengths_ok(tl, B, T):
            return None
    # the labels within their lengths: classes in [0, C), never the blank (first_bad_label's scan)
    cdef const char *lp = <const char *>cnp.PyArray_DATA(lab)
    cdef const char *llp = <const char *>cnp.PyArray_DATA(ll)
    cdef Py_ssize_t ls0 = lab.strides[0], ls1 = lab.strides[1], lls = ll.strides[0], bad
    cdef bint wide = cnp.PyArray_ITEMSIZE(lab) == 8, llwide = cnp.PyArray_ITEMSIZE(ll) == 8
    with nogil:
        bad = _first_bad_label(lp, ls0, ls1, wide, llp, lls, llwide, B, Lmax, C, blank)
    if bad >= 0:
        return None
    return x, _int32_c(lab), _int32_c(ll), _int32_c(tl), blank


# ---- results ---------------------------------------------------------------------------------------------------------

def float32_copy(cnp.ndarray loss):
    """A new float32 array of the float64 (B,) C-contiguous ``loss``: C's conversion, as numpy's astype, but
    without its check of the floating-point flags (and so no overflow warning: beyond float32's range is inf)."""
    if cnp.PyArray_TYPE(loss) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(loss) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(loss):
        raise TypeError("float32_copy takes a contiguous float64 vector")
    cdef cnp.npy_intp n = loss.shape[0], i
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &n, cnp.NPY_FLOAT32, 0)
    cdef const double *src = <const double *>cnp.PyArray_DATA(loss)
    cdef float *dst = <float *>cnp.PyArray_DATA(out)
    for i in range(n):
        dst[i] = <float>src[i]
    return out


# ---- the lean acceptance of a CuPy call's host labels and lengths ------------------------------------------------
# The common CuPy call (cyctc.cuda._backend.lean_loss) brings host int32/int64 labels and lengths; they are checked
# by the scans above and packed into ONE host buffer that is uploaded in one copy. Like accept_loss_args this raises
# nothing of its own: None sends the call down the full path, which names any problem.

def pack_device_args(labels, label_length, logit_length, Py_ssize_t B, Py_ssize_t T, int64_t C, int64_t blank):
    """(buf, Lmax) for valid plain arguments, else None. ``buf`` is a uint8 array laid out as
    [loss float64 (B), zeros | grad_scale float64 (B), ones | labels int32 (B, Lmax) | label_length int32 (B) |
    logit_length int32 (B)] (logit_length None: all T): labels, label_length (B,) and logit_length (B,) or None as
    ``accept_loss_args`` accepts them (int32/int64 ndarrays, Lmax >= 1, values as the full path requires)."""
    if not (cnp.PyArray_CheckExact(labels) and cnp.PyArray_CheckExact(label_length)
            and (logit_length is None or cnp.PyArray_CheckExact(logit_length))) or B < 1:
        return None
    cdef cnp.ndarray lab = labels, ll = label_length, tl = None
    if not _plain_ints(lab, 2) or lab.shape[0] != B:
        return None
    cdef Py_ssize_t Lmax = lab.shape[1], b, j
    if Lmax == 0 or not _lengths_ok(ll, B, min(<int64_t>Lmax, _INT32_MAX)):
        return None
    if logit_length is not None:
        tl = logit_length
        if not _lengths_ok(tl, B, T):
            return None
    cdef const char *lp = <const char *>cnp.PyArray_DATA(lab)
    cdef const char *llp = <const char *>cnp.PyArray_DATA(ll)
    cdef const char *tlp = NULL
    cdef Py_ssize_t ls0 = lab.strides[0], ls1 = lab.strides[1], lls = ll.strides[0], tls = 0, bad
    cdef bint wide = cnp.PyArray_ITEMSIZE(lab) == 8, llwide = cnp.PyArray_ITEMSIZE(ll) == 8, tlwide = False
    if tl is not None:
        tlp = <const char *>cnp.PyArray_DATA(tl)
        tls = tl.strides[0]
        tlwide = cnp.PyArray_ITEMSIZE(tl) == 8
    cdef cnp.npy_intp nbytes = 16 * B + 4 * (B * Lmax + 2 * B)
    cdef cnp.ndarray buf = cnp.PyArray_EMPTY(1, &nbytes, cnp.NPY_UINT8, 0)
    cdef char *p = <char *>cnp.PyArray_DATA(buf)
    cdef double *loss = <double *>p
    cdef double *scale = <double *>(p + 8 * B)
    cdef int32_t *out = <int32_t *>(p + 16 * B)
    cdef const int32_t *row
    cdef int32_t v
    cdef Py_ssize_t n
    bad = -1
    with nogil:
        if not wide and ls1 == 4:  # int32 rows: one pass copies them and checks each row's labels (the scan's test)
            for b in range(B):
                row = <const int32_t *>(lp + b * ls0)
                memcpy(out + b * Lmax, row, 4 * Lmax)
                n = min(<Py_ssize_t>_int_at(llp, lls, llwide, b), Lmax)
                for j in range(n):
                    v = row[j]
                    if v < 0 or v >= C or v == blank:
                        bad = b
                        break
                if bad >= 0:
                    break
        else:
            bad = _first_bad_label(lp, ls0, ls1, wide, llp, lls, llwide, B, Lmax, C, blank)
            if bad < 0:
                for b in range(B):
                    for j in range(Lmax):
                        out[b * Lmax + j] = <int32_t>_int_at(lp + b * ls0, ls1, wide, j)
    if bad >= 0:
        return None
    with nogil:
        for b in range(B):
            loss[b] = 0.0
            scale[b] = 1.0
        out += B * Lmax
        for b in range(B):
            out[b] = <int32_t>_int_at(llp, lls, llwide, b)
        out += B
        for b in range(B):
            out[b] = <int32_t>_int_at(tlp, tls, tlwide, b) if tlp != NULL else <int32_t>T
    return buf, Lmax
