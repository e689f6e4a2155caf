/* lcasc.h - classify one second of audio on a microcontroller: the log-mel front end and the exported INT8
 * network(s) of an lcasc run. C99, no heap, no OS; all working memory in one caller-provided buffer.
 *
 *   static uint32_t work[LCASC_WORK_BYTES / 4];
 *   float probs[LCASC_N_CLASSES];
 *   int scene = lcasc_classify(pcm, probs, work);   // pcm: 44,100 int16 samples at 44.1 kHz, mono
 *
 * An ensemble runs its members one after another on the same log-mel and averages their probabilities.
 */
#ifndef LCASC_H
#define LCASC_H

#include <stdint.h>

#include "lcasc_frontend.h"
#include "lcasc_model.h"
#include "lcasc_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LCASC_LOGMEL_BYTES (LCASC_N_MELS * LCASC_N_FRAMES * 4)
#define LCASC_INPUT_BYTES ((LCASC_N_MELS * LCASC_N_FRAMES + 3) / 4 * 4)
#define LCASC_MAX_(a, b) ((a) > (b) ? (a) : (b))
/* float log-mel + int8 network input + the larger of the front end's and the networks' scratch */
#define LCASC_WORK_BYTES (LCASC_LOGMEL_BYTES + LCASC_INPUT_BYTES + LCASC_MAX_(LCASC_FRONTEND_WORK_BYTES, LCASC_NET_WORK_BYTES))

/* Class probabilities of one second of audio; returns the most probable class (index into lcasc_class_names).
 * work: LCASC_WORK_BYTES bytes, 4-byte aligned. */
int lcasc_classify(const int16_t *pcm, float *probs, void *work);

/* The same from a float log-mel (LCASC_N_MELS x LCASC_N_FRAMES, band by band), for callers with their own
 * front end; work as above. */
int lcasc_classify_logmel(const float *logmel, float *probs, void *work);

#ifdef __cplusplus
}
#endif
#endif
