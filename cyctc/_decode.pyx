# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""CPU backend of decoding and forced alignment: batch loops over sequences under ``nogil`` with OpenMP.

Three layers:

* ``src/decode.c`` -- per-sequence kernels in plain C (greedy, prefix beam search, chain alignment);
* the loops below -- one ``prange`` over the batch per call, each iteration running the kernel on one sequence.
  Sequences share nothing, so the results are bit-identical for any thread count;
* the Python faces ``cyctc/decode.py`` and ``cyctc/align.py`` -- validate (``cyctc/_decode_args.py``), allocate
  the outputs, call down here and shape the results. Nothing here re-validates.

Arrays arrive as numpy arrays already checked by the caller: x float32/float64 (B, T, C) with a contiguous class
axis and element-multiple strides (frame t of sequence b starts at ``x + b * xsb + t * xst``, in elements); every
other array C-contiguous with the dtype named in each docstring.
"""
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t
cimport numpy as cnp

cnp.import_array()

cdef extern from "src/omp_compat.h":
    int cyctc_openmp_enabled() noexcept nogil
    int cyctc_omp_max_threads() noexcept nogil

cdef extern from "src/decode.h":
    int CYCTC_DECODE_NOMEM
    int cyctc_chain_band_init
    int64_t cyctc_chain_band_last
    int cyctc_chain_fb_plan_last
    double cyctc_chain_leak_last[2]
    int cyctc_greedy_decode_f32(const float *x, Py_ssize_t xs, int T, int C, int blank, int merge_repeated,
                                int32_t *out, double *neg_sum_logits) noexcept nogil
    int cyctc_greedy_decode_f64(const double *x, Py_ssize_t xs, int T, int C, int blank, int merge_repeated,
                                int32_t *out, double *neg_sum_logits) noexcept nogil
    int cyctc_beam_search_f32(const float *x, Py_ssize_t xs, int T, int C, int blank, int beam_width,
                              int top_paths, int merge_repeated, int32_t *paths, Py_ssize_t path_stride,
                              int32_t *lengths, double *log_probs) noexcept nogil
    int cyctc_beam_search_f64(const double *x, Py_ssize_t xs, int T, int C, int blank, int beam_width,
                              int top_paths, int merge_repeated, int32_t *paths, Py_ssize_t path_stride,
                              int32_t *lengths, double *log_probs) noexcept nogil
    int cyctc_chain_align_f32(const float *x, Py_ssize_t xs, int64_t T, int C, const int32_t *tokens, int64_t n,
                              int blank, int normalize, double gap_penalty, double budget, int32_t *path,
                              double *log_prob, double *post, int nthreads) noexcept nogil
    int cyctc_chain_align_f64(const double *x, Py_ssize_t xs, int64_t T, int C, const int32_t *tokens, int64_t n,
                              int blank, int normalize, double gap_penalty, double budget, int32_t *path,
                              double *log_prob, double *post, int nthreads) noexcept nogil
    double cyctc_chain_work_bytes(int64_t T, int C, int64_t n, int posteriors, double budget) noexcept nogil


def openmp_enabled():
    """True when this extension was compiled with OpenMP."""
    return bool(cyctc_openmp_enabled())


def omp_max_threads():
    """OpenMP's default team size (OMP_NUM_THREADS when set); 1 without OpenMP."""
    return cyctc_omp_max_threads()


def greedy(cnp.ndarray x, cnp.ndarray length, int blank, bint merge_repeated, cnp.ndarray out,
           cnp.ndarray out_length, cnp.ndarray neg_sum_logits, int num_threads):
    """Best-path decode of each sequence b into out[b, :out_length[b]] and neg_sum_logits[b].

    length: int32 (B,); out: int32 (B, >= max length); out_length: int32 (B,); neg_sum_logits: float64 (B,).
    """
    cdef Py_ssize_t B = x.shape[0], b
    cdef int C = <int>x.shape[2]
    cdef Py_ssize_t xsb = x.strides[0] // x.itemsize, xst = x.strides[1] // x.itemsize
    cdef Py_ssize_t os = out.shape[1]
    cdef bint f32 = x.dtype.num == cnp.NPY_FLOAT
    cdef const float *xf = <const float *>cnp.PyArray_DATA(x)
    cdef const double *xd = <const double *>cnp.PyArray_DATA(x)
    cdef const int32_t *tl = <const int32_t *>cnp.PyArray_DATA(length)
    cdef int32_t *op = <int32_t *>cnp.PyArray_DATA(out)
    cdef int32_t *olp = <int32_t *>cnp.PyArray_DATA(out_length)
    cdef double *ns = <double *>cnp.PyArray_DATA(neg_sum_logits)
    for b in prange(B, nogil=True, schedule="dynamic", num_threads=num_threads):
        if f32:
            olp[b] = cyctc_greedy_decode_f32(xf + b * xsb, xst, tl[b], C, blank, merge_repeated, op + b * os,
                                             ns + b)
        else:
            olp[b] = cyctc_greedy_decode_f64(xd + b * xsb, xst, tl[b], C, blank, merge_repeated, op + b * os,
                                             ns + b)


def beam_search(cnp.ndarray x, cnp.ndarray length, int blank, int beam_width, int top_paths, bint merge_repeated,
                cnp.ndarray paths, cnp.ndarray path_length, cnp.ndarray log_probs, int num_threads):
    """Beam search of each sequence b: path k in paths[b, k, :path_length[b, k]], its score in log_probs[b, k].

    length: int32 (B,); paths: int32 (B, top_paths, >= max length); path_length: int32 (B, top_paths);
    log_probs: float64 (B, top_paths). Returns how many sequences ran out of memory (their outputs are undefined).
    """
    cdef Py_ssize_t B = x.shape[0], b
    cdef int C = <int>x.shape[2], rc
    cdef Py_ssize_t xsb = x.strides[0] // x.itemsize, xst = x.strides[1] // x.itemsize
    cdef Py_ssize_t ps = paths.shape[2], K = top_paths
    cdef bint f32 = x.dtype.num == cnp.NPY_FLOAT
    cdef const float *xf = <const float *>cnp.PyArray_DATA(x)
    cdef const double *xd = <const double *>cnp.PyArray_DATA(x)
    cdef const int32_t *tl = <const int32_t *>cnp.PyArray_DATA(length)
    cdef int32_t *pp = <int32_t *>cnp.PyArray_DATA(paths)
    cdef int32_t *plp = <int32_t *>cnp.PyArray_DATA(path_length)
    cdef double *lp = <double *>cnp.PyArray_DATA(log_probs)
    cdef int nomem = 0
    for b in prange(B, nogil=True, schedule="dynamic", num_threads=num_threads):
        if f32:
            rc = cyctc_beam_search_f32(xf + b * xsb, xst, tl[b], C, blank, beam_width, top_paths, merge_repeated,
                                       pp + b * K * ps, ps, plp + b * K, lp + b * K)
        else:
            rc = cyctc_beam_search_f64(xd + b * xsb, xst, tl[b], C, blank, beam_width, top_paths, merge_repeated,
                                       pp + b * K * ps, ps, plp + b * K, lp + b * K)
        if rc == CYCTC_DECODE_NOMEM:
            nomem += 1
    return nomem


def chain_work_bytes(int64_t T, int C, int64_t n, bint posteriors, double budget):
    """Work space of one chain alignment within ``budget`` bytes: > 0 bytes, or minus the smallest budget that
    works (see cyctc_chain_work_bytes in src/decode.h)."""
    return cyctc_chain_work_bytes(T, C, n, posteriors, budget)


def chain_align(cnp.ndarray x, cnp.ndarray length, cnp.ndarray tokens, cnp.ndarray n_tokens, int blank,
                bint normalize, double gap_penalty, double budget, cnp.ndarray path, cnp.ndarray log_prob,
                object post, cnp.ndarray status, int num_threads, int seq_threads=1):
    """Chain alignment of each sequence b (src/decode.h): states path[b, :length[b]], log_prob[b], posteriors
    post[b, :length[b]] when post is not None, status[b] (a CYCTC_DECODE_* code); ``budget`` bytes of work space
    per sequence.

    length: int32 (B,); tokens: int32 (B, Nmax) (CYCTC_GAP = -1 marks a gap); n_tokens: int64 (B,);
    path: int32 (B, >= max length); log_prob: float64 (B,); post: float64 (B, >= max length) or None;
    status: int8 (B,). Returns how many sequences ran out of memory. ``num_threads`` threads share the batch; a
    batch of one sequence runs outside the parallel loop with ``seq_threads`` threads of its own (the kernel uses
    2 at most; the same bits for any count).
    """
    cdef Py_ssize_t B = x.shape[0], b
    cdef int C = <int>x.shape[2], rc
    cdef Py_ssize_t xsb = x.strides[0] // x.itemsize, xst = x.strides[1] // x.itemsize
    cdef Py_ssize_t N = tokens.shape[1], ps = path.shape[1]
    cdef bint f32 = x.dtype.num == cnp.NPY_FLOAT
    cdef const float *xf = <const float *>cnp.PyArray_DATA(x)
    cdef const double *xd = <const double *>cnp.PyArray_DATA(x)
    cdef const int32_t *tl = <const int32_t *>cnp.PyArray_DATA(length)
    cdef const int32_t *tok = <const int32_t *>cnp.PyArray_DATA(tokens)
    cdef const int64_t *nt = <const int64_t *>cnp.PyArray_DATA(n_tokens)
    cdef int32_t *pp = <int32_t *>cnp.PyArray_DATA(path)
    cdef double *lp = <double *>cnp.PyArray_DATA(log_prob)
    cdef double *po = NULL
    cdef cnp.ndarray post_a
    if post is not None:
        post_a = post
        po = <double *>cnp.PyArray_DATA(post_a)
    cdef int8_t *st = <int8_t *>cnp.PyArray_DATA(status)
    cdef int nomem = 0
    if B == 1:
        with nogil:
            if f32:
                rc = cyctc_chain_align_f32(xf, xst, tl[0], C, tok, nt[0], blank, normalize, gap_penalty, budget, pp,
                                           lp, po, seq_threads)
            else:
                rc = cyctc_chain_align_f64(xd, xst, tl[0], C, tok, nt[0], blank, normalize, gap_penalty, budget, pp,
                                           lp, po, seq_threads)
        st[0] = <int8_t>rc
        return 1 if rc == CYCTC_DECODE_NOMEM else 0
    for b in prange(B, nogil=True, schedule="dynamic", num_threads=num_threads):
        if f32:
            rc = cyctc_chain_align_f32(xf + b * xsb, xst, tl[b], C, tok + b * N, nt[b], blank, normalize,
                                       gap_penalty, budget, pp + b * ps, lp + b, po + b * ps if po != NULL else NULL, 1)
        else:
            rc = cyctc_chain_align_f64(xd + b * xsb, xst, tl[b], C, tok + b * N, nt[b], blank, normalize,
                                       gap_penalty, budget, pp + b * ps, lp + b, po + b * ps if po != NULL else NULL, 1)
        st[b] = <int8_t>rc
        if rc == CYCTC_DECODE_NOMEM:
            nomem += 1
    return nomem


def _chain_band(init=None):
    """Test hook: (the first posterior band's half-width, the half-width the last alignment finished with); sets
    the first half-width when ``init`` is given (states; the default is 512)."""
    global cyctc_chain_band_init
    old = (cyctc_chain_band_init, cyctc_chain_band_last)
    if init is not None:
        cyctc_chain_band_init = <int>init
    return old


def _chain_fb_plan():
    """Test hook: (levels, par) of the last alignment's posteriors plan; par: its two halves had rows of their own
    (they run on two threads when given two), else they shared all but their top levels' rows (one after the
    other). (0, 0) before any."""
    v = cyctc_chain_fb_plan_last
    return v // 2, v % 2


def _chain_leaks():
    """Test hook: (forwards, backwards) mass that left the band in the last alignment's posteriors, at the band it
    finished with (the sums that decide the widening)."""
    return cyctc_chain_leak_last[0], cyctc_chain_leak_last[1]
