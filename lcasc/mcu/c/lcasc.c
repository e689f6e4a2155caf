/* lcasc.c - front end + network(s) in one call (see lcasc.h). */
#include "lcasc.h"

#include <string.h>

static int argmax(const float *p, int n)
{
    int best = 0;
    for (int i = 1; i < n; ++i)
        if (p[i] > p[best]) best = i;
    return best;
}

int lcasc_classify_logmel(const float *logmel, float *probs, void *work)
{
    uint8_t *base = (uint8_t *)work;
    int8_t *input = (int8_t *)(base + LCASC_LOGMEL_BYTES);
    void *scratch = base + LCASC_LOGMEL_BYTES + LCASC_INPUT_BYTES;
    int8_t logits[LCASC_N_CLASSES];
    float p[LCASC_N_CLASSES];
    memset(probs, 0, sizeof(float) * LCASC_N_CLASSES);
    for (int m = 0; m < LCASC_N_MEMBERS; ++m) {
        const lcasc_net_t *net = lcasc_members[m];
        lcasc_net_quantize_input(net, logmel, input);
        lcasc_net_run(net, input, logits, scratch);
        lcasc_net_probabilities(net, logits, p);
        for (int c = 0; c < LCASC_N_CLASSES; ++c) probs[c] += p[c] / (float)LCASC_N_MEMBERS;
    }
    return argmax(probs, LCASC_N_CLASSES);
}

int lcasc_classify(const int16_t *pcm, float *probs, void *work)
{
    float *logmel = (float *)work;
    lcasc_logmel(pcm, logmel, (uint8_t *)work + LCASC_LOGMEL_BYTES + LCASC_INPUT_BYTES);
    return lcasc_classify_logmel(logmel, probs, work);
}
