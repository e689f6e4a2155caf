/* lcasc_nn.c - int8 kernels and the strip-wise network runner (see lcasc_nn.h). */
#include "lcasc_nn.h"

#include <math.h>
#include <string.h>

#if defined(LCASC_USE_DSP) && defined(__ARM_FEATURE_DSP)
#define LCASC_DSP 1
#else
#define LCASC_DSP 0
#endif

/* ---- TFLite's double-rounding requantization (gemmlowp) -------------------------------------------
 * MultiplyByQuantizedMultiplier(x, m, shift) = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(
 * x << left, m), right). With m > 0 (scales are positive) the high multiply's "add 2^30 (or 1 - 2^30 for a
 * negative product) and divide by 2^31, truncating" is exactly floor((x m + 2^30) / 2^31), one arithmetic
 * shift; the divide by 2^right rounding halves away from zero is floor((v - [v < 0] + 2^(right-1)) / 2^right)
 * = (floor((v - [v < 0]) / 2^(right-1)) + 1) >> 1, since floor((y + 1) / 2) = floor((floor(y) + 1) / 2).
 * Same bits as the reference, fewer instructions (a multiply-accumulate and a few shifts). */

static inline int32_t requantize(int32_t acc, int32_t mult, int shift)
{
    const int32_t x = shift > 0 ? (int32_t)((uint32_t)acc << shift) : acc;
#if LCASC_DSP /* the same, forced into one SMLAL on 2^30 and two shifts */
    uint32_t lo = 1u << 30;
    int32_t hi = 0;
    __asm__("smlal %0, %1, %2, %3" : "+r"(lo), "+r"(hi) : "r"(x), "r"(mult));
    int32_t v = (int32_t)(((uint32_t)hi << 1) | (lo >> 31));
#else
    int32_t v = (int32_t)(((int64_t)x * mult + ((int64_t)1 << 30)) >> 31);
#endif
    if (shift < 0) v = (((v + (v >> 31)) >> (-shift - 1)) + 1) >> 1; /* divide by 2^-shift, halves away from 0 */
    return v;
}

/* ---- int8 dot product ----------------------------------------------------------------------------- */

#if LCASC_DSP
static inline uint32_t load_u32(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4); /* Cortex-M4 LDR handles unaligned words */
    return v;
}
static inline uint32_t sxtb16(uint32_t x) { uint32_t r; __asm__("sxtb16 %0, %1" : "=r"(r) : "r"(x)); return r; }
static inline uint32_t sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline int32_t smlad(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}
#endif

/* sum of a[i] * b[i], i < n: exact in int32 for the layer sizes here, so every evaluation order (and the
 * SIMD one below) gives the same bits. */
#if !LCASC_DSP
static inline int32_t dot_s8(const int8_t *a, const int16_t *b, int n, int32_t acc)
{
    for (int i = 0; i < n; ++i) acc += (int16_t)a[i] * b[i];
    return acc;
}

/* two dot products over the same b (its loads shared) */
static inline void dot2_s8(const int8_t *a0, const int8_t *a1, const int16_t *b, int n, int32_t *s0, int32_t *s1)
{
    int32_t x0 = *s0, x1 = *s1;
    for (int i = 0; i < n; ++i) {
        x0 += (int16_t)a0[i] * b[i];
        x1 += (int16_t)a1[i] * b[i];
    }
    *s0 = x0;
    *s1 = x1;
}
#endif

/* int8 saturation (SSAT on the Cortex-M4) */
static inline int32_t saturate_int8(int32_t v)
{
#if LCASC_DSP
    int32_t r;
    __asm__("ssat %0, #8, %1" : "=r"(r) : "r"(v));
    return r;
#else
    return v < -128 ? -128 : v > 127 ? 127 : v;
#endif
}

/* Requantize, add the output zero point, saturate to int8, apply the layer's table (its fused activation's
 * clamp and the TANH op after it, lcasc_nn.h). */
typedef struct {
    const int32_t *mult;
    const int8_t *shift, *table;
    int32_t offset;
} finish_t;

static inline int8_t finish_with(const finish_t *F, int32_t mult, int shift, int32_t acc)
{
    const int32_t v = saturate_int8(requantize(acc, mult, shift) + F->offset);
    return F->table ? F->table[(uint8_t)v] : (int8_t)v;
}

static inline int8_t finish(const finish_t *F, int co, int32_t acc)
{
    return finish_with(F, F->mult[co], F->shift[co], acc);
}

/* Weights are [cout][k][span4] (lcasc_nn.h): each window row of span = k * cin inputs is padded with zero
 * weights to span4 = span rounded up to a multiple of 4, so that every row piece is whole groups of four. */
static inline int span4_of(const lcasc_layer_t *L) { return (L->k * L->cin + 3) & ~3; }

#if LCASC_DSP
/* The windows of two output pixels (k row pieces of span4 int8 each, at offsets a and b of the rows; a
 * piece's last group may reach up to 3 bytes past the span, which meet zero weights), widened to int16 and
 * interleaved a group of four at a time in the SXTB16 order: a0 a2, b0 b2, a1 a3, b1 b3 (one word each), so
 * that SMLAD pairs them with SXTB16(w) = (w0, w2) and SXTB16(w ror 8) = (w1, w3) of the int8 weights as
 * they are, and one LDRD loads the words of both pixels that meet the same weights. */
static inline void widen_windows(const int8_t *const *rows, int a, int b, int k, int span4, uint32_t *dst)
{
    for (int ky = 0; ky < k; ++ky) {
        const int8_t *pa = rows[ky] + a, *pb = rows[ky] + b;
        for (int j = 0; j < span4; j += 4, dst += 4) {
            const uint32_t va = load_u32(pa + j), vb = load_u32(pb + j);
            dst[0] = sxtb16(va);
            dst[1] = sxtb16(vb);
            dst[2] = sxtb16_ror8(va);
            dst[3] = sxtb16_ror8(vb);
        }
    }
}

/* Dot products of two output channels' weights (w0, w1: int8) with two pixels' windows x (widen_windows),
 * groups >= 1 groups of four: acc gets w0.a, w1.a, w0.b, w1.b. Each weight word loaded serves two pixels,
 * each input word two channels: 16 MACs per 2 LDR, 2 LDRD, 4 SXTB16, 8 SMLAD and the loop's compare and
 * branch. In assembly because GCC, given the same in C, keeps a loop variable in memory (13 are live). */
static inline __attribute__((always_inline)) void dot_2x2(const int8_t *w0, const int8_t *w1, const uint32_t *x,
                                                         int groups, int32_t *acc)
{
    int32_t s00 = acc[0], s10 = acc[1], s01 = acc[2], s11 = acc[3];
    const uint32_t *const end = x + 4 * groups;
    uint32_t a, b, u, v, t;
    __asm__("1:\n\t"
            "ldr     %[u], [%[w0]], #4\n\t"
            "ldr     %[v], [%[w1]], #4\n\t"
            "ldrd    %[a], %[b], [%[x]], #8\n\t"   /* (a0, a2), (b0, b2) */
            "sxtb16  %[t], %[u]\n\t"               /* (w0, w2) of channel 0 */
            "smlad   %[s00], %[t], %[a], %[s00]\n\t"
            "smlad   %[s01], %[t], %[b], %[s01]\n\t"
            "sxtb16  %[t], %[v]\n\t"               /* (w0, w2) of channel 1 */
            "smlad   %[s10], %[t], %[a], %[s10]\n\t"
            "smlad   %[s11], %[t], %[b], %[s11]\n\t"
            "ldrd    %[a], %[b], [%[x]], #8\n\t"   /* (a1, a3), (b1, b3) */
            "sxtb16  %[t], %[u], ror #8\n\t"       /* (w1, w3) of channel 0 */
            "smlad   %[s00], %[t], %[a], %[s00]\n\t"
            "smlad   %[s01], %[t], %[b], %[s01]\n\t"
            "sxtb16  %[t], %[v], ror #8\n\t"       /* (w1, w3) of channel 1 */
            "smlad   %[s10], %[t], %[a], %[s10]\n\t"
            "smlad   %[s11], %[t], %[b], %[s11]\n\t"
            "cmp     %[x], %[end]\n\t"
            "bne     1b"
            : [s00] "+r"(s00), [s10] "+r"(s10), [s01] "+r"(s01), [s11] "+r"(s11), [x] "+r"(x), [w0] "+r"(w0),
              [w1] "+r"(w1), [a] "=&r"(a), [b] "=&r"(b), [u] "=&r"(u), [v] "=&r"(v), [t] "=&r"(t)
            : [end] "r"(end)
            : "cc", "memory");
    acc[0] = s00, acc[1] = s10, acc[2] = s01, acc[3] = s11;
}

/* One output channel, two pixels (the last channel of an odd count): acc gets w.a, w.b. */
static inline __attribute__((always_inline)) void dot_1x2(const int8_t *w, const uint32_t *x, int groups, int32_t *acc)
{
    int32_t s0 = acc[0], s1 = acc[1];
    for (const uint32_t *end = x + 4 * groups; x < end; x += 4, w += 4) {
        const uint32_t u = load_u32(w);
        const uint32_t lo = sxtb16(u), hi = sxtb16_ror8(u);
        s0 = smlad(lo, x[0], s0);
        s1 = smlad(lo, x[1], s1);
        s0 = smlad(hi, x[2], s0);
        s1 = smlad(hi, x[3], s1);
    }
    acc[0] = s0, acc[1] = s1;
}

/* All output channels of the two pixels whose windows xs holds (widen_windows) into out_a and out_b. */
static void conv_pixels(const lcasc_layer_t *L, const finish_t *F, const uint32_t *xs, int n4, int8_t *out_a,
                        int8_t *out_b)
{
    const int cout = L->cout;
    const int8_t *w = L->w;
    int co = 0;
    for (; co + 2 <= cout; co += 2, w += 2 * n4) {
        int32_t acc[4] = {L->bias[co], L->bias[co + 1], L->bias[co], L->bias[co + 1]};
        dot_2x2(w, w + n4, xs, n4 / 4, acc);
        const int32_t m0 = F->mult[co], m1 = F->mult[co + 1];
        const int s0 = F->shift[co], s1 = F->shift[co + 1];
        out_a[co] = finish_with(F, m0, s0, acc[0]);
        out_a[co + 1] = finish_with(F, m1, s1, acc[1]);
        out_b[co] = finish_with(F, m0, s0, acc[2]);
        out_b[co + 1] = finish_with(F, m1, s1, acc[3]);
    }
    if (co < cout) {
        int32_t acc[2] = {L->bias[co], L->bias[co]};
        dot_1x2(w, xs, n4 / 4, acc);
        out_a[co] = finish(F, co, acc[0]);
        out_b[co] = finish(F, co, acc[1]);
    }
}
#endif

/* One output row (out_w pixels x cout) of layer L; rows[ky] points at padded input row ky (the first
 * input pixel of the window of output pixel 0). col: 4-byte aligned scratch of 2 * k * span4 int16 (DSP build). */
static void conv_row(const lcasc_layer_t *L, const int8_t *const *rows, int out_w, int8_t *restrict out,
                     int16_t *restrict col)
{
    const int k = L->k, cin = L->cin, cout = L->cout, span = k * cin, span4 = span4_of(L);
    const finish_t F = {L->mult, L->shift, L->table, L->out_offset};
#if LCASC_DSP
    (void)span;
    uint32_t *const xs = (uint32_t *)col;
    for (int x = 0; x < out_w; x += 2) { /* two pixels at a time (the second repeats the first at an odd end) */
        const int two = x + 1 < out_w;
        widen_windows(rows, x * cin, (x + two) * cin, k, span4, xs);
        conv_pixels(L, &F, xs, k * span4, out, out + (two ? cout : 0));
        out += (1 + two) * cout;
    }
#else
    /* The window of one pixel gathered into col as the weights are laid out (k rows of span4, the padding
     * zero), so that each dot product is one loop of k * span4 and two channels share its loads (a compiler
     * vectorizes it; the sums are exact in int32, so the order does not change the bits). */
    const int n = k * span4;
    int16_t *const win = col;
    memset(win, 0, (size_t)n * sizeof(int16_t));
    for (int x = 0; x < out_w; ++x) {
        for (int ky = 0; ky < k; ++ky)
            for (int j = 0; j < span; ++j) win[ky * span4 + j] = rows[ky][x * cin + j];
        const int8_t *w = L->w;
        int co = 0;
        for (; co + 2 <= cout; co += 2, w += 2 * n) {
            int32_t a0 = L->bias[co], a1 = L->bias[co + 1];
            dot2_s8(w, w + n, win, n, &a0, &a1);
            out[co] = finish(&F, co, a0);
            out[co + 1] = finish(&F, co + 1, a1);
        }
        if (co < cout) out[co] = finish(&F, co, dot_s8(w, win, n, L->bias[co]));
        out += cout;
    }
#endif
}

/* ---- pooling ---------------------------------------------------------------------------------------- */

/* Adds one row (w pixels x c) into the pooled sums of its window row (columns beyond the last window dropped). */
static void pool_accumulate(const lcasc_pool_t *P, const int8_t *row, int w, int c, int32_t *sums)
{
    const int out_w = w / P->kw;
    for (int ox = 0; ox < out_w; ++ox, sums += c)
        for (int dx = 0; dx < P->kw; ++dx, row += c)
            for (int ch = 0; ch < c; ++ch) sums[ch] += row[ch];
}

/* TFLM's rounding average of the finished window row; clears the sums. */
static void pool_finish(const lcasc_pool_t *P, int32_t *sums, int n, int8_t *out)
{
    const int32_t count = P->kh * P->kw;
    for (int i = 0; i < n; ++i) {
        int32_t acc = sums[i];
        acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
        if (acc < P->act_min) acc = P->act_min;
        if (acc > P->act_max) acc = P->act_max;
        out[i] = (int8_t)acc;
        sums[i] = 0;
    }
}

/* ---- working memory --------------------------------------------------------------------------------- */

typedef struct {
    size_t in_ring, c1_ring, pad1, pad2, row, sums, p1, pad3, p2, fc1, col, total;
} layout_t;

static size_t align4(size_t n) { return (n + 3u) & ~(size_t)3u; }

static layout_t layout(const lcasc_net_t *net)
{
    const int W = net->width, H = net->height;
    const int p1 = net->conv[0].k / 2, p2 = net->conv[1].k / 2, p3 = net->conv[2].k / 2;
    const int c1 = net->conv[0].cout, c2 = net->conv[1].cout, c3 = net->conv[2].cout;
    const int h1 = H / net->pool[0].kh, w1 = W / net->pool[0].kw;
    const int h2 = h1 / net->pool[1].kh, w2 = w1 / net->pool[1].kw;
    const size_t row = (size_t)W * c2 > (size_t)w1 * c3 ? (size_t)W * c2 : (size_t)w1 * c3;
    const size_t sums = (size_t)w1 * c2 > (size_t)w2 * c3 ? (size_t)w1 * c2 : (size_t)w2 * c3;
    layout_t L;
    size_t at = 0;
    L.in_ring = at; at += align4((size_t)net->conv[0].k * (W + 2 * p1) * net->conv[0].cin);
    L.c1_ring = at; at += align4((size_t)net->conv[1].k * (W + 2 * p2) * c1);
    L.pad1 = at; at += align4((size_t)(W + 2 * p1) * net->conv[0].cin);
    L.pad2 = at; at += align4((size_t)(W + 2 * p2) * c1);
    L.row = at; at += align4(row);
    L.sums = at; at += sums * sizeof(int32_t);
    L.p1 = at; at += align4((size_t)h1 * (w1 + 2 * p3) * c2);
    L.pad3 = at; at += align4((size_t)(w1 + 2 * p3) * c2);
    L.p2 = at; at += align4((size_t)h2 * w2 * c3);
    L.fc1 = at; at += align4((size_t)net->dense[0].cout);
    size_t window = 0;
    for (int i = 0; i < 5; ++i) {
        const lcasc_layer_t *l = i < 3 ? &net->conv[i] : &net->dense[i - 3];
        const size_t n4 = (size_t)l->k * span4_of(l);
        if (n4 > window) window = n4;
    }
    L.col = at; at += 2 * window * sizeof(int16_t); /* DSP build: two pixels' windows, widened */
    L.total = at;
    return L;
}

size_t lcasc_net_work_bytes(const lcasc_net_t *net) { return layout(net).total; }

/* ---- the network ------------------------------------------------------------------------------------ */

void lcasc_net_run(const lcasc_net_t *net, const int8_t *input, int8_t *logits, void *work)
{
    const layout_t M = layout(net);
    uint8_t *base = (uint8_t *)work;
    int8_t *in_ring = (int8_t *)(base + M.in_ring), *c1_ring = (int8_t *)(base + M.c1_ring);
    int8_t *pad1 = (int8_t *)(base + M.pad1), *pad2 = (int8_t *)(base + M.pad2), *pad3 = (int8_t *)(base + M.pad3);
    int8_t *row = (int8_t *)(base + M.row), *p1 = (int8_t *)(base + M.p1), *p2 = (int8_t *)(base + M.p2);
    int8_t *fc1 = (int8_t *)(base + M.fc1);
    int32_t *sums = (int32_t *)(base + M.sums);
    int16_t *col = (int16_t *)(base + M.col);
    const lcasc_layer_t *C1 = &net->conv[0], *C2 = &net->conv[1], *C3 = &net->conv[2];
    const lcasc_pool_t *P1 = &net->pool[0], *P2 = &net->pool[1];
    const int H = net->height, W = net->width;
    const int k1 = C1->k, k2 = C2->k, k3 = C3->k, q1 = k1 / 2, q2 = k2 / 2, q3 = k3 / 2;
    const int ci = C1->cin, c1 = C1->cout, c2 = C2->cout, c3 = C3->cout;
    const int h1 = H / P1->kh, w1 = W / P1->kw, h2 = h1 / P2->kh, w2 = w1 / P2->kw;
    const size_t in_stride = (size_t)(W + 2 * q1) * ci, c1_stride = (size_t)(W + 2 * q2) * c1;
    const size_t p1_stride = (size_t)(w1 + 2 * q3) * c2;
    const int8_t *rows[16];
    int in_next = 0, c1_next = 0;

    memset(pad1, C1->pad_value, in_stride);
    memset(pad2, C2->pad_value, c1_stride);
    memset(pad3, C3->pad_value, p1_stride);
    memset(p1, C3->pad_value, (size_t)h1 * p1_stride);
    memset(sums, 0, (size_t)(w1 * c2 > w2 * c3 ? w1 * c2 : w2 * c3) * sizeof(int32_t));

    /* C1 -> (act) -> C2 -> (act) -> P1, row by row: C1 rows live in a ring of k2 padded rows. */
    for (int y2 = 0; y2 < H; ++y2) {
        const int c1_last = y2 + q2 < H ? y2 + q2 : H - 1;
        for (; c1_next <= c1_last; ++c1_next) {
            const int in_last = c1_next + q1 < H ? c1_next + q1 : H - 1;
            for (; in_next <= in_last; ++in_next) { /* padded copy of input row in_next */
                int8_t *slot = in_ring + (size_t)(in_next % k1) * in_stride;
                memset(slot, C1->pad_value, in_stride);
                memcpy(slot + (size_t)q1 * ci, input + (size_t)in_next * W * ci, (size_t)W * ci);
            }
            for (int ky = 0; ky < k1; ++ky) {
                const int y = c1_next + ky - q1;
                rows[ky] = (y < 0 || y >= H) ? pad1 : in_ring + (size_t)(y % k1) * in_stride;
            }
            int8_t *slot = c1_ring + (size_t)(c1_next % k2) * c1_stride;
            memset(slot, C2->pad_value, (size_t)q2 * c1);
            memset(slot + (size_t)(W + q2) * c1, C2->pad_value, (size_t)q2 * c1);
            conv_row(C1, rows, W, slot + (size_t)q2 * c1, col);
        }
        if (y2 >= h1 * P1->kh) continue; /* rows beyond the last pooling window are dropped */
        for (int ky = 0; ky < k2; ++ky) {
            const int y = y2 + ky - q2;
            rows[ky] = (y < 0 || y >= H) ? pad2 : c1_ring + (size_t)(y % k2) * c1_stride;
        }
        conv_row(C2, rows, w1 * P1->kw, row, col); /* columns beyond the last window are not needed */
        pool_accumulate(P1, row, w1 * P1->kw, c2, sums);
        if ((y2 + 1) % P1->kh == 0) pool_finish(P1, sums, w1 * c2, p1 + (size_t)(y2 / P1->kh) * p1_stride + (size_t)q3 * c2);
    }

    /* C3 -> (act) -> P2, row by row over the pooled map. */
    for (int y3 = 0; y3 < h2 * P2->kh; ++y3) {
        for (int ky = 0; ky < k3; ++ky) {
            const int y = y3 + ky - q3;
            rows[ky] = (y < 0 || y >= h1) ? pad3 : p1 + (size_t)y * p1_stride;
        }
        conv_row(C3, rows, w2 * P2->kw, row, col);
        pool_accumulate(P2, row, w2 * P2->kw, c3, sums);
        if ((y3 + 1) % P2->kh == 0) pool_finish(P2, sums, w2 * c3, p2 + (size_t)(y3 / P2->kh) * w2 * c3);
    }

    /* Dense layers: a 1x1 "convolution" of one pixel whose channels are the flattened (h, w, c) map. */
    rows[0] = p2;
    conv_row(&net->dense[0], rows, 1, fc1, col);
    rows[0] = fc1;
    conv_row(&net->dense[1], rows, 1, logits, col);
}

void lcasc_net_probabilities(const lcasc_net_t *net, const int8_t *logits, float *probs)
{
    const int n = net->dense[1].cout;
    float top = -INFINITY, total = 0.0f;
    for (int i = 0; i < n; ++i) {
        probs[i] = (float)(logits[i] - net->output_zero_point) * net->output_scale;
        if (probs[i] > top) top = probs[i];
    }
    for (int i = 0; i < n; ++i) total += probs[i] = expf(probs[i] - top);
    for (int i = 0; i < n; ++i) probs[i] /= total;
}

void lcasc_net_quantize_input(const lcasc_net_t *net, const float *logmel, int8_t *input)
{
    const int n = net->height * net->width * net->conv[0].cin;
    for (int i = 0; i < n; ++i) {
        const float r = roundf(logmel[i] / net->input_scale); /* halves away from zero */
        float v = r + (float)net->input_zero_point;
        if (v < -128.0f) v = -128.0f;
        if (v > 127.0f) v = 127.0f;
        input[i] = (int8_t)v;
    }
}
