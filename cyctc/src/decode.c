/*
 * cyctc per-sequence decoders and forced alignment (see decode.h for the contracts).
 *
 * The dtype-dependent parts (reading frames of float or double) live in decode_impl.h, included below once per
 * dtype; the search engines here see only double rows of log-probabilities:
 *
 *   beam_*     the prefix beam search. Prefixes form a tree (node = parent prefix + one class) stored in a growing
 *              array and found again through a hash table keyed by (parent, class), so that a prefix that leaves
 *              the beam and comes back is the same node, exactly as in TF. The beam itself is a binary heap with
 *              the worst prefix on top. Nodes neither in the beam nor ancestors of a beam entry can never matter
 *              again and are dropped by an occasional compaction, so memory stays proportional to the live tree.
 *   chain_*    alignment over a chain of tokens (labels and untranscribed gaps): Viterbi and path posteriors,
 *              checkpointed so that the work space fits a byte budget at any T (see the section's comment).
 */
/* Python's build flags include -fwrapv, under which GCC cannot prove that int loop indices do not wrap and leaves
 * the kernel's loops scalar; nothing here relies on wrapping arithmetic. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-wrapv")
#endif
#include "decode.h"
#include "omp_compat.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NEG_INF (-INFINITY)

/* the alignment's hot loops are compiled twice on x86-64 with GCC (AVX2 and baseline), picked at load time; with
 * -ffp-contract=off both give the same bits (maxima, sums and products, each rounded once) */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(CYCTC_NO_CLONES) &&              \
    !defined(__SANITIZE_ADDRESS__)
#define DECODE_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DECODE_HOT
#endif

/* log(exp(a) + exp(b)) with -inf as log 0 (the larger term factored out, as TF does) */
static inline double log_add(double a, double b)
{
    if (a == NEG_INF)
        return b;
    if (b == NEG_INF)
        return a;
    return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

/* ------------------------------------------------------------------------------------------------------------ */
/* prefix beam search                                                                                            */
/* ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    int32_t parent;    /* parent prefix, -1 for the root (the empty prefix) */
    int32_t label;     /* class this node appends to its parent's prefix, -1 for the root */
    int64_t stamp;     /* when the node last entered the beam: of two equal scores the earlier entry ranks higher */
    double ob, ol, ot; /* log P(prefix) at the previous frame: paths ending in blank, in the label, all paths */
    double nb, nl, nt; /* the same at the current frame; nt == -inf means "not in the beam" (TF: not Active) */
} prefix_node;

typedef struct {
    int C, blank, W;
    prefix_node *node;
    int32_t n_node, cap_node, compact_at;
    int32_t *slot; /* open addressing: (parent, label) -> node index, -1 = empty; size slot_mask + 1 */
    uint32_t slot_mask;
    int32_t *heap; /* the beam, worst prefix at heap[0] */
    int32_t n_heap;
    int32_t *order; /* the previous frame's beam, best first */
    int64_t clock;
} beam_state;

/* node count below which the prefix tree is never compacted (overridable to exercise compaction in tests) */
#ifndef CYCTC_BEAM_COMPACT_MIN
#define CYCTC_BEAM_COMPACT_MIN 4096
#endif

static inline uint32_t slot_hash(int32_t parent, int32_t label)
{
    uint64_t k = ((uint64_t)(uint32_t)parent << 32) | (uint32_t)label;
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

static int32_t beam_find(const beam_state *s, int32_t parent, int32_t label)
{
    uint32_t i = slot_hash(parent, label) & s->slot_mask;
    for (;;) {
        int32_t n = s->slot[i];
        if (n < 0)
            return -1;
        if (s->node[n].parent == parent && s->node[n].label == label)
            return n;
        i = (i + 1) & s->slot_mask;
    }
}

static void beam_rehash(beam_state *s)
{
    memset(s->slot, 0xff, ((size_t)s->slot_mask + 1) * sizeof(int32_t));
    for (int32_t n = 0; n < s->n_node; n++) {
        if (s->node[n].parent < 0)
            continue;
        uint32_t i = slot_hash(s->node[n].parent, s->node[n].label) & s->slot_mask;
        while (s->slot[i] >= 0)
            i = (i + 1) & s->slot_mask;
        s->slot[i] = n;
    }
}

/* a new node (all probabilities log 0); -1 when out of memory */
static int32_t beam_new_node(beam_state *s, int32_t parent, int32_t label)
{
    if (s->n_node == s->cap_node) {
        if (s->cap_node > (INT32_MAX >> 2))
            return -1;
        int32_t cap = 2 * s->cap_node;
        prefix_node *nn = (prefix_node *)realloc(s->node, (size_t)cap * sizeof(prefix_node));
        if (!nn)
            return -1;
        s->node = nn;
        int32_t *ns = (int32_t *)realloc(s->slot, 2 * (size_t)cap * sizeof(int32_t));
        if (!ns)
            return -1;
        s->slot = ns;
        s->slot_mask = 2 * (uint32_t)cap - 1;
        s->cap_node = cap;
        beam_rehash(s);
    }
    int32_t n = s->n_node++;
    prefix_node *p = s->node + n;
    p->parent = parent;
    p->label = label;
    p->stamp = 0;
    p->ob = p->ol = p->ot = p->nb = p->nl = p->nt = NEG_INF;
    if (parent >= 0) {
        uint32_t i = slot_hash(parent, label) & s->slot_mask;
        while (s->slot[i] >= 0)
            i = (i + 1) & s->slot_mask;
        s->slot[i] = n;
    }
    return n;
}

/* does node a rank below node b? (lower total; on a tie, the later entry) */
static inline int beam_worse(const beam_state *s, int32_t a, int32_t b)
{
    const prefix_node *x = s->node + a, *y = s->node + b;
    return x->nt < y->nt || (x->nt == y->nt && x->stamp > y->stamp);
}

static void beam_push(beam_state *s, int32_t n)
{
    s->node[n].stamp = s->clock++;
    int32_t i = s->n_heap++;
    while (i > 0) {
        int32_t up = (i - 1) >> 1;
        if (!beam_worse(s, n, s->heap[up]))
            break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = n;
}

static int32_t beam_pop_worst(beam_state *s)
{
    int32_t top = s->heap[0], last = s->heap[--s->n_heap], i = 0, n = s->n_heap;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && beam_worse(s, s->heap[c + 1], s->heap[c]))
            c++;
        if (!beam_worse(s, s->heap[c], last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0)
        s->heap[i] = last;
    return top;
}

/* is a prefix scoring `total` good enough to enter the beam now? (TF's is_candidate) */
static inline int beam_candidate(const beam_state *s, double total)
{
    return total > NEG_INF && (s->n_heap < s->W || total > s->node[s->heap[0]].nt);
}

/* keep only the beam entries and their ancestors (node order, hence parent-before-child, is preserved) */
static int beam_compact(beam_state *s)
{
    int32_t n = s->n_node;
    int32_t *map = (int32_t *)malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    if (!map)
        return CYCTC_DECODE_NOMEM;
    for (int32_t i = 0; i < n; i++)
        map[i] = -1;
    for (int32_t h = 0; h < s->n_heap; h++)
        for (int32_t v = s->heap[h]; v >= 0 && map[v] < 0; v = s->node[v].parent)
            map[v] = -2; /* live, not yet renumbered */
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++) {
        if (map[i] == -1)
            continue;
        map[i] = k;
        s->node[k] = s->node[i];
        if (s->node[k].parent >= 0)
            s->node[k].parent = map[s->node[k].parent];
        k++;
    }
    for (int32_t h = 0; h < s->n_heap; h++)
        s->heap[h] = map[s->heap[h]];
    free(map);
    s->n_node = k;
    s->compact_at = 2 * k > CYCTC_BEAM_COMPACT_MIN ? 2 * k : CYCTC_BEAM_COMPACT_MIN;
    beam_rehash(s);
    return CYCTC_DECODE_OK;
}

static void beam_free(beam_state *s)
{
    free(s->node);
    free(s->slot);
    free(s->heap);
    free(s->order);
}

static int beam_init(beam_state *s, int C, int blank, int W)
{
    memset(s, 0, sizeof(*s));
    s->C = C;
    s->blank = blank;
    s->W = W;
    s->cap_node = 1024;
    s->compact_at = CYCTC_BEAM_COMPACT_MIN;
    s->slot_mask = 2 * (uint32_t)s->cap_node - 1;
    s->node = (prefix_node *)malloc((size_t)s->cap_node * sizeof(prefix_node));
    s->slot = (int32_t *)malloc(((size_t)s->slot_mask + 1) * sizeof(int32_t));
    s->heap = (int32_t *)malloc((size_t)W * sizeof(int32_t));
    s->order = (int32_t *)malloc((size_t)W * sizeof(int32_t));
    if (!s->node || !s->slot || !s->heap || !s->order) {
        beam_free(s);
        return CYCTC_DECODE_NOMEM;
    }
    memset(s->slot, 0xff, ((size_t)s->slot_mask + 1) * sizeof(int32_t));
    int32_t root = beam_new_node(s, -1, -1);
    s->node[root].nb = 0.0; /* the empty prefix has probability 1 and "ends in blank" */
    s->node[root].nt = 0.0;
    beam_push(s, root);
    return CYCTC_DECODE_OK;
}

/* one frame; lp holds the frame's C log-probabilities */
static int beam_step(beam_state *s, const double *lp)
{
    if (s->n_node >= s->compact_at && beam_compact(s) != CYCTC_DECODE_OK)
        return CYCTC_DECODE_NOMEM;
    const int blank = s->blank, C = s->C;
    const int32_t nb = s->n_heap;
    for (int32_t i = nb - 1; i >= 0; i--)
        s->order[i] = beam_pop_worst(s);
    for (int32_t i = 0; i < nb; i++) {
        prefix_node *p = s->node + s->order[i];
        p->ob = p->nb;
        p->ol = p->nl;
        p->ot = p->nt;
    }
    /* prefixes already in the beam: extend their own alignments by one frame */
    for (int32_t i = 0; i < nb; i++) {
        prefix_node *p = s->node + s->order[i];
        if (p->parent >= 0) {
            const prefix_node *q = s->node + p->parent;
            if (q->nt != NEG_INF) /* the parent is still in the beam: its alignments flow into this prefix */
                p->nl = log_add(p->nl, p->label == q->label ? q->ob : q->ot);
            p->nl += lp[p->label];
        }
        p->nb = p->ot + lp[blank];
        p->nt = log_add(p->nb, p->nl);
        if (p->nt != NEG_INF)
            beam_push(s, s->order[i]);
    }
    /* grow new prefixes from the previous beam, best first */
    for (int32_t i = 0; i < nb; i++) {
        const int32_t b = s->order[i];
        const double ot = s->node[b].ot, ob = s->node[b].ob;
        const int32_t blab = s->node[b].label;
        if (!beam_candidate(s, ot))
            continue;
        for (int c = 0; c < C; c++) {
            if (c == blank)
                continue;
            /* look the child up before testing it, as TF does: a child that is not a candidate is reset, and that
             * matters when it is a prefix of the previous beam dropped earlier in this frame -- its own expansion
             * (later in this loop) then sees no probability */
            int32_t n = beam_find(s, b, c);
            if (n >= 0 && s->node[n].nt != NEG_INF)
                continue; /* already in the beam: its probability was extended above */
            const double v = lp[c] + (c == blab ? ob : ot);
            if (beam_candidate(s, v)) {
                if (n < 0 && (n = beam_new_node(s, b, c)) < 0)
                    return CYCTC_DECODE_NOMEM;
                prefix_node *p = s->node + n;
                p->nb = NEG_INF;
                p->nl = v;
                p->nt = v;
                if (s->n_heap == s->W) {
                    prefix_node *w = s->node + beam_pop_worst(s);
                    w->nb = w->nl = w->nt = NEG_INF;
                }
                beam_push(s, n);
            } else if (n >= 0) {
                prefix_node *p = s->node + n;
                p->ob = p->ol = p->ot = p->nb = p->nl = p->nt = NEG_INF;
            }
        }
    }
    return CYCTC_DECODE_OK;
}

/* write the best K prefixes (TF's TopPaths + LabelSeq) */
static void beam_finish(beam_state *s, int K, int merge_repeated, int32_t *paths, ptrdiff_t path_stride,
                        int32_t *lengths, double *log_probs)
{
    const int32_t n = s->n_heap;
    for (int32_t i = n - 1; i >= 0; i--)
        s->order[i] = beam_pop_worst(s);
    for (int k = 0; k < K; k++) {
        int32_t *out = paths + k * path_stride;
        if (k >= n) {
            lengths[k] = 0;
            log_probs[k] = NEG_INF;
            continue;
        }
        int32_t len = 0, prev = -1;
        for (int32_t v = s->order[k]; s->node[v].parent >= 0; v = s->node[v].parent) {
            const int32_t lab = s->node[v].label;
            if (!merge_repeated || lab != prev)
                out[len++] = lab;
            prev = lab;
        }
        for (int32_t i = 0, j = len - 1; i < j; i++, j--) {
            int32_t t = out[i];
            out[i] = out[j];
            out[j] = t;
        }
        lengths[k] = len;
        log_probs[k] = s->node[s->order[k]].nt;
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* chain alignment: Viterbi and path posteriors over a token chain, checkpointed under a byte budget             */
/* ------------------------------------------------------------------------------------------------------------ */
/*
 * The graph. n tokens (label classes, or CYCTC_GAP for an untranscribed stretch) become S = 2n + 1 states: state
 * 2j + 1 is token j, the even states are blanks (blank, t1, blank, t2, ..., tn, blank). Blanks and gaps are
 * "optional" (a path may spend no frame in them); labels are not. State s may follow state s - k (k = 1..4) when
 *   (a) every state strictly between them is optional,
 *   (b) when s is optional, no state between them has the kind of s (skipping a blank to land on a blank, or a
 *       gap to land on a gap, would only duplicate a path),
 *   (c) s - k and s are not both blanks and not both gaps, and
 *   (d) s - k and s are not two labels of the same class (CTC needs a blank frame between equal labels).
 * A path may start in s when (a) and (b) hold for the states before s, and end in s when every state after it is
 * optional. Every state has a self-loop. Without gaps this is exactly CTC's extended label sequence. Each frame
 * labelling (a class or "untranscribed" per frame) that fits the tokens is then the reading of exactly one path:
 * blanks next to a gap belong to the blank before it unless the gap took frames.
 *
 * Scores of a frame (log-probabilities lp, normalised first when asked): a blank state lp[blank], a label state
 * lp[class], a gap state max_c lp[c] - gap_penalty (the best class of the frame, minus a fixed penalty).
 *
 * Viterbi: the best path, ties broken by preferring the self-loop, then the nearest predecessor (offset 1, 2, 3,
 * 4), and at the end the last end state (the final blank over the last label). Posteriors: the probability, over
 * all paths of the graph weighted by their probability, that the path is in state v_t at frame t, for the states
 * v_t of the best path; computed in linear space with one power-of-two exponent per block of BLK states (see
 * fb_block_norm), and checked at every frame (sum_s alpha_t(s) beta_t(s) must stay P): when mass that matters
 * was lost, the posteriors are reported as lost, not returned.
 *
 * Memory. The recursion keeps score rows every few frames (checkpoints) and recomputes the frames between them:
 * a plan of D levels splits the T - 1 transitions into pieces of P[1] frames, each of those into pieces of P[2],
 * ..., down to leaves of P[D] frames, which are solved directly (Viterbi: one byte of back-pointer per state and
 * frame, then backtracking; posteriors: the forward rows of the leaf, then the backward rows through it). A level
 * keeps at most (its pieces - 1) rows. Recomputing a row from a checkpoint repeats the same operations in the same
 * order, so the result is the same bits for every plan; the plan only trades memory for D + 1 passes. One pass
 * (D = 0) is used only while its bytes stay below CK_ONE_PASS_MAX: beyond that, faulting in and streaming through
 * hundreds of MB costs more than the extra pass of one level of checkpoints.
 *
 * Speed: the offsets 3 and 4 exist only at the first label after a gap, one state per gap; the loops take the
 * self-loop and offsets 1 (always allowed: neighbours are a blank and a token) and 2 (a mask), vectorised, and
 * those few states are redone after them. Only the Viterbi's first pass (the top level, whose end state is not
 * known yet) covers every state at every frame, and it is tiled (vit_tile: chunks of states carried through up to
 * 64 frames in cache; two threads when asked, each on its own half of the states, the second half started lower
 * and recomputed so that the threads never wait for each other inside a tile). Every later Viterbi segment knows
 * the state its path ends in and recomputes only the states that can reach it (vit_segment: a window that
 * narrows by 4 states a frame towards the end state). None of this changes an operation on a value that reaches
 * the path: the path, its score and its ties are the same bits as over the whole graph. The posteriors run in a
 * band of states around the best path, widened until the mass that steps out of it is below 1e-11 of the band's
 * in each direction ("posteriors in a band" below). They split the frames in two halves at a fixed frame, the first
 * solved forward first and the second backward first ("two halves" below): with two threads the halves run at the
 * same time when the budget gives each its own rows (the default budget does up to hours of audio), else one after
 * the other; the bits are the same either way.
 */

#define PAD 4  /* -inf (Viterbi) or 0 (posteriors) entries before state 0 of every row: prev[s - k] needs no test */
#define CK_MAXD 62
#define CK_ONE_PASS_MAX (48.0 * 1048576.0) /* bytes above which a plan keeps checkpoints even when one pass fits */
#define BLK 32         /* states per exponent block of the posterior rows */
#define ZEXP (-1e300)  /* the exponent of an all-zero block */

enum { K_BLANK = 0, K_LABEL = 1, K_GAP = 2 };
enum { F_START = 16, F_END = 32 };

typedef struct {
    int D;
    int par; /* posteriors: the halves have rows of their own and run at the same time (see fb_run) */
    int64_t P[CK_MAXD + 1]; /* P[0] = T - 1; P[d + 1]: the longest piece at level d + 1; P[D]: the leaf length */
    int64_t pieces[CK_MAXD + 1];
} ck_plan;

typedef struct chain_s chain;
typedef int (*chain_loader)(const void *x, ptrdiff_t xs, int64_t t, int C, int normalize, double *out);

struct chain_s {
    /* problem */
    int64_t T, S;
    int C, blank, normalize, posteriors, maxk; /* maxk: the largest offset the graph uses */
    double gap_penalty;
    const void *x;
    ptrdiff_t xs;
    chain_loader load;
    /* graph */
    int32_t *cls;   /* S: class read for the state's score (C: the gap score, kept in lp[C]) */
    uint8_t *flags; /* S: bits 0-3 offsets 1..4 allowed, F_START, F_END */
    double *mask[4]; /* (S + PAD) each: Viterbi 0 / -inf, posteriors 1 / 0 (entries past S are 0) */
    int64_t *far, *src; /* states with offset 3 or 4 allowed; states with such a successor (ascending) */
    int64_t nfar, nsrc;
    double *lp;     /* C + 1 */
    const double *sc; /* the current frame's score per class (lp, or its exponentials after it) */
    double *em;       /* S: the current frame's score per state */
    double *w[2];   /* work rows (S + PAD + 1 each; +1: the row's log scale) */
    double *tmp;
    /* posteriors: the rows of one half (fb_run) */
    double *run;  /* the second direction's running row alternates between run and alt (the first's rows are w) */
    double *alt;  /* the other half's row at the meeting frame (free once its first pass is done) */
    double *xrow; /* the first direction's row at the meeting frame */
    /* plan and storage */
    ck_plan pl;
    size_t row; /* doubles per stored row */
    double *top, *btop; /* the rows at frame 0 (the plan's start row) and, for the posteriors, beta at T - 1 */
    double *slots[CK_MAXD + 1];
    void *leaf;
    int64_t elo, ehi; /* the states whose scores chain_frame fills */
    double *vt_sc, *vt_loc, *vt_bnd; /* the tiled Viterbi pass's scratch (see vit_tile) */
    int nthreads;                     /* threads of the tiled pass (1 or 2) */
    /* posterior band: states path[t] +- bw at frame t (whole blocks); leaked mass in each direction (see fb_step) */
    int64_t bw, fdone, bdone;
    double leak_f, leak_b;
    double tot_min, tot_max; /* the extremes of log2 sum_s alpha_t(s) beta_t(s) over the half's frames < T - 1 */
    int tot_nan;
    int *halt; /* shared by the halves: set when one stops (the pass is decided: widen or lost) */
    struct {
        double *lp, *em, *w[2], *run, *tmp, *slots[CK_MAXD + 1], *leaf, *xrow;
    } half[2]; /* the arrays of each half, carved by chain_carve (shared but for the top level's when !pl.par) */
    /* outputs and state */
    int32_t *path;
    double *post;
    double ref;
    int lost;
};

static int chain_kind(const int32_t *tok, int64_t s)
{
    if (!(s & 1))
        return K_BLANK;
    return tok[s >> 1] == CYCTC_GAP ? K_GAP : K_LABEL;
}

/* is the step a -> s (a < s, possibly a = -1: the start; s = S: the end) allowed by rules (a)-(d)? */
static int chain_step_ok(const int32_t *tok, int64_t S, int64_t a, int64_t s)
{
    const int ks = s < S ? chain_kind(tok, s) : -1, ka = a >= 0 ? chain_kind(tok, a) : -1;
    for (int64_t i = a + 1; i < s; i++) {
        const int ki = chain_kind(tok, i);
        if (ki == K_LABEL)
            return 0;                               /* (a) */
        if (ks != K_LABEL && ks >= 0 && ki == ks)
            return 0;                               /* (b) */
    }
    if (ks >= 0 && ka >= 0) {
        if (ks == ka && ks != K_LABEL)
            return 0;                               /* (c) */
        if (ks == K_LABEL && ka == K_LABEL && tok[s >> 1] == tok[a >> 1])
            return 0;                               /* (d) */
    }
    return 1;
}

/* the graph's flags and classes (cls, flags must hold S entries); returns the largest offset used */
static int chain_graph(const int32_t *tok, int64_t S, int C, int blank, int32_t *cls, uint8_t *flags)
{
    int maxk = 1;
    for (int64_t s = 0; s < S; s++) {
        const int k = chain_kind(tok, s);
        cls[s] = k == K_BLANK ? blank : k == K_GAP ? C : tok[s >> 1];
        uint8_t f = 0;
        for (int d = 1; d <= 4 && s - d >= 0; d++) {
            if (chain_step_ok(tok, S, s - d, s)) {
                f |= (uint8_t)(1 << (d - 1));
                maxk = d > maxk ? d : maxk;
            }
        }
        if (s < 4 && chain_step_ok(tok, S, -1, s))
            f |= F_START;
        if (s >= S - 4 && chain_step_ok(tok, S, s, S))
            f |= F_END;
        flags[s] = f;
    }
    return maxk;
}

/* the frame where the posteriors' two halves meet (fb_run): fixed by T alone, so that every budget and thread count
 * does the same sums in the same order */
static inline int64_t fb_mid(int64_t T) { return T > 0 ? (T - 1) / 2 : 0; }

/* --- planning ------------------------------------------------------------------------------------------------ */

/* bytes of a plan with D levels of ratio r (as a double: never overflows), filling pl when not NULL; copies: of
 * the top level's rows (c0) and of the deeper levels' and their leaf (c1): the posteriors' two halves keep their
 * top levels at the same time, and the rest too when they run at the same time (see fb_run) */
static double ck_bytes(int64_t P0, int D, int64_t r, double rowb, double leafb, double fixed, int c0, int c1,
                       ck_plan *pl)
{
    int64_t P = P0;
    double b = 0.0;
    if (pl) {
        pl->D = D;
        pl->P[0] = P0;
    }
    for (int d = 0; d < D; d++) {
        int64_t q = (P + r - 1) / r;
        if (q < 1)
            q = 1;
        const int64_t pieces = (P + q - 1) / q;
        b += (double)(d == 0 ? c0 : c1) * (double)(pieces > 1 ? pieces - 1 : 0) * rowb;
        if (pl) {
            pl->P[d + 1] = q;
            pl->pieces[d] = pieces;
        }
        P = q;
    }
    return fixed + rowb /* + the top segment's start row */ + b + (double)(D == 0 ? c0 : c1) * (double)P * leafb;
}

/* the smallest plan of D levels: its ratio and bytes */
static double ck_best_r(int64_t P0, int D, double rowb, double leafb, double fixed, int c0, int c1, int64_t *r_out)
{
    if (D == 0) {
        *r_out = 2;
        return ck_bytes(P0, 0, 2, rowb, leafb, fixed, c0, c1, NULL);
    }
    double best = INFINITY;
    int64_t rmax = P0 < 65536 ? P0 : 65536;
    if (rmax < 2)
        rmax = 2;
    for (int64_t r = 2; r <= rmax; r++) {
        const double b = ck_bytes(P0, D, r, rowb, leafb, fixed, c0, c1, NULL);
        if (b < best) {
            best = b;
            *r_out = r;
        }
    }
    return best;
}

#define VT_B 1024 /* states per chunk of the tiled Viterbi pass (vit_tile) */
#define VT_NTH 2 /* threads of the tiled pass at most */
#define VT_GHOST 256 /* 4 x the most frames per tile: the second thread's overlap (see vit_tile) */
#define VT_STRIDE (VT_B + VT_GHOST + PAD + 44) /* its rows' stride: not 4 KiB apart (no 4K aliasing stalls) */

/* frames per tile of the tiled Viterbi pass: their scores stay within 256 KiB */
static inline int64_t vt_frames(int C)
{
    const int64_t k = 32768 / ((int64_t)C + 1);
    return k < 1 ? 1 : k > 64 ? 64 : k;
}

/* work-space sizes of one sequence: doubles per stored row, fixed bytes, leaf bytes per frame; par: the posteriors'
 * halves at the same time (see fb_run) */
static void chain_sizes(int64_t S, int C, int posteriors, int par, double *rowb, double *fixed, double *leafb)
{
    const double row = (double)(S + 2 * PAD + 1 + (S + BLK - 1) / BLK) * 8.0;
    /* classes, flags, the lists of states with offsets 3 and 4, the frame's scores, the masks */
    const double graph = (double)S * 5.0 + (double)(S / 2 + 2) * 16.0 + (double)(C + 1) * 16.0 + (double)S * 8.0 +
                         4.0 * (double)(S + 2 * PAD) * 8.0;
    *rowb = row;
    /* Viterbi: the tiled pass's frame scores, chunk rows and chunk boundaries (see vit_tile) */
    const double tile = (double)vt_frames(C) * ((double)(C + 1) + 2.0 * VT_NTH * PAD) * 8.0 +
                        VT_NTH * 2.0 * VT_STRIDE * 8.0;
    /* posteriors: work rows w[2], run and scratch tmp, for each half when they run at the same time (the second
     * half's frame scores too: the first's are in graph), and the rows at T - 1 (beta) and the halves' meeting
     * frame (alpha and beta); the row at frame 0 is the plan's start row (ck_bytes) */
    const double one = 4.0 * row + (BLK + 2 * PAD) * 8.0;
    const double halves = (par ? (double)S * 8.0 + (double)(C + 1) * 16.0 + 2.0 * one : one) + 3.0 * row;
    *fixed = graph + (posteriors ? halves : 2.0 * row + tile) + 256.0;
    *leafb = posteriors ? row : (double)S;
}

/* the plan: the fewest levels that fit the budget (0 when one pass with every back-pointer fits); -1 when none. The
 * posteriors: at each number of levels, the halves with rows of their own (they run at the same time) if that fits,
 * else sharing all but their top levels' rows (one after the other); the results are the same bits either way. */
static int ck_plan_make(int64_t T, int64_t S, int C, int posteriors, double budget, ck_plan *pl, double *bytes)
{
    const int64_t P0 = T <= 0 ? 0 : posteriors ? (T - 1) - fb_mid(T) : T - 1;
    double best = INFINITY;
    for (int D = 0; D <= CK_MAXD; D++) {
        for (int par = posteriors; par >= 0; par--) {
            double rowb, fixed, leafb;
            chain_sizes(S, C, posteriors, par, &rowb, &fixed, &leafb);
            const int c0 = posteriors ? 2 : 1, c1 = posteriors && par ? 2 : 1;
            int64_t r = 2;
            const double b = ck_best_r(P0, D, rowb, leafb, fixed, c0, c1, &r);
            /* one pass over everything only while it stays small: touching (and faulting in) hundreds of MB costs
             * more than the extra forward pass of one level of checkpoints */
            if (D == 0 && b > CK_ONE_PASS_MAX && budget > CK_ONE_PASS_MAX) {
                best = b < best ? b : best;
                continue;
            }
            if (b <= budget) {
                *bytes = ck_bytes(P0, D, r, rowb, leafb, fixed, c0, c1, pl);
                pl->par = par;
                return 0;
            }
            best = b < best ? b : best;
        }
        if (D > 0 && ((P0 >> D) == 0 || D > 1 + 64))
            break; /* ratio 2 already reaches leaves of one frame: more levels only add rows */
    }
    *bytes = best;
    return -1;
}

double cyctc_chain_work_bytes(int64_t T, int C, int64_t n, int posteriors, double budget)
{
    ck_plan pl;
    double vit, fb = 0.0;
    if (T == 0)
        return 1.0;
    const int rv = ck_plan_make(T, 2 * n + 1, C, 0, budget, &pl, &vit);
    const int rf = posteriors ? ck_plan_make(T, 2 * n + 1, C, 1, budget, &pl, &fb) : 0;
    if (rv == 0 && rf == 0)
        return vit > fb ? vit : fb;
    /* the smallest budget that works: each phase's minimum (a plan search without a budget) */
    if (rv == 0)
        ck_plan_make(T, 2 * n + 1, C, 0, 0.0, &pl, &vit);
    if (posteriors && rf == 0)
        ck_plan_make(T, 2 * n + 1, C, 1, 0.0, &pl, &fb);
    return -(vit > fb ? vit : fb);
}

/* --- Viterbi ------------------------------------------------------------------------------------------------- */

/* the frame's scores per class (C: the gap score) into g->sc, state s reading g->sc[g->cls[s]]: log scores, or
 * with linear probabilities relative to the frame's best; 1 when the frame holds NaN or +inf */
DECODE_HOT static int chain_frame(chain *g, int64_t t, int linear)
{
    if (g->load(g->x, g->xs, t, g->C, g->normalize, g->lp))
        return 1;
    const int C = g->C;
    double m = NEG_INF;
    for (int c = 0; c < C; c++)
        m = g->lp[c] > m ? g->lp[c] : m;
    g->lp[C] = m - g->gap_penalty;
    if (!linear) {
        g->sc = g->lp;
    } else {
        /* probabilities relative to the frame's best (at most 1), one exp per class */
        const double ref = m == NEG_INF ? 0.0 : m;
        double *ep = g->lp + C + 1;
        for (int c = 0; c <= C; c++)
            ep[c] = exp(g->lp[c] - ref);
        g->sc = ep;
    }
    /* the scores in state order, so that the recursions' loops stay vectorisable: the blank everywhere, then the
     * tokens (odd states) */
    const double *sc = g->sc;
    const int32_t *cls = g->cls;
    double *em = g->em;
    /* only the states of the current window [elo, ehi] (the whole row unless a pass narrows it) */
    for (int64_t s = g->elo; s <= g->ehi; s++)
        em[s] = sc[cls[s]];
    return 0;
}

static void vit_init_row(const chain *g, double *row)
{
    const double *sc = g->sc;
    for (int k = 0; k < PAD; k++)
        row[k] = NEG_INF;
    for (int64_t s = 0; s < g->S; s++)
        row[PAD + s] = (g->flags[s] & F_START) ? sc[g->cls[s]] : NEG_INF;
}

/* the first index i of a sorted list (n entries) with v[i] >= x */
static inline int64_t lower_bound64(const int64_t *v, int64_t n, int64_t x)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* one Viterbi frame over the states lo..hi: cur = best predecessor in prev + the frame's scores; bk (when not NULL,
 * indexed by state) gets the offsets. prev must hold the states lo - 4..hi (or the padding). Offsets 3 and 4 exist
 * only at the first label after a gap (one state per gap): the main loops look at the self-loop and offsets 1 and
 * 2, and those few states are redone with all five candidates. */
DECODE_HOT static void vit_step(const chain *g, const double *prevp, double *curp, uint8_t *bk, int64_t lo, int64_t hi)
{
    const double *prev = prevp + PAD, *em = g->em;
    const double *m1 = g->mask[0] + PAD, *m2 = g->mask[1] + PAD, *m3 = g->mask[2] + PAD, *m4 = g->mask[3] + PAD;
    double *cur = curp + PAD;
    /* offset 1 is allowed everywhere (neighbours are a blank and a token): m1 is only read for the few states
     * redone below; prev[-1] is the -inf padding */
    if (bk == NULL) {
        for (int64_t s = lo; s <= hi; s++) {
            double best = prev[s], c = prev[s - 1];
            best = c > best ? c : best;
            c = prev[s - 2] + m2[s];
            best = c > best ? c : best;
            cur[s] = best + em[s];
        }
    } else {
        /* the offset is the first candidate equal to the maximum: the same as replacing only on a strictly larger
         * candidate in the order self-loop, 1, 2, written without branches */
        for (int64_t s = lo; s <= hi; s++) {
            const double c0 = prev[s], c1 = prev[s - 1], c2 = prev[s - 2] + m2[s];
            double best = c1 > c0 ? c1 : c0;
            best = c2 > best ? c2 : best;
            int32_t arg = c2 == best ? 2 : 0;
            arg = c1 == best ? 1 : arg;
            arg = c0 == best ? 0 : arg;
            cur[s] = best + em[s];
            bk[s] = (uint8_t)arg;
        }
    }
    for (int64_t i = lower_bound64(g->far, g->nfar, lo); i < g->nfar && g->far[i] <= hi; i++) {
        const int64_t s = g->far[i];
        const double c[5] = {prev[s], prev[s - 1] + m1[s], prev[s - 2] + m2[s], prev[s - 3] + m3[s],
                             prev[s - 4] + m4[s]};
        double best = c[0];
        int arg = 0;
        for (int k = 1; k < 5; k++) {
            if (c[k] > best) {
                best = c[k];
                arg = k;
            }
        }
        cur[s] = best + em[s];
        if (bk)
            bk[s] = (uint8_t)arg;
    }
}

/* the end state of the best path in a row at the last frame (the last of equal maxima); -1 when none is finite */
static int64_t vit_pick_end(const chain *g, const double *rowp, double *score)
{
    const double *row = rowp + PAD;
    int64_t arg = -1;
    double best = NEG_INF;
    for (int64_t s = g->S - 1; s >= 0 && s >= g->S - 4; s--) {
        if ((g->flags[s] & F_END) && row[s] > best) {
            best = row[s];
            arg = s;
        }
    }
    *score = best;
    return arg;
}

#define CHAIN_NONFINITE (-3)
#define CHAIN_INFEASIBLE (-4)

/* one frame of a chunk of n states (pv[-4..-1]: the 4 states below it), as vit_step without back-pointers; the
 * scores read straight from the frame's class scores (cls of a blank state is the blank) */
DECODE_HOT static void vt_row(const double *restrict pv, double *restrict cv, const double *restrict m2,
                              const double *restrict sc, const int32_t *restrict cls, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double best = pv[i], c = pv[i - 1];
        best = c > best ? c : best;
        c = pv[i - 2] + m2[i];
        best = c > best ? c : best;
        cv[i] = best + sc[cls[i]];
    }
}

/* The first pass's frames a + 1..t1 (at most vt_frames) from the whole row prev (frame a) into out (frame t1),
 * tiled: the states in chunks of VT_B, each chunk carried through all the frames before the next one, so that its
 * rows stay in the first-level cache instead of streaming two whole rows (and the scores) through memory every
 * frame. A chunk reads 4 states of the chunk below at each frame: the chunk below leaves them in a boundary buffer.
 * Every state gets the same operations in the same order as in vit_step (without back-pointers): the same bits. */
DECODE_HOT static int vit_tile(chain *g, const double *prevp, double *outp, int64_t a, int64_t t1)
{
    const int64_t S = g->S, K = t1 - a;
    const int C = g->C;
    const int32_t *cls = g->cls;
    const double *m1 = g->mask[0] + PAD, *m2 = g->mask[1] + PAD, *m3 = g->mask[2] + PAD, *m4 = g->mask[3] + PAD;
    const double *prev = prevp + PAD;
    double *out = outp + PAD;
    for (int64_t k = 0; k < K; k++) {
        double *lp = g->vt_sc + k * (C + 1);
        if (g->load(g->x, g->xs, a + 1 + k, C, g->normalize, lp))
            return 1;
        double m = NEG_INF;
        for (int c = 0; c < C; c++)
            m = lp[c] > m ? lp[c] : m;
        lp[C] = m - g->gap_penalty; /* as chain_frame */
    }
    /* Two threads: the chunks split in two runs, the second thread's run starting 4K states lower (K frames): a
     * step reads at most 4 states below, so wrong values from the start of those extra states (they read -inf
     * below them) climb 4 states a frame and never reach the run's own states within K frames: no hand-over
     * between the threads inside a tile, at the cost of recomputing at most 4K x K states. */
    const int64_t nch = (S + VT_B - 1) / VT_B;
    const int nth = g->nthreads > 1 && nch >= 4 && 4 * K <= VT_GHOST ? 2 : 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nth) if (nth > 1)
#endif
    {
#ifdef _OPENMP
        const int tid = nth > 1 ? omp_get_thread_num() : 0;
#else
        const int tid = 0;
#endif
        double *loc[2] = {g->vt_loc + tid * 2 * VT_STRIDE, g->vt_loc + tid * 2 * VT_STRIDE + VT_STRIDE};
        double *bin = g->vt_bnd + (2 * tid) * K * PAD, *bout = g->vt_bnd + (2 * tid + 1) * K * PAD;
        const int64_t cfirst = tid == 0 ? 0 : nch / 2, cend = nth == 1 || tid == 1 ? nch : nch / 2;
        for (int64_t c = cfirst; c < cend; c++) {
            const int64_t c0 = c * VT_B, c1 = c0 + VT_B < S ? c0 + VT_B : S;
            const int64_t ghost = c == cfirst && c > 0 ? 4 * K : 0, g0 = c0 - ghost, n = c1 - g0;
            for (int j = 0; j < PAD; j++)
                loc[0][j] = prev[g0 - PAD + j]; /* the padding (-inf) below state 0 */
            memcpy(loc[0] + PAD, prev + g0, (size_t)n * sizeof(double));
            const int64_t fi0 = lower_bound64(g->far, g->nfar, g0), fi1 = lower_bound64(g->far, g->nfar, c1);
            for (int64_t k = 0; k < K; k++) {
                double *in = loc[k & 1], *o = loc[(k + 1) & 1];
                if (k > 0)
                    for (int j = 0; j < PAD; j++) /* the chunk below's top states, or -inf (state 0, a run's start) */
                        in[j] = c == cfirst ? NEG_INF : bin[(k - 1) * PAD + j];
                const double *sc = g->vt_sc + k * (C + 1);
                const double *pv = in + PAD - g0; /* pv[s]: state s at the previous frame */
                double *cv = o + PAD - g0;
                vt_row(in + PAD, o + PAD, m2 + g0, sc, cls + g0, n);
                for (int64_t i = fi0; i < fi1; i++) {
                    const int64_t s = g->far[i];
                    const double cc[5] = {pv[s], pv[s - 1] + m1[s], pv[s - 2] + m2[s], pv[s - 3] + m3[s],
                                          pv[s - 4] + m4[s]};
                    double best = cc[0];
                    for (int j = 1; j < 5; j++)
                        best = cc[j] > best ? cc[j] : best;
                    cv[s] = best + sc[cls[s]];
                }
                if (c1 < S)
                    for (int j = 0; j < PAD; j++)
                        bout[k * PAD + j] = cv[c1 - PAD + j];
            }
            memcpy(out + c0, loc[K & 1] + PAD + ghost, (size_t)(c1 - c0) * sizeof(double));
            double *tb = bin;
            bin = bout;
            bout = tb;
        }
    }
    for (int j = 0; j < PAD; j++)
        outp[j] = NEG_INF;
    return 0;
}

/* the path over frames a..b of a segment at level d, whose row at frame a is row_a and whose state at frame b is
 * *s (or, when *s < 0, the best end state, found once frame b = T - 1 is reached); *s becomes the state at a */
static int vit_segment(chain *g, int d, int64_t a, int64_t b, const double *row_a, int64_t *s, double *score)
{
    const int64_t S = g->S;
    /* The window. With the state at frame b known (every segment but the first pass's), only the states that can
     * still reach it are recomputed: at frame t, m = b - t steps before, states in [lo_t, s_b]. A step advances 2
     * states at most, except the offsets 3 and 4 into a far state (the first label after a gap), which add 2 more:
     * a state that reaches s_b in m steps is >= s_b - 4m, hence >= s_b - 2m - 2 F with F the far states in
     * (s_b - 4m, s_b]; lo_t is that bound. Every state that can reach s_b is in the window, and so is each of its
     * allowed predecessors at t - 1 (they reach s_b too, one step more): the values in the window are the same bits
     * as over the whole row, and the backtracking from s_b never leaves it, so the path and the ties are those of
     * the whole recursion. A disallowed predecessor may lie outside the previous window: its entry is masked to
     * -inf or, if the row never held a value there, is whatever the memory holds, which the comparisons (a
     * candidate replaces only a strictly larger one; NaN never does) ignore. A parent's rows hold (at least) this
     * window: the parent's end state is >= s_b and reaches it. */
    const int64_t sb = *s;
#define VIT_WINDOW(t, lo, hi)                                                                                      \
    do {                                                                                                           \
        if (sb < 0) {                                                                                              \
            lo = 0;                                                                                                \
            hi = S - 1;                                                                                            \
        } else {                                                                                                   \
            const int64_t m_ = b - (t), w4_ = m_ > sb / 4 ? sb : 4 * m_;                                           \
            const int64_t F_ = lower_bound64(g->far, g->nfar, sb + 1) - lower_bound64(g->far, g->nfar, sb - w4_ + 1); \
            hi = sb;                                                                                               \
            lo = sb - w4_;                                                                                         \
            lo = m_ <= sb / 2 && sb - 2 * m_ - 2 * F_ > lo ? sb - 2 * m_ - 2 * F_ : lo;                            \
            lo = lo < 0 ? 0 : lo;                                                                                  \
        }                                                                                                          \
    } while (0)
    if (d == g->pl.D) {
        uint8_t *bk = (uint8_t *)g->leaf;
        const double *prev = row_a;
        for (int64_t t = a + 1; t <= b; t++) {
            int64_t lo, hi;
            VIT_WINDOW(t, lo, hi);
            g->elo = lo;
            g->ehi = hi;
            if (chain_frame(g, t, 0))
                return CHAIN_NONFINITE;
            double *cur = g->w[(t - a) & 1];
            vit_step(g, prev, cur, bk + (size_t)(t - a - 1) * (size_t)S, lo, hi);
            prev = cur;
        }
        if (*s < 0 && (*s = vit_pick_end(g, prev, score)) < 0)
            return CHAIN_INFEASIBLE;
        int64_t v = *s;
        for (int64_t t = b; t > a; t--) {
            g->path[t] = (int32_t)v;
            v -= bk[(size_t)(t - a - 1) * (size_t)S + (size_t)v];
        }
        g->path[a] = (int32_t)v;
        *s = v;
        return 0;
    }
    const int64_t q = g->pl.P[d + 1], n = (b - a + q - 1) / q;
    const int64_t stop = *s < 0 ? b : a + (n - 1) * q;
    double *slots = g->slots[d];
    const double *prev = row_a;
    if (sb < 0) { /* the first pass over the whole row: tiled, up to each checkpoint (vit_tile) */
        const int64_t K = vt_frames(g->C);
        int64_t t = a, flip = 0;
        while (t < stop) {
            const int64_t next_ck = a + ((t - a) / q + 1) * q;
            int64_t t1 = t + K < stop ? t + K : stop;
            t1 = t1 < next_ck ? t1 : next_ck;
            const int ck = (t1 - a) % q == 0 && (t1 - a) / q < n;
            double *cur = ck ? slots + (size_t)((t1 - a) / q - 1) * g->row : g->w[flip ^= 1];
            if (vit_tile(g, prev, cur, t, t1))
                return CHAIN_NONFINITE;
            prev = cur;
            t = t1;
        }
    }
    for (int64_t t = sb < 0 ? stop + 1 : a + 1; t <= stop; t++) {
        int64_t lo, hi;
        VIT_WINDOW(t, lo, hi);
        g->elo = lo;
        g->ehi = hi;
        if (chain_frame(g, t, 0))
            return CHAIN_NONFINITE;
        double *cur = g->w[(t - a) & 1];
        vit_step(g, prev, cur, NULL, lo, hi);
        if ((t - a) % q == 0 && (t - a) / q < n) {
            double *slot = slots + (size_t)((t - a) / q - 1) * g->row;
            memcpy(slot, cur, PAD * sizeof(double));
            memcpy(slot + PAD + lo, cur + PAD + lo, (size_t)(hi - lo + 1) * sizeof(double));
        }
        prev = cur;
    }
#undef VIT_WINDOW
    if (*s < 0 && (*s = vit_pick_end(g, prev, score)) < 0)
        return CHAIN_INFEASIBLE;
    for (int64_t j = n - 1; j >= 0; j--) {
        const int64_t pa = a + j * q, pb = pa + q < b ? pa + q : b;
        const double *r = j == 0 ? row_a : slots + (size_t)(j - 1) * g->row;
        const int rc = vit_segment(g, d + 1, pa, pb, r, s, score);
        if (rc)
            return rc;
    }
    return 0;
}

/* --- posteriors ---------------------------------------------------------------------------------------------- */

/* Posterior rows hold mantissas with one power-of-two exponent per block of BLK states (value = mantissa *
 * 2^exponent, the exponents stored as doubles after the row's padding): a row of a long recording spans far more
 * than a double's range (the untranscribed states of early utterances hold most of the forward mass long after the
 * states that carry the posterior), while a block of neighbouring states does not. Blocks exchange values through
 * exact power-of-two rescales, so recomputing a row repeats the same bits. An all-zero block has exponent ZEXP. */

static inline double *fb_exp(const chain *g, double *rowp) { return rowp + PAD + g->S + PAD; }

/* 2^k for integer k (0 below the normal range), from the exponent bits: exact, no library call */
static inline double pow2i(int64_t k)
{
    if (k < -1022)
        return 0.0;
    union {
        uint64_t u;
        double d;
    } v;
    v.u = (uint64_t)(k + 1023) << 52;
    return v.d;
}

/* scale one block (n values) so that its largest lies in [0.5, 1); base: the exponent its values are in now.
 * Values below 2^-960 of the block's largest are flushed to zero: they could only matter with a beta as far above
 * the block's (fb_post's check sees that), and left alone they would become subnormal (slow). */
static inline double fb_block_norm(double *v, int64_t n, double base)
{
    double m = 0.0, mm[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t s = 0;
    for (; s + 4 <= n; s += 4)
        for (int k = 0; k < 4; k++)
            mm[k] = v[s + k] > mm[k] ? v[s + k] : mm[k];
    for (; s < n; s++)
        m = v[s] > m ? v[s] : m;
    for (int k = 0; k < 4; k++)
        m = mm[k] > m ? mm[k] : m;
    if (!(m > 0.0)) {
        for (s = 0; s < n; s++)
            v[s] = 0.0;
        return ZEXP;
    }
    int e;
    frexp(m, &e);
    const double f = (e >= -1023 && e <= 1022) ? pow2i(-e) : ldexp(1.0, -e);
    for (s = 0; s < n; s++) {
        const double x = v[s] * f;
        v[s] = x < 0x1p-961 ? 0.0 : x;
    }
    return base + e;
}

/* every block of a row (the first rows of the posteriors) */
static void fb_blocks(const chain *g, double *row, double *ex, const double *base)
{
    const int64_t S = g->S;
    for (int64_t b = 0, s0 = 0; s0 < S; b++, s0 += BLK)
        ex[b] = fb_block_norm(row + s0, (s0 + BLK < S ? s0 + BLK : S) - s0, base[b]);
}

static inline double fb_rescale(double from, double to)
{
    /* from <= to always (to is the larger of the two); far below: nothing */
    return from == ZEXP || from - to < -1022.0 ? 0.0 : pow2i((int64_t)(from - to));
}

/* Posteriors in a band. The forward and backward rows are computed only over the blocks of a band of states around
 * the best path: at frame t the blocks holding path[t] - bw .. path[t] + bw (fb_band); every other state counts as
 * zero. That is the forward-backward of the graph restricted to the band (the paths that never leave it): its
 * check (sum_s alpha_t(s) beta_t(s) the same at every frame) and its posteriors are those of that graph. The mass
 * a step would move out of the band is measured at every frame instead of dropped silently: the blocks next to the
 * band are computed too, and their mass relative to the band's (an upper bound: BLK values below 2^e against a
 * largest value of at least 2^(top - 1)) is summed over the frames, forwards into leak_f and backwards into leak_b.
 * The driver widens the band (4 times, up to the whole row, which is the unrestricted recursion) until both sums
 * are below CHAIN_BAND_TOL: the share of either direction's mass that ever steps out of the band is below it (a
 * bound, from the block exponents). What that bounds is the mass leaving; it is not by itself a proof about the
 * whole graph's posteriors (mass outside could, in principle, gain weight there and come back in later); the
 * tests compare the band's posteriors with the whole graph's (chain_reference.py, and the band set to the whole
 * row), and on the synthetic recordings they are the same bits. The lost-mass check keeps its meaning: it is the
 * band graph's own forward-backward identity. */
#define CHAIN_BAND_TOL 1e-11

int cyctc_chain_band_init = 512; /* the first band's half-width in states (a test hook; see decode.h) */
int64_t cyctc_chain_band_last = 0; /* the half-width the last posteriors finished with (a test hook) */
int cyctc_chain_fb_plan_last = 0; /* 2 D + par of the last posteriors' plan (a test hook; see decode.h) */
double cyctc_chain_leak_last[2] = {0.0, 0.0}; /* the last posteriors' leak sums (a test hook; see decode.h) */

static inline int64_t fb_nblk(const chain *g) { return (g->S + BLK - 1) / BLK; }

/* the band's blocks at frame t */
static inline void fb_band(const chain *g, int64_t t, int64_t *blo, int64_t *bhi)
{
    const int64_t v = g->path[t];
    const int64_t lo = v - g->bw < 0 ? 0 : v - g->bw, hi = v + g->bw > g->S - 1 ? g->S - 1 : v + g->bw;
    *blo = lo / BLK;
    *bhi = hi / BLK;
}

/* the mass of blocks x0..x1 outside r0..r1 against the largest block inside (see above); ex: the row's exponents.
 * Returns 0 when nothing is outside, a large value when the band is all zero but something is outside. */
static double fb_leak(const double *ex, int64_t x0, int64_t x1, int64_t r0, int64_t r1)
{
    double top = ZEXP, out = ZEXP;
    for (int64_t b = r0; b <= r1; b++)
        top = ex[b] > top ? ex[b] : top;
    double sum = 0.0;
    for (int64_t b = x0; b <= x1; b++) {
        if ((b >= r0 && b <= r1) || ex[b] == ZEXP)
            continue;
        out = ex[b];
        if (top == ZEXP)
            return 1.0;
        sum += (double)BLK * (out - top + 1.0 < -1000.0 ? 0.0 : exp2(out - top + 1.0));
    }
    return sum;
}

/* one forward frame t: cur = (sum of the allowed predecessors in prev) * the frame's scores, over the blocks that
 * the band of frame t - 1 reaches (those of frame t and at most one more above: a step advances 4 states at most,
 * and the band's bottom never moves down); 0 when the band's blocks are all zero */
DECODE_HOT static int fb_step(chain *g, double *prevp, double *curp, int64_t t)
{
    const int64_t S = g->S, nb = fb_nblk(g);
    const double *em = g->em;
    const double *m2 = g->mask[1] + PAD, *m3 = g->mask[2] + PAD, *m4 = g->mask[3] + PAD;
    const double *pex = fb_exp(g, prevp);
    double *cur = curp + PAD, *cex = fb_exp(g, curp);
    double *pr = g->tmp + PAD; /* a block's predecessors, in its base */
    const double *prev = prevp + PAD;
    int64_t pl, ph, rl, rh;
    fb_band(g, t - 1, &pl, &ph);
    fb_band(g, t, &rl, &rh);
    const int64_t x0 = pl, x1 = ph + 1 < nb ? ph + 1 : nb - 1;
    int64_t fi = lower_bound64(g->far, g->nfar, x0 * BLK);
    for (int k = 0; k < PAD; k++)
        curp[k] = 0.0;
    for (int64_t b = x0; b <= x1; b++) {
        const int64_t s0 = b * BLK, s1 = s0 + BLK < S ? s0 + BLK : S;
        const double eo = b <= ph ? pex[b] : ZEXP, en = b - 1 >= pl ? pex[b - 1] : ZEXP;
        const double E = eo > en ? eo : en;
        if (E == ZEXP) {
            for (int64_t s = s0; s < s1; s++)
                cur[s] = 0.0;
            cex[b] = ZEXP;
            while (fi < g->nfar && g->far[fi] < s1)
                fi++;
            continue;
        }
        const double fo = fb_rescale(eo, E), fn = fb_rescale(en, E);
        for (int k = 1; k <= PAD; k++) {
            const double v = s0 - k >= 0 && en != ZEXP ? prev[s0 - k] * fn : 0.0;
            pr[-k] = v < 0x1p-1000 ? 0.0 : v; /* no subnormals (slow, and below anything that matters) */
        }
        if (eo != ZEXP) {
            for (int64_t s = s0; s < s1; s++) {
                const double v = prev[s] * fo;
                pr[s - s0] = v < 0x1p-1000 ? 0.0 : v;
            }
        } else {
            for (int64_t s = s0; s < s1; s++)
                pr[s - s0] = 0.0;
        }
        const double *q = pr - s0;
        for (int64_t s = s0; s < s1; s++)
            cur[s] = (q[s] + q[s - 1] + q[s - 2] * m2[s]) * em[s]; /* offset 1: always (see vit_step) */
        for (; fi < g->nfar && g->far[fi] < s1; fi++) { /* offsets 3 and 4: see vit_step */
            const int64_t s = g->far[fi];
            cur[s] += (q[s - 3] * m3[s] + q[s - 4] * m4[s]) * em[s];
        }
        cex[b] = fb_block_norm(cur + s0, s1 - s0, E);
    }
    int any = 0;
    for (int64_t b = rl; b <= rh; b++)
        any |= cex[b] != ZEXP;
    if (t > g->fdone) { /* every frame counted once: the first time it is computed (in increasing t) */
        g->fdone = t;
        g->leak_f += fb_leak(cex, x0, x1, rl, rh);
    }
    return any;
}

/* log2 of sum_s alpha_s beta_s over the band of frame t (block exponents included); the path state's posterior
 * into g->post[t]. The sum must be the same at every frame (the one at T - 1, g->ref, with a tolerance): the half
 * keeps its extremes, which the driver checks (fb_run) -- the same test as frame by frame, since a difference's
 * rounding is monotone. */
DECODE_HOT static void fb_post(chain *g, int64_t t, double *alphap, double *betap)
{
    const int64_t S = g->S;
    const double *al = alphap + PAD, *be = betap + PAD, *ea = fb_exp(g, alphap), *eb = fb_exp(g, betap);
    int64_t rl, rh;
    fb_band(g, t, &rl, &rh);
    double top = ZEXP;
    for (int64_t b = rl; b <= rh; b++)
        if (ea[b] != ZEXP && eb[b] != ZEXP && ea[b] + eb[b] > top)
            top = ea[b] + eb[b];
    double dot = 0.0;
    if (top != ZEXP) {
        for (int64_t b = rl; b <= rh; b++) {
            if (ea[b] == ZEXP || eb[b] == ZEXP)
                continue;
            const int64_t s0 = b * BLK, s1 = s0 + BLK < S ? s0 + BLK : S;
            double d = 0.0;
            for (int64_t s = s0; s < s1; s++)
                d += al[s] * be[s];
            dot += d * fb_rescale(ea[b] + eb[b], top);
        }
    }
    const int32_t v = g->path[t];
    const int64_t bv = v / BLK;
    const double pv = (ea[bv] == ZEXP || eb[bv] == ZEXP) ? 0.0 : al[v] * be[v] * fb_rescale(ea[bv] + eb[bv], top);
    g->post[t] = dot > 0.0 ? pv / dot : 0.0;
    const double total = dot > 0.0 ? top + log2(dot) : NEG_INF;
    if (t == g->T - 1) {
        g->ref = total;
    } else if (total != total) {
        g->tot_nan = 1;
    } else {
        g->tot_min = total < g->tot_min ? total : g->tot_min;
        g->tot_max = total > g->tot_max ? total : g->tot_max;
    }
}

/* beta from frame t (row inp) to t - 1 (row outp, which may be inp), with the scores of frame t in g->sc: over the
 * blocks of frame t's band and the one below (the band's top never moves up going back, its bottom at most 4 states
 * down); 0 when the band's blocks at t - 1 are all zero. Block b reads blocks b and b + 1 of inp and writes block b
 * of outp, in increasing b: in place too. The mass leaving the band is counted the first time frame t is stepped
 * (in decreasing t, as leak_f: see fb_step). */
DECODE_HOT static int fb_back(chain *g, double *inp, double *outp, int64_t t)
{
    const int64_t S = g->S;
    const double *em = g->em, *m2 = g->mask[1] + PAD, *m3 = g->mask[2] + PAD, *m4 = g->mask[3] + PAD;
    const double *bi = inp + PAD, *xi = fb_exp(g, inp);
    double *be = outp + PAD, *ex = fb_exp(g, outp);
    double *tq = g->tmp; /* a block's successors (BLK + PAD), in its base */
    int64_t rl, rh, nl, nh;
    fb_band(g, t, &rl, &rh);
    fb_band(g, t - 1, &nl, &nh);
    const int64_t y0 = rl > 0 ? rl - 1 : 0, y1 = rh;
    int64_t fi = lower_bound64(g->src, g->nsrc, y0 * BLK);
    for (int64_t b = y0; b <= y1; b++) {
        const int64_t s0 = b * BLK, s1 = s0 + BLK < S ? s0 + BLK : S;
        const double eo = b >= rl ? xi[b] : ZEXP, en = s1 < S && b + 1 <= rh ? xi[b + 1] : ZEXP;
        const double E = eo > en ? eo : en;
        if (E == ZEXP) {
            for (int64_t s = s0; s < s1; s++)
                be[s] = 0.0;
            ex[b] = ZEXP;
            while (fi < g->nsrc && g->src[fi] < s1)
                fi++;
            continue;
        }
        const double fo = fb_rescale(eo, E), fn = fb_rescale(en, E);
        if (eo != ZEXP) {
            for (int64_t s = s0; s < s1; s++) {
                const double v = em[s] * bi[s] * fo;
                tq[s - s0] = v < 0x1p-1000 ? 0.0 : v;
            }
        } else {
            for (int64_t s = s0; s < s1; s++)
                tq[s - s0] = 0.0;
        }
        for (int64_t s = s1; s < s1 + PAD; s++) {
            const double v = s < S && en != ZEXP ? em[s] * bi[s] * fn : 0.0;
            tq[s - s0] = v < 0x1p-1000 ? 0.0 : v;
        }
        const double *q = tq - s0;
        for (int64_t s = s0; s < s1; s++)
            be[s] = q[s] + q[s + 1] + q[s + 2] * m2[s + 2]; /* offset 1: always (see vit_step) */
        for (; fi < g->nsrc && g->src[fi] < s1; fi++) { /* offsets 3 and 4: see vit_step */
            const int64_t s = g->src[fi];
            be[s] += q[s + 3] * m3[s + 3] + q[s + 4] * m4[s + 4];
        }
        ex[b] = fb_block_norm(be + s0, s1 - s0, E); /* in place: block b + 1 reads xi[b + 1] and up only */
    }
    int any = 0;
    for (int64_t b = nl; b <= nh; b++)
        any |= ex[b] != ZEXP;
    if (t < g->bdone) {
        g->bdone = t;
        g->leak_b += fb_leak(ex, y0, y1, nl, nh);
    }
    return any;
}

/* the states whose scores a forward step into frame t (fwd) or a backward step from frame t reads */
static void fb_window(chain *g, int64_t t, int fwd)
{
    int64_t l, h;
    const int64_t nb = fb_nblk(g);
    if (fwd) {
        fb_band(g, t - 1, &l, &h);
        h = h + 1 < nb ? h + 1 : nb - 1;
        g->elo = l * BLK;
        g->ehi = (h + 1) * BLK < g->S ? (h + 1) * BLK - 1 : g->S - 1;
    } else {
        fb_band(g, t, &l, &h);
        l = l > 0 ? l - 1 : 0;
        g->elo = l * BLK;
        g->ehi = (h + 1) * BLK + PAD < g->S ? (h + 1) * BLK + PAD - 1 : g->S - 1;
    }
}

/* Two halves. The frames split at m = fb_mid(T) into 0..m, solved forward first (its checkpoints hold alpha, its
 * leaves alpha rows, beta runs back through them: fbf_*), and m..T - 1, solved backward first (checkpoints of beta,
 * alpha runs forward through its leaves: fbb_*). Each half is a plan of its own (ck_plan_make: two copies of the
 * plan of the longer half), and only the rows at m pass between them: fb_run first takes each half's first
 * direction through to m (alpha_m, beta_m), then each half its posteriors. The two halves run on two threads when
 * asked, or one after the other: either way every row is the same bits (recomputed from a checkpoint, a row repeats
 * the same operations), and so is every posterior. The mass leaving the band is summed per half and direction, each
 * frame once, in frame order (the first time the frame is stepped: see fdone and bdone), and the halves' sums are
 * added in a fixed order: the widening decisions do not depend on the thread count or the budget either. */
#define CHAIN_HALT (-6)

/* stop this half: it lost mass, or (below the whole row) more than the tolerated mass left the band, which decides
 * the pass (widen, or lost); or the other half stopped. The final sums can only be larger than a half's. */
static inline int fb_stop(chain *g)
{
    if (g->lost || (g->bw < g->S && (g->leak_f > CHAIN_BAND_TOL || g->leak_b > CHAIN_BAND_TOL))) {
        __atomic_store_n(g->halt, 1, __ATOMIC_RELAXED);
        return 1;
    }
    return __atomic_load_n(g->halt, __ATOMIC_RELAXED);
}

/* pieces of a segment a..b at level d < D (length q each, the last shorter) */
static inline int64_t fb_pieces(const chain *g, int d, int64_t a, int64_t b, int64_t *q)
{
    *q = g->pl.P[d + 1];
    return (b - a + *q - 1) / *q;
}

/* forward rows of frames a + 1..stop from row_a (frame a) of a segment a..b at level d: at the leaf level every row
 * into the leaf (frame t at leaf + (t - a - 1) R); above it the rows at the piece boundaries a + j q (j = 1..n - 1)
 * into the level's slots, the row of stop into last (when not NULL), the others into the work rows */
static int fbf_rows(chain *g, int d, int64_t a, int64_t b, double *row_a, int64_t stop, double *last)
{
    const size_t R = g->row;
    const int leaf = d == g->pl.D;
    int64_t q = 1, n = 0;
    if (!leaf)
        n = fb_pieces(g, d, a, b, &q);
    double *prev = row_a;
    for (int64_t t = a + 1; t <= stop; t++) {
        fb_window(g, t, 1);
        if (chain_frame(g, t, 1))
            return CHAIN_NONFINITE;
        double *cur = leaf                                   ? (double *)g->leaf + (size_t)(t - a - 1) * R
                      : (t - a) % q == 0 && (t - a) / q < n ? g->slots[d] + (size_t)((t - a) / q - 1) * R
                      : t == stop && last                    ? last
                                                             : g->w[(t - a) & 1];
        if (!fb_step(g, prev, cur, t))
            g->lost = 1;
        if (fb_stop(g))
            return CHAIN_HALT;
        prev = cur;
    }
    return 0;
}

static int fbf_segment(chain *g, int d, int64_t a, int64_t b, double *row_a, double **beta);

/* the posteriors of frames b down to a + 1 of a segment of the forward-first half at level d (alpha at a: row_a;
 * at the leaf level, the leaf holds alpha a + 1..b), beta at b in *beta; *beta becomes beta at a (a run row) */
static int fbf_back(chain *g, int d, int64_t a, int64_t b, double *row_a, double **beta)
{
    const size_t R = g->row;
    if (d == g->pl.D) {
        const double *rows = (double *)g->leaf;
        for (int64_t t = b; t > a; t--) {
            fb_post(g, t, (double *)rows + (size_t)(t - a - 1) * R, *beta);
            fb_window(g, t, 0);
            if (chain_frame(g, t, 1))
                return CHAIN_NONFINITE;
            double *nb = *beta == g->run ? g->alt : g->run;
            if (!fb_back(g, *beta, nb, t))
                g->lost = 1;
            *beta = nb;
            if (fb_stop(g))
                return CHAIN_HALT;
        }
        return 0;
    }
    int64_t q;
    const int64_t n = fb_pieces(g, d, a, b, &q);
    for (int64_t j = n - 1; j >= 0; j--) {
        const int64_t pa = a + j * q, pb = pa + q < b ? pa + q : b;
        const int rc = fbf_segment(g, d + 1, pa, pb, j == 0 ? row_a : g->slots[d] + (size_t)(j - 1) * R, beta);
        if (rc)
            return rc;
    }
    return 0;
}

static int fbf_segment(chain *g, int d, int64_t a, int64_t b, double *row_a, double **beta)
{
    int64_t q = 1, stop = b;
    if (d < g->pl.D)
        stop = a + (fb_pieces(g, d, a, b, &q) - 1) * q;
    const int rc = fbf_rows(g, d, a, b, row_a, stop, NULL);
    return rc ? rc : fbf_back(g, d, a, b, row_a, beta);
}

/* beta rows of frames b - 1 down to stop from row_b (frame b) of a segment a..b at level d: at the leaf level every
 * row into the leaf (frame u at leaf + (u - a) R); above it the rows at the piece boundaries a + j q (j = n - 1..1)
 * into the level's slots (slot j - 1), the row of stop into last (when not NULL), the others into the work rows */
static int fbb_rows(chain *g, int d, int64_t a, int64_t b, double *row_b, int64_t stop, double *last)
{
    const size_t R = g->row;
    const int leaf = d == g->pl.D;
    int64_t q = 1;
    if (!leaf)
        fb_pieces(g, d, a, b, &q);
    double *prev = row_b;
    for (int64_t t = b; t > stop; t--) {
        const int64_t u = t - 1; /* the frame of the row computed */
        fb_window(g, t, 0);
        if (chain_frame(g, t, 1))
            return CHAIN_NONFINITE;
        double *cur = leaf                               ? (double *)g->leaf + (size_t)(u - a) * R
                      : (u - a) % q == 0 && u - a >= q ? g->slots[d] + (size_t)((u - a) / q - 1) * R
                      : u == stop && last              ? last
                                                       : g->w[(b - u) & 1];
        if (!fb_back(g, prev, cur, t))
            g->lost = 1;
        if (fb_stop(g))
            return CHAIN_HALT;
        prev = cur;
    }
    return 0;
}

static int fbb_segment(chain *g, int d, int64_t a, int64_t b, double *row_b, double **alpha);

/* the posteriors of frames a + 1..b of a segment of the backward-first half at level d (beta at b: row_b; at the
 * leaf level, the leaf holds beta a..b - 1), alpha at a in *alpha; *alpha becomes alpha at b (a run row) */
static int fbb_fwd(chain *g, int d, int64_t a, int64_t b, double *row_b, double **alpha)
{
    const size_t R = g->row;
    if (d == g->pl.D) {
        double *rows = (double *)g->leaf;
        for (int64_t t = a + 1; t <= b; t++) {
            fb_window(g, t, 1);
            if (chain_frame(g, t, 1))
                return CHAIN_NONFINITE;
            double *na = *alpha == g->run ? g->alt : g->run;
            if (!fb_step(g, *alpha, na, t))
                g->lost = 1;
            *alpha = na;
            fb_post(g, t, na, t == b ? row_b : rows + (size_t)(t - a) * R);
            if (fb_stop(g))
                return CHAIN_HALT;
        }
        return 0;
    }
    int64_t q;
    const int64_t n = fb_pieces(g, d, a, b, &q);
    for (int64_t j = 0; j < n; j++) {
        const int64_t pa = a + j * q, pb = pa + q < b ? pa + q : b;
        const int rc = fbb_segment(g, d + 1, pa, pb, j == n - 1 ? row_b : g->slots[d] + (size_t)j * R, alpha);
        if (rc)
            return rc;
    }
    return 0;
}

static int fbb_segment(chain *g, int d, int64_t a, int64_t b, double *row_b, double **alpha)
{
    int64_t q = 1, stop = a;
    if (d < g->pl.D)
        stop = fb_pieces(g, d, a, b, &q) > 1 ? a + q : b;
    const int rc = fbb_rows(g, d, a, b, row_b, stop, NULL);
    return rc ? rc : fbb_fwd(g, d, a, b, row_b, alpha);
}

/* one half's context: g's problem and band, the half's arrays, counters from zero */
typedef struct {
    chain c;
    char pad[128]; /* the halves' counters, written every frame, on cache lines of their own */
} __attribute__((aligned(128))) fb_half;

/* One pass of the posteriors at the current band, from g->top (alpha at frame 0) and g->btop (beta at T - 1):
 * g->post, g->lost and the band's leaks (the halves' sums, in a fixed order); 0, CHAIN_NONFINITE, or CHAIN_HALT
 * (a half stopped: lost, or leaked beyond the tolerance, which the sums show). First each half's first direction
 * through to m (alpha_m into the first half's xrow, beta_m into the second's), then each half's posteriors, its
 * second direction starting from the other half's xrow and alternating between it and its own run row. */
static int fb_run(chain *g)
{
    const int64_t T = g->T, m = fb_mid(T);
    const size_t R = g->row;
    const int D = g->pl.D;
    struct {
        int v;
        char pad[124];
    } __attribute__((aligned(128))) halt = {0, {0}};
    fb_half h[2];
    for (int k = 0; k < 2; k++) {
        chain *c = &h[k].c;
        *c = *g;
        c->lp = g->half[k].lp;
        c->em = g->half[k].em;
        c->tmp = g->half[k].tmp;
        c->xrow = g->half[k].xrow;
        c->alt = g->half[1 - k].xrow;
        c->run = g->half[k].run;
        c->leaf = g->half[k].leaf;
        for (int i = 0; i < 2; i++)
            c->w[i] = g->half[k].w[i];
        for (int d = 0; d < D; d++)
            c->slots[d] = g->half[k].slots[d];
        c->halt = &halt.v;
        c->lost = 0;
        c->leak_f = c->leak_b = 0.0;
        c->fdone = k == 0 ? 0 : m;     /* forward steps counted: frames 1..m (first half), m + 1..T - 1 */
        c->bdone = k == 0 ? m + 1 : T; /* backward steps counted: frames m..1, T - 1..m + 1 */
        c->tot_min = INFINITY;
        c->tot_max = -INFINITY;
        c->tot_nan = 0;
        c->ref = NAN;
    }
    int rc1[2] = {0, 0}, rc2[2] = {0, 0};
#ifdef _OPENMP
    const int nth = g->nthreads > 1 && g->pl.par && T > 2 ? 2 : 1;
#pragma omp parallel num_threads(nth) if (nth > 1)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int tid = 0, nt = 1;
#endif
        for (int k = 0; k < 2; k++) {
            if (nt > 1 && k != tid)
                continue;
            chain *c = &h[k].c;
            if (k == 0) {
                rc1[0] = fbf_rows(c, 0, 0, m, g->top, m, D ? c->xrow : NULL);
                if (!rc1[0] && (D == 0 || m == 0)) /* alpha_m: the leaf's last row, or the start row */
                    memcpy(c->xrow, m == 0 ? g->top : (double *)c->leaf + (size_t)(m - 1) * R, R * sizeof(double));
            } else {
                rc1[1] = fbb_rows(c, 0, m, T - 1, g->btop, m, D ? c->xrow : NULL);
                if (!rc1[1] && (D == 0 || m == T - 1)) /* beta_m: the leaf's first row, or the start row */
                    memcpy(c->xrow, m == T - 1 ? g->btop : (double *)c->leaf, R * sizeof(double));
            }
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        if (!rc1[0] && !rc1[1]) {
            for (int k = 0; k < 2; k++) {
                if (nt > 1 && k != tid)
                    continue;
                chain *c = &h[k].c;
                if (k == 0) {
                    double *beta = c->alt;
                    rc2[0] = fbf_back(c, 0, 0, m, g->top, &beta);
                    if (!rc2[0])
                        fb_post(c, 0, g->top, beta); /* before the second half can reuse the run row */
                } else {
                    double *alpha = c->alt;
                    rc2[1] = fbb_fwd(c, 0, m, T - 1, g->btop, &alpha);
                }
            }
        }
    }
    g->lost = h[0].c.lost | h[1].c.lost;
    g->leak_f = h[0].c.leak_f + h[1].c.leak_f;
    g->leak_b = h[0].c.leak_b + h[1].c.leak_b;
    for (int k = 0; k < 2; k++)
        if (rc1[k] == CHAIN_NONFINITE || rc2[k] == CHAIN_NONFINITE)
            return CHAIN_NONFINITE;
    if (rc1[0] || rc1[1] || rc2[0] || rc2[1])
        return CHAIN_HALT;
    /* every frame's sum must be the sum at T - 1, within the tolerance (see fb_post) */
    const double ref = m < T - 1 ? h[1].c.ref : h[0].c.ref;
    const double tol = 1e-9 + 1e-15 * (double)T * (1.0 + fabs(ref));
    for (int k = 0; k < 2; k++) {
        const chain *c = &h[k].c;
        if (c->tot_nan || (c->tot_min <= c->tot_max &&
                           (!(fabs(c->tot_min - ref) <= tol) || !(fabs(c->tot_max - ref) <= tol))))
            g->lost = 1; /* mass that mattered fell below a block's range */
    }
    return 0;
}

/* --- driver -------------------------------------------------------------------------------------------------- */

/* carve the arena (bytes from ck_plan_make) into g's arrays; the masks are filled for Viterbi or posteriors */
static int chain_carve(chain *g, char *arena, double bytes, const int32_t *tok, int posteriors)
{
    const int64_t S = g->S;
    const size_t R = g->row = (size_t)(S + 2 * PAD + 1 + (S + BLK - 1) / BLK);
    double *p = (double *)arena;
    for (int k = 0; k < 4; k++, p += S + 2 * PAD)
        g->mask[k] = p;
    g->lp = p; /* the frame's log-probabilities (+ the gap score), then their exponentials */
    p += 2 * (g->C + 1);
    g->em = p;
    p += S;
    g->w[0] = p;
    p += R;
    g->w[1] = p;
    p += R;
    if (posteriors) {
        /* each half (fb_run): frame scores, work rows, the run row, scratch (the blocks' bases, then one block's
         * neighbours), the row at the meeting frame; the first half's frame scores and work rows are those above,
         * and the second half shares them (and the run row and scratch) unless the halves run at the same time */
        g->half[0].lp = g->lp;
        g->half[0].em = g->em;
        g->half[0].w[0] = g->w[0];
        g->half[0].w[1] = g->w[1];
        for (int k = 0; k < 2; k++) {
            if (k == 1 && !g->pl.par) {
                g->half[1] = g->half[0];
            } else {
                if (k == 1) {
                    g->half[1].lp = p;
                    p += 2 * (g->C + 1);
                    g->half[1].em = p;
                    p += S;
                    for (int i = 0; i < 2; i++, p += R)
                        g->half[1].w[i] = p;
                }
                g->half[k].run = p;
                p += R;
                g->half[k].tmp = p;
                p += R + BLK + 2 * PAD;
            }
            g->half[k].xrow = p;
            p += R;
        }
        g->tmp = g->half[0].tmp;
        g->btop = p;
        p += R;
    }
    if (!posteriors) {
        const int64_t K = vt_frames(g->C);
        g->vt_sc = p;
        p += K * (g->C + 1);
        g->vt_bnd = p;
        p += 2 * VT_NTH * K * PAD;
        g->vt_loc = p;
        p += VT_NTH * 2 * VT_STRIDE;
    }
    g->top = p;
    p += R;
    for (int k = 0; k < (posteriors ? 2 : 1); k++) {
        /* the posteriors: each half's top level (D = 0: its leaf) of its own, the deeper levels and their leaf too
         * when the halves run at the same time */
        const int own = k == 0 || g->pl.par;
        for (int d = 0; d < g->pl.D; d++) {
            if (d > 0 && !own) {
                g->half[1].slots[d] = g->half[0].slots[d];
                continue;
            }
            g->slots[d] = g->half[k].slots[d] = p;
            p += (size_t)(g->pl.pieces[d] > 1 ? g->pl.pieces[d] - 1 : 0) * R;
        }
        if (g->pl.D > 0 && !own) {
            g->half[1].leaf = g->half[0].leaf;
            continue;
        }
        g->leaf = g->half[k].leaf = p;
        if (posteriors)
            p += (size_t)g->pl.P[g->pl.D] * R;
        else
            p = (double *)((char *)p + (((size_t)g->pl.P[g->pl.D] * (size_t)S + 7) & ~(size_t)7));
    }
    g->far = (int64_t *)p;
    g->src = g->far + (S / 2 + 2);
    g->cls = (int32_t *)(g->src + (S / 2 + 2));
    g->flags = (uint8_t *)(g->cls + S);
    if ((double)((char *)(g->flags + S) - arena) > bytes)
        return -1; /* the layout outgrew the plan's bytes: a bug, refused rather than written past the arena */
    g->maxk = chain_graph(tok, S, g->C, g->blank, g->cls, g->flags);
    g->nfar = g->nsrc = 0;
    for (int64_t s = 0; s < S; s++) {
        if (g->flags[s] & 12)
            g->far[g->nfar++] = s;
        if ((s + 3 < S && (g->flags[s + 3] & 4)) || (s + 4 < S && (g->flags[s + 4] & 8)))
            g->src[g->nsrc++] = s;
    }
    const double off = posteriors ? 0.0 : NEG_INF, on = posteriors ? 1.0 : 0.0;
    for (int k = 0; k < 4; k++) {
        for (int64_t s = 0; s < PAD; s++)
            g->mask[k][s] = g->mask[k][PAD + S + s] = off;
        for (int64_t s = 0; s < S; s++)
            g->mask[k][PAD + s] = (g->flags[s] >> k) & 1 ? on : off;
    }
    for (int k = 0; k < PAD; k++)
        g->w[0][k] = g->w[1][k] = off;
    return 0;
}

static int cyctc_chain_run(const void *x, ptrdiff_t xs, chain_loader load, int64_t T, int C, const int32_t *tokens,
                    int64_t n, int blank, int normalize, double gap_penalty, double budget, int32_t *path,
                    double *log_prob, double *post, int nthreads)
{
    chain g;
    memset(&g, 0, sizeof(g));
    g.nthreads = nthreads;
    g.T = T;
    g.S = 2 * n + 1;
    g.C = C;
    g.blank = blank;
    g.normalize = normalize;
    g.gap_penalty = gap_penalty;
    g.x = x;
    g.xs = xs;
    g.load = load;
    g.elo = 0;
    g.ehi = g.S - 1;
    g.path = path;
    g.post = post;
    for (int64_t t = 0; t < T; t++)
        path[t] = -1;
    if (post)
        for (int64_t t = 0; t < T; t++)
            post[t] = NAN;
    if (T == 0) {
        /* the empty path: feasible when every token is a gap */
        int ok = 1;
        for (int64_t j = 0; j < n; j++)
            ok &= tokens[j] == CYCTC_GAP;
        *log_prob = ok ? 0.0 : NEG_INF;
        return ok ? CYCTC_DECODE_OK : CYCTC_DECODE_INFEASIBLE;
    }
    double bytes;
    if (ck_plan_make(T, g.S, C, 0, budget, &g.pl, &bytes))
        return CYCTC_DECODE_BUDGET;
    char *arena = (char *)malloc((size_t)bytes);
    if (!arena)
        return CYCTC_DECODE_NOMEM;
    if (chain_carve(&g, arena, bytes, tokens, 0)) {
        free(arena);
        return CYCTC_DECODE_NOMEM;
    }
    int rc = 0;
    double score = NEG_INF;
    if (chain_frame(&g, 0, 0))
        rc = CHAIN_NONFINITE;
    if (!rc) {
        vit_init_row(&g, g.top);
        int64_t s = -1;
        rc = vit_segment(&g, 0, 0, T - 1, g.top, &s, &score);
    }
    free(arena);
    if (rc) {
        for (int64_t t = 0; t < T; t++)
            path[t] = -1;
        *log_prob = rc == CHAIN_NONFINITE ? NAN : NEG_INF;
        return rc == CHAIN_NONFINITE ? CYCTC_DECODE_NONFINITE : CYCTC_DECODE_INFEASIBLE;
    }
    *log_prob = score;
    if (!post)
        return CYCTC_DECODE_OK;

    /* posteriors over the same graph, under their own plan */
    memset(g.slots, 0, sizeof(g.slots));
    if (ck_plan_make(T, g.S, C, 1, budget, &g.pl, &bytes))
        return CYCTC_DECODE_BUDGET;
    arena = (char *)malloc((size_t)bytes);
    if (!arena)
        return CYCTC_DECODE_NOMEM;
    if (chain_carve(&g, arena, bytes, tokens, 1)) {
        free(arena);
        return CYCTC_DECODE_NOMEM;
    }
    /* the band starts at cyctc_chain_band_init states either side of the path and widens 4 times while more
     * mass than CHAIN_BAND_TOL leaves it (see fb_step); at the whole row it is the unrestricted recursion */
    const int band0 = __atomic_load_n(&cyctc_chain_band_init, __ATOMIC_RELAXED);
    g.bw = band0 > 0 ? band0 : 1;
    for (;;) {
        rc = 0;
        g.lost = 0;
        g.leak_f = g.leak_b = 0.0;
        g.fdone = 0;
        g.elo = 0;
        g.ehi = g.S - 1;
        if (chain_frame(&g, 0, 1)) {
            rc = CHAIN_NONFINITE;
            break;
        }
        double *top = g.top;
        for (int k = 0; k < PAD; k++)
            top[k] = 0.0;
        for (int64_t s = 0; s < g.S; s++)
            top[PAD + s] = (g.flags[s] & F_START) ? g.sc[g.cls[s]] : 0.0;
        for (int64_t b = 0; b * BLK < g.S; b++)
            g.tmp[b] = 0.0;
        fb_blocks(&g, top + PAD, fb_exp(&g, top), g.tmp);
        for (int k = 0; k < PAD; k++)
            g.btop[k] = 0.0;
        for (int64_t s = 0; s < g.S; s++)
            g.btop[PAD + s] = (g.flags[s] & F_END) ? 1.0 : 0.0;
        fb_blocks(&g, g.btop + PAD, fb_exp(&g, g.btop), g.tmp);
        rc = fb_run(&g);
        if (rc == CHAIN_NONFINITE)
            break;
        const int wide = g.bw >= g.S;
        if (!wide && (rc == CHAIN_HALT || g.leak_f > CHAIN_BAND_TOL || g.leak_b > CHAIN_BAND_TOL || g.lost)) {
            g.bw = g.bw > g.S / 4 ? g.S : 4 * g.bw;
            continue;
        }
        if (rc == CHAIN_HALT)
            g.lost = 1; /* over the whole row only lost mass stops a half */
        rc = 0;
        break;
    }
    __atomic_store_n(&cyctc_chain_band_last, g.bw, __ATOMIC_RELAXED); /* alignments may run in parallel */
    __atomic_store_n(&cyctc_chain_fb_plan_last, 2 * g.pl.D + g.pl.par, __ATOMIC_RELAXED);
    __atomic_store(&cyctc_chain_leak_last[0], &g.leak_f, __ATOMIC_RELAXED);
    __atomic_store(&cyctc_chain_leak_last[1], &g.leak_b, __ATOMIC_RELAXED);
    free(arena);
    if (rc || g.lost) {
        for (int64_t t = 0; t < T; t++)
            post[t] = NAN;
        return rc ? CYCTC_DECODE_NONFINITE : CYCTC_DECODE_POSTERIOR_LOST;
    }
    return CYCTC_DECODE_OK;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* dtype instantiations                                                                                          */
/* ------------------------------------------------------------------------------------------------------------ */

#define REAL float
#define SFX(name) name##_f32
#include "decode_impl.h"
#undef REAL
#undef SFX

#define REAL double
#define SFX(name) name##_f64
#include "decode_impl.h"
#undef REAL
#undef SFX
