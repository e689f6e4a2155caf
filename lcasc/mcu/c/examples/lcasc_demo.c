/* lcasc_demo.c - host example: classify the first second of a WAV file with the exported bundle.
 *
 *   ./lcasc_demo clip.wav                  scene and class probabilities of the first second
 *   ./lcasc_demo --logits M in.i8 out.i8   int8 logits of member M for raw int8 inputs (40 x 51 each)
 *   ./lcasc_demo --logmel in.s16 out.f32   log-mel of raw int16 seconds (44,100 samples each)
 *   ./lcasc_demo --pcm-logits M in.s16 out.i8   front end + quantization + member M, int8 logits
 *   ./lcasc_demo --probs in.f32 out.f32    class probabilities (all members) of float log-mels (40 x 51 each)
 *
 * WAV: 16-bit PCM at 44.1 kHz (channels are averaged); the last two modes are what the lcasc tests use to
 * compare the library with tflite-micro and with lcasc's own front end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lcasc.h"

static uint32_t work[LCASC_WORK_BYTES / 4 + 1];

static int fail(const char *path, const char *problem)
{
    fprintf(stderr, "lcasc_demo: %s: %s\n", path, problem);
    return 1;
}

static uint32_t le32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* First second of a 16-bit PCM WAV file, channels averaged, zero-padded when shorter. */
static int read_wav(const char *path, int16_t *pcm)
{
    FILE *f = fopen(path, "rb");
    unsigned char h[12], c[8], fmt[16];
    int channels = 0, bits = 0, have_fmt = 0;
    uint32_t rate = 0;
    if (!f) return fail(path, "cannot open");
    if (fread(h, 1, 12, f) != 12 || memcmp(h, "RIFF", 4) || memcmp(h + 8, "WAVE", 4)) {
        fclose(f);
        return fail(path, "not a RIFF/WAVE file");
    }
    while (fread(c, 1, 8, f) == 8) {
        uint32_t size = le32(c + 4);
        if (!memcmp(c, "fmt ", 4)) {
            if (size < 16 || fread(fmt, 1, 16, f) != 16) break;
            if (le16(fmt) != 1) { fclose(f); return fail(path, "only PCM WAV is supported"); }
            channels = le16(fmt + 2), rate = le32(fmt + 4), bits = le16(fmt + 14), have_fmt = 1;
            fseek(f, (long)(size - 16 + (size & 1)), SEEK_CUR);
        } else if (!memcmp(c, "data", 4)) {
            if (!have_fmt) break;
            if (bits != 16 || rate != LCASC_SAMPLE_RATE || channels < 1) {
                fclose(f);
                return fail(path, "expected 16-bit PCM at 44,100 Hz");
            }
            memset(pcm, 0, sizeof(int16_t) * LCASC_N_SAMPLES);
            for (uint32_t i = 0; i < LCASC_N_SAMPLES && (i + 1) * channels * 2 <= size; ++i) {
                int32_t sum = 0;
                for (int ch = 0; ch < channels; ++ch) {
                    unsigned char s[2];
                    if (fread(s, 1, 2, f) != 2) { fclose(f); return fail(path, "truncated data chunk"); }
                    sum += (int16_t)le16(s);
                }
                pcm[i] = (int16_t)(sum / channels);
            }
            fclose(f);
            return 0;
        } else {
            fseek(f, (long)(size + (size & 1)), SEEK_CUR);
        }
    }
    fclose(f);
    return fail(path, "no fmt/data chunk");
}

static int logits_mode(int member, const char *in, const char *out)
{
    if (member < 0 || member >= LCASC_N_MEMBERS) return fail(in, "no such member");
    const lcasc_net_t *net = lcasc_members[member];
    const size_t n_in = (size_t)net->height * net->width;
    int8_t *x = malloc(n_in), logits[LCASC_N_CLASSES];
    FILE *fi = fopen(in, "rb"), *fo = fopen(out, "wb");
    if (!fi || !fo || !x) return fail(in, "cannot open input/output");
    if (lcasc_net_work_bytes(net) > LCASC_NET_WORK_BYTES) return fail(in, "work buffer too small");
    while (fread(x, 1, n_in, fi) == n_in) {
        lcasc_net_run(net, x, logits, work);
        fwrite(logits, 1, (size_t)net->dense[1].cout, fo);
    }
    fclose(fi);
    fclose(fo);
    free(x);
    return 0;
}

static int logmel_mode(const char *in, const char *out)
{
    static int16_t pcm[LCASC_N_SAMPLES];
    static float logmel[LCASC_N_MELS * LCASC_N_FRAMES];
    FILE *fi = fopen(in, "rb"), *fo = fopen(out, "wb");
    if (!fi || !fo) return fail(in, "cannot open input/output");
    while (fread(pcm, sizeof(int16_t), LCASC_N_SAMPLES, fi) == LCASC_N_SAMPLES) {
        lcasc_logmel(pcm, logmel, work);
        fwrite(logmel, sizeof(float), LCASC_N_MELS * LCASC_N_FRAMES, fo);
    }
    fclose(fi);
    fclose(fo);
    return 0;
}

static int pcm_logits_mode(int member, const char *in, const char *out)
{
    static int16_t pcm[LCASC_N_SAMPLES];
    float *logmel = (float *)work;
    int8_t *input = (int8_t *)work + LCASC_LOGMEL_BYTES, logits[LCASC_N_CLASSES];
    void *scratch = (uint8_t *)work + LCASC_LOGMEL_BYTES + LCASC_INPUT_BYTES;
    if (member < 0 || member >= LCASC_N_MEMBERS) return fail(in, "no such member");
    FILE *fi = fopen(in, "rb"), *fo = fopen(out, "wb");
    if (!fi || !fo) return fail(in, "cannot open input/output");
    while (fread(pcm, sizeof(int16_t), LCASC_N_SAMPLES, fi) == LCASC_N_SAMPLES) {
        lcasc_logmel(pcm, logmel, scratch);
        lcasc_net_quantize_input(lcasc_members[member], logmel, input);
        lcasc_net_run(lcasc_members[member], input, logits, scratch);
        fwrite(logits, 1, LCASC_N_CLASSES, fo);
    }
    fclose(fi);
    fclose(fo);
    return 0;
}

static int probs_mode(const char *in, const char *out)
{
    static float logmel[LCASC_N_MELS * LCASC_N_FRAMES];
    float probs[LCASC_N_CLASSES];
    FILE *fi = fopen(in, "rb"), *fo = fopen(out, "wb");
    if (!fi || !fo) return fail(in, "cannot open input/output");
    while (fread(logmel, sizeof(float), LCASC_N_MELS * LCASC_N_FRAMES, fi) == LCASC_N_MELS * LCASC_N_FRAMES) {
        lcasc_classify_logmel(logmel, probs, work);
        fwrite(probs, sizeof(float), LCASC_N_CLASSES, fo);
    }
    fclose(fi);
    fclose(fo);
    return 0;
}

int main(int argc, char **argv)
{
    static int16_t pcm[LCASC_N_SAMPLES];
    float probs[LCASC_N_CLASSES];
    if (argc == 5 && !strcmp(argv[1], "--logits")) return logits_mode(atoi(argv[2]), argv[3], argv[4]);
    if (argc == 4 && !strcmp(argv[1], "--logmel")) return logmel_mode(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--probs")) return probs_mode(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "--pcm-logits")) return pcm_logits_mode(atoi(argv[2]), argv[3], argv[4]);
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s clip.wav  (16-bit PCM, 44.1 kHz; the first second is classified)\n", argv[0]);
        return 2;
    }
    if (read_wav(argv[1], pcm)) return 1;
    int scene = lcasc_classify(pcm, probs, work);
    printf("%s\t%s\t%.4f\n", argv[1], lcasc_class_names[scene], probs[scene]);
    for (int c = 0; c < LCASC_N_CLASSES; ++c) printf("  %-24s %.4f\n", lcasc_class_names[c], probs[c]);
    return 0;
}
