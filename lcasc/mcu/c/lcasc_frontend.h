/* lcasc_frontend.h - 1 s of 44.1 kHz int16 PCM -> the 40 x 51 log-mel of the DCASE 2022 baseline, in float32.
 *
 * Periodic Hamming window of 1764 samples in a 2048-point real FFT, hop 882, centred frames with reflect
 * padding, magnitude spectrum, 40 Slaney mel bands 0-22,050 Hz (librosa's filterbank), natural log with
 * eps = 2.2e-16, the signal + eps before the FFT (METHOD-NOTES section 2). The FFT is a portable radix-2
 * real FFT, or CMSIS-DSP's arm_rfft_fast_f32 when compiled with -DLCASC_USE_CMSIS_DSP.
 */
#ifndef LCASC_FRONTEND_H
#define LCASC_FRONTEND_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LCASC_SAMPLE_RATE 44100
#define LCASC_N_SAMPLES 44100
#define LCASC_N_FFT 2048
#define LCASC_WIN_LENGTH 1764
#define LCASC_HOP_LENGTH 882
#define LCASC_N_MELS 40
#define LCASC_N_FRAMES 51
#define LCASC_N_BINS (LCASC_N_FFT / 2 + 1)

#ifdef LCASC_USE_CMSIS_DSP
#define LCASC_FRONTEND_WORK_BYTES (2 * LCASC_N_FFT * 4 + 64)
#else
#define LCASC_FRONTEND_WORK_BYTES ((LCASC_N_FFT + 2) * 4)
#endif

/* pcm: LCASC_N_SAMPLES samples (full scale = 32768); logmel: LCASC_N_MELS x LCASC_N_FRAMES floats,
 * band by band; work: LCASC_FRONTEND_WORK_BYTES bytes, 4-byte aligned. */
void lcasc_logmel(const int16_t *pcm, float *logmel, void *work);

#ifdef __cplusplus
}
#endif
#endif
