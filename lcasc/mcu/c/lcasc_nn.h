/* lcasc_nn.h - the INT8 network of lcasc (paper's CNN) in C99: no heap, no OS.
 *
 * Computes, bit for bit, what TensorFlow Lite Micro's int8 reference kernels compute for the
 * model_int8.tflite file the constants were exported from (per-channel requantization with the
 * double-rounding Q31 multiply, rounding average pooling, gemmlowp fixed-point tanh as a 256-entry table).
 * All working memory is one caller-provided buffer of net->work_bytes bytes (4-byte aligned). The
 * convolutions run in strips: a few rows of C1 at a time, C2 straight into its pooled sums, C3 straight
 * into its pooled sums, so no full-resolution feature map is ever stored.
 */
#ifndef LCASC_NN_H
#define LCASC_NN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A k x k 'same' convolution of stride 1 (or, with k = 1 and one pixel, a fully connected layer). */
typedef struct {
    int16_t k, cin, cout;
    const int8_t *w;        /* [cout][k][span4]: row ky's k * cin weights (kx, ci), zeros up to span4, the
                               next multiple of 4 */
    const int32_t *bias;    /* bias + input_offset * sum(w): padding holds the input zero point */
    const int32_t *mult;    /* per output channel, Q31 */
    const int8_t *shift;    /* per output channel, > 0: left shift */
    int32_t out_offset;     /* output zero point */
    int8_t pad_value;       /* input zero point */
    const int8_t *table;    /* 256 int8 (index q & 0xFF) applied to the requantized, saturated output q: the
                               fused activation's clamp composed with the TANH op after the layer, or NULL
                               when neither changes anything */
} lcasc_layer_t;

typedef struct {
    int16_t kh, kw;         /* window = stride, 'valid' */
    int32_t act_min, act_max;
} lcasc_pool_t;

typedef struct {
    const char *name;
    int16_t height, width;  /* input: mel bands x frames */
    float input_scale;
    int32_t input_zero_point;
    float output_scale;     /* of the int8 logits */
    int32_t output_zero_point;
    lcasc_layer_t conv[3];
    lcasc_pool_t pool[2];
    lcasc_layer_t dense[2];
    uint32_t work_bytes;    /* working buffer lcasc_net_run needs */
} lcasc_net_t;

/* Bytes of working memory lcasc_net_run needs for net (equal to net->work_bytes). */
size_t lcasc_net_work_bytes(const lcasc_net_t *net);

/* input: height x width int8 (row-major, mel band by mel band) quantized with input_scale/zero point;
 * logits: the last layer's int8 outputs; work: net->work_bytes bytes, 4-byte aligned. */
void lcasc_net_run(const lcasc_net_t *net, const int8_t *input, int8_t *logits, void *work);

/* Float softmax of the dequantized int8 logits (what lcasc predict computes). */
void lcasc_net_probabilities(const lcasc_net_t *net, const int8_t *logits, float *probs);

/* float log-mel (height x width) -> int8 with the network's input scale and zero point
 * (round half away from zero, saturated), as lcasc.int8.quantize_int8 does. */
void lcasc_net_quantize_input(const lcasc_net_t *net, const float *logmel, int8_t *input);

#ifdef __cplusplus
}
#endif
#endif
