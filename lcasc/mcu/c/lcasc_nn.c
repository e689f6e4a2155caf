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
 * shift; the divide by 2^right rounding halves away from zero is floor((v + 2^(right-1) - [v < 0]) / 2^right).
 * Same bits as the reference, fewer instructions (a multiply-accumulate and two shifts). */

static inline int32_t requantize(int32_t acc, int32_t mult, int left, int right)
{
    const int64_t p = (int64_t)(int32_t)((uint32_t)acc << left) * mult + ((int64_t)1 << 30);
    int32_t v = (int32_t)(p >> 31);
    if (right > 0) v = (v + (int32_t)(1u << (right - 1)) - (v < 0)) >> right;
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
static inline int32_t dot_s8(const int8_t *a, const int8_t *b, int n, int32_t acc)
{
    for (int i = 0; i < n; ++i) acc += (int32_t)a[i] * (int32_t)b[i];
    return acc;
}
#endif

/* Requantize, add the output zero point, clamp to the fused activation's range, apply the TANH table. */
typedef struct {
    const int32_t *mult;
    const int8_t *shift, *tanh;
    int32_t offset, lo, hi;
} finish_t;

static inline int8_t finish(const finish_t *F, int co, int32_t acc)
{
    const int shift = F->shift[co];
    int32_t v = requantize(acc, F->mult[co], shift > 0 ? shift : 0, shift > 0 ? 0 : -shift) + F->offset;
    v = v < F->lo ? F->lo : v > F->hi ? F->hi : v;
    return F->tanh ? F->tanh[(uint8_t)(int8_t)v] : (int8_t)v;
}

#if LCASC_DSP
/* The window of one output pixel (k rows of k * cin int8) widened to int16 in SXTB16 order: each group of
 * four inputs x0 x1 x2 x3 is stored x0 x2 x1 x3, so that SMLAD pairs them with SXTB16(w) = (w0, w2) and
 * SXTB16(w ror 8) = (w1, w3) of the int8 weights as they are; a tail of n % 4 stays in plain order. */
static void widen_window(const int8_t *const *rows, int offset, int k, int span, int16_t *col, int8_t *bytes)
{
    const int n = k * span, n4 = n & ~3;
    uint32_t *dst = (uint32_t *)col;
    if ((span & 3) == 0) { /* whole groups in every row piece: widen them where they are */
        for (int ky = 0; ky < k; ++ky) {
            const int8_t *src = rows[ky] + offset;
            for (int j = 0; j < span; j += 4) {
                const uint32_t v = load_u32(src + j);
                *dst++ = sxtb16(v);
                *dst++ = sxtb16_ror8(v);
            }
        }
        return;
    }
    /* otherwise gather the k row pieces into one contiguous window first (weights are [ky][kx][ci] too) */
    for (int ky = 0; ky < k; ++ky) memcpy(bytes + ky * span, rows[ky] + offset, (size_t)span);
    const int8_t *src = bytes;
    for (int i = 0; i < n4; i += 4) { /* SXTB16 does the reordering, a word at a time */
        const uint32_t v = load_u32(src + i);
        *dst++ = sxtb16(v);
        *dst++ = sxtb16_ror8(v);
    }
    for (int i = n4; i < n; ++i) col[i] = src[i];
}

/* Two output channels' dot products over a widened window: the input words are loaded once for both. */
static inline __attribute__((always_inline)) void dot2_q15(const int8_t *w0, const int8_t *w1, const int16_t *col, int n, int32_t *a0, int32_t *a1)
{
    int32_t s0 = *a0, s1 = *a1;
    int i = 0;
    for (; i + 8 <= n; i += 8) { /* two groups per iteration: less loop overhead per MAC */
        uint32_t xa, xb, xc, xd;
        memcpy(&xa, col + i, 4);
        memcpy(&xb, col + i + 2, 4);
        memcpy(&xc, col + i + 4, 4);
        memcpy(&xd, col + i + 6, 4);
        const uint32_t wa = load_u32(w0 + i), wb = load_u32(w1 + i);
        const uint32_t wc = load_u32(w0 + i + 4), wd = load_u32(w1 + i + 4);
        s0 = smlad(sxtb16(wa), xa, s0);
        s1 = smlad(sxtb16(wb), xa, s1);
        s0 = smlad(sxtb16_ror8(wa), xb, s0);
        s1 = smlad(sxtb16_ror8(wb), xb, s1);
        s0 = smlad(sxtb16(wc), xc, s0);
        s1 = smlad(sxtb16(wd), xc, s1);
        s0 = smlad(sxtb16_ror8(wc), xd, s0);
        s1 = smlad(sxtb16_ror8(wd), xd, s1);
    }
    for (; i + 4 <= n; i += 4) {
        uint32_t xa, xb;
        memcpy(&xa, col + i, 4);
        memcpy(&xb, col + i + 2, 4);
        const uint32_t wa = load_u32(w0 + i), wb = load_u32(w1 + i);
        s0 = smlad(sxtb16(wa), xa, s0);
        s1 = smlad(sxtb16(wb), xa, s1);
        s0 = smlad(sxtb16_ror8(wa), xb, s0);
        s1 = smlad(sxtb16_ror8(wb), xb, s1);
    }
    for (; i < n; ++i) {
        s0 += (int32_t)w0[i] * col[i];
        s1 += (int32_t)w1[i] * col[i];
    }
    *a0 = s0;
    *a1 = s1;
}
#endif

/* One output row (out_w pixels x cout) of layer L; rows[ky] points at padded input row ky (the first
 * input pixel of the window of output pixel 0). col: scratch of 3 * k * k * cin bytes (DSP build). */
static void conv_row(const lcasc_layer_t *L, const int8_t *const *rows, int out_w, int8_t *restrict out,
                     int16_t *restrict col)
{
    const int k = L->k, cin = L->cin, cout = L->cout, span = k * cin;
    const int32_t *const bias = L->bias;
    const int8_t *const weights = L->w;
    const finish_t F = {L->mult, L->shift, L->tanh, L->out_offset, L->act_min, L->act_max};
#if LCASC_DSP
    const int n = k * span;
    for (int x = 0; x < out_w; ++x) {
        widen_window(rows, x * cin, k, span, col, (int8_t *)(col + n));
        int co = 0;
        for (; co + 2 <= cout; co += 2) {
            int32_t a0 = bias[co], a1 = bias[co + 1];
            dot2_q15(weights + (size_t)co * n, weights + (size_t)(co + 1) * n, col, n, &a0, &a1);
            out[co] = finish(&F, co, a0);
            out[co + 1] = finish(&F, co + 1, a1);
        }
        if (co < cout) {
            int32_t a0 = bias[co], a1 = 0;
            dot2_q15(weights + (size_t)co * n, weights + (size_t)co * n, col, n, &a0, &a1);
            out[co] = finish(&F, co, a0);
        }
        out += cout;
    }
#else
    (void)col;
    for (int x = 0; x < out_w; ++x) {
        const int8_t *w = weights;
        for (int co = 0; co < cout; ++co) {
            int32_t acc = bias[co];
            for (int ky = 0; ky < k; ++ky, w += span) acc = dot_s8(w, rows[ky] + x * cin, span, acc);
            out[co] = finish(&F, co, acc);
        }
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
        const size_t n = (size_t)l->k * l->k * l->cin;
        if (n > window) window = n;
    }
    L.col = at; at += align4(3 * window); /* DSP build: the window gathered (int8) and widened (int16) */
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
