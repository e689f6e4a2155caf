"""``lcasc export --format c``: a run's INT8 network (or ensemble) and the log-mel front end as a C99 bundle.

What it writes (one folder, written under a temporary name and renamed into place):

- ``lcasc.h``/``lcasc.c`` (one call: 1 s of int16 PCM -> class probabilities), ``lcasc_nn.[ch]`` (the int8
  kernels, strip-wise), ``lcasc_frontend.[ch]`` (log-mel in float32 with a portable 2048-point real FFT or
  CMSIS-DSP's ``arm_rfft_fast_f32`` with ``-DLCASC_USE_CMSIS_DSP``) - copied from ``lcasc/mcu/c``;
- ``lcasc_model.[ch]`` (generated): each member's int8 weights (window rows padded with zeros to a multiple
  of 4), folded int32 biases, Q31 multipliers and shifts, output tables (activation clamp and tanh), as
  ``const`` arrays, from its ``model_int8.tflite`` (:mod:`lcasc.mcu.tflite_graph`);
- ``lcasc_tables.c`` (generated): Hamming window, FFT twiddles and the sparse Slaney mel filterbank;
- ``Makefile``, ``examples/lcasc_demo.c`` (classifies the first second of a WAV file), ``cortex-m4/``
  (start-up code, linker script and harness for ``qemu-system-arm -M mps2-an386``), ``README.md``.

Why generated tables and not code that computes them: they go to flash, and the numbers then are exactly
the ones lcasc uses (librosa's filterbank, scipy's window).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from lcasc.mcu.tflite_graph import Network, read_network

C_SOURCES = ("Makefile", "lcasc.h", "lcasc.c", "lcasc_nn.h", "lcasc_nn.c", "lcasc_frontend.h", "lcasc_frontend.c",
             "examples/lcasc_demo.c", "cortex-m4/startup.c", "cortex-m4/m4_support.h", "cortex-m4/harness.c",
             "cortex-m4/mps2_an386.ld")
LIBRARY_SOURCES = ("lcasc.c", "lcasc_nn.c", "lcasc_frontend.c", "lcasc_model.c", "lcasc_tables.c")


@dataclass
class Member:
    name: str
    network: Network


def _c_array(ctype: str, name: str, values, per_line: int = 16, fmt=str) -> str:
    values = list(values)
    lines = [", ".join(fmt(v) for v in values[i:i + per_line]) for i in range(0, len(values), per_line)]
    body = ",\n    ".join(lines) if lines else "0"
    return f"{ctype} {name}[{max(len(values), 1)}] = {{\n    {body}\n}};\n"


def _float(v) -> str:
    return f"{float(np.float32(v))!r}f".replace("inf", "INFINITY")


def net_work_bytes(net: Network) -> int:
    """Bytes ``lcasc_net_run`` needs for ``net`` (the same layout as ``layout()`` in lcasc_nn.c)."""
    def a4(n):
        return (n + 3) // 4 * 4
    c1, c2, c3 = net.conv
    q1, q2, q3 = c1.k // 2, c2.k // 2, c3.k // 2
    W = net.width
    h1, w1 = net.pooled1
    h2, w2 = net.pooled2
    return (a4(c1.k * (W + 2 * q1) * c1.cin) + a4(c2.k * (W + 2 * q2) * c1.cout) + a4((W + 2 * q1) * c1.cin)
            + a4((W + 2 * q2) * c1.cout) + a4(max(W * c2.cout, w1 * c3.cout)) + 4 * max(w1 * c2.cout, w2 * c3.cout)
            + a4(h1 * (w1 + 2 * q3) * c2.cout) + a4((w1 + 2 * q3) * c2.cout) + a4(h2 * w2 * c3.cout)
            + a4(net.dense[0].cout)
            + 4 * max(layer.k * span4(layer) for layer in [*net.conv, *net.dense]))


def span4(layer) -> int:
    """A window row's k * cin inputs rounded up to a multiple of 4: the weights' row length in C."""
    return (layer.k * layer.cin + 3) // 4 * 4


def padded_weights(layer) -> np.ndarray:
    """(cout, k, span4) int8: each window row's weights followed by zeros up to a multiple of 4, so that the
    Cortex-M4 kernels read whole groups of four (the extra inputs they read meet zero weights; the portable C
    reads only the span). Zero weights change no sum, and the folded bias sums the real weights only."""
    w = layer.w.reshape(layer.cout, layer.k, layer.k * layer.cin)
    return np.pad(w, ((0, 0), (0, 0), (0, span4(layer) - w.shape[2])))


def _layer_c(prefix: str, layer) -> tuple[str, str]:
    """(const arrays, struct initializer) of one conv/dense layer."""
    arrays = _c_array("static const int8_t", f"{prefix}_w", padded_weights(layer).reshape(-1), 32)
    arrays += _c_array("static const int32_t", f"{prefix}_bias", layer.folded_bias(), 8)
    arrays += _c_array("static const int32_t", f"{prefix}_mult", layer.multiplier, 8)
    arrays += _c_array("static const int8_t", f"{prefix}_shift", layer.shift, 16)
    table, table_name = output_table(layer), "NULL"
    if table is not None:
        table_name = f"{prefix}_table"
        arrays += _c_array("static const int8_t", table_name, table, 16)
    init = (f"{{{layer.k}, {layer.cin}, {layer.cout}, {prefix}_w, {prefix}_bias, {prefix}_mult, {prefix}_shift, "
            f"{layer.output_offset}, {-layer.input_offset}, {table_name}}}")
    return arrays, init


def output_table(layer) -> np.ndarray | None:
    """The layer's 256-entry output table (index q & 0xFF of the requantized output q saturated to int8): its
    fused activation's clamp to [act_min, act_max] followed by the TANH op's table, so that the C kernels
    saturate and look up, with no compare; None when the clamp is the int8 range and no TANH follows."""
    q = np.arange(256).astype(np.uint8).view(np.int8)  # entry i is for q = int8(i)
    clamped = np.clip(q, layer.act_min, layer.act_max)
    if layer.tanh is None:
        return None if (layer.act_min, layer.act_max) == (-128, 127) else clamped
    return layer.tanh[clamped.view(np.uint8)]


def model_sources(members: list[Member], classes: list[str], title: str) -> tuple[str, str]:
    """(lcasc_model.h, lcasc_model.c) for ``members`` (one network, or an ensemble's members)."""
    n_classes = {m.network.n_classes for m in members}
    if n_classes != {len(classes)}:
        raise ValueError(f"the networks have {sorted(n_classes)} outputs but the run has {len(classes)} classes")
    for m in members:
        if (m.network.height, m.network.width) != (40, 51) or m.network.conv[0].cin != 1:
            raise ValueError(f"{m.network.path}: input {m.network.height}x{m.network.width}x"
                             f"{m.network.conv[0].cin}; the front end makes 40 x 51 x 1")
    work = max(net_work_bytes(m.network) for m in members)
    header = f"""/* lcasc_model.h - generated by `lcasc export` for {title}: do not edit. */
#ifndef LCASC_MODEL_H
#define LCASC_MODEL_H
#include "lcasc_nn.h"

#define LCASC_N_CLASSES {len(classes)}
#define LCASC_N_MEMBERS {len(members)}
/* working memory of the largest member's network (lcasc_net_work_bytes) */
#define LCASC_NET_WORK_BYTES {work}

extern const lcasc_net_t *const lcasc_members[LCASC_N_MEMBERS];
extern const char *const lcasc_class_names[LCASC_N_CLASSES];
#endif
"""
    parts = [f"/* lcasc_model.c - generated by `lcasc export` for {title}: do not edit.\n"
             f" * Members: {', '.join(f'{m.name} ({m.network.widths})' for m in members)}. */\n"
             "#include <math.h>\n#include <stddef.h>\n\n#include \"lcasc_model.h\"\n\n"]
    for i, m in enumerate(members):
        net = m.network
        layers = []
        for j, layer in enumerate(net.conv):
            arrays, init = _layer_c(f"m{i}_conv{j + 1}", layer)
            parts.append(arrays)
            layers.append(init)
        dense = []
        for j, layer in enumerate(net.dense):
            arrays, init = _layer_c(f"m{i}_fc{j + 1}", layer)
            parts.append(arrays)
            dense.append(init)
        pools = ", ".join(f"{{{p.kh}, {p.kw}, {p.act_min}, {p.act_max}}}" for p in net.pool)
        parts.append(
            f"static const lcasc_net_t m{i} = {{\n    \"{m.name}\", {net.height}, {net.width},\n"
            f"    {_float(net.input_scale)}, {net.input_zero_point}, {_float(net.output_scale)}, "
            f"{net.output_zero_point},\n    {{{', '.join(layers)}}},\n    {{{pools}}},\n"
            f"    {{{', '.join(dense)}}},\n    {net_work_bytes(net)}u\n}};\n\n")
    parts.append("const lcasc_net_t *const lcasc_members[LCASC_N_MEMBERS] = {"
                 + ", ".join(f"&m{i}" for i in range(len(members))) + "};\n")
    names = ", ".join(json.dumps(c) for c in classes)
    parts.append(f"const char *const lcasc_class_names[LCASC_N_CLASSES] = {{{names}}};\n")
    return header, "".join(parts)


def tables_source() -> str:
    """lcasc_tables.c: window, twiddles and mel filterbank of lcasc's log-mel (lcasc.features)."""
    from lcasc.logmel import FeatureParams, _filters

    params = FeatureParams()
    window, mel = _filters(params)
    mel = mel.toarray()
    n = params.n_fft
    j = np.arange(n // 2)
    twiddle = np.stack([np.cos(2 * np.pi * j / n), np.sin(2 * np.pi * j / n)], 1).reshape(-1)
    starts, counts, offsets, weights = [], [], [], []
    for band in mel:
        nz = np.flatnonzero(band)
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        starts.append(lo)
        counts.append(hi - lo)
        offsets.append(len(weights))
        weights.extend(band[lo:hi])
    return ("/* lcasc_tables.c - generated by `lcasc export`: the front end's constants (METHOD-NOTES 2). */\n"
            "#include <stdint.h>\n\n#include \"lcasc_frontend.h\"\n\n"
            "/* periodic Hamming window, scipy.signal.get_window('hamming', 1764, fftbins=True) */\n"
            + _c_array("const float", "lcasc_window", window, 8, _float)
            + "/* cos, sin of 2 pi j / 2048, j < 1024, interleaved */\n"
            + _c_array("const float", "lcasc_twiddle", twiddle, 8, _float)
            + "/* librosa.filters.mel(sr=44100, n_fft=2048, n_mels=40, fmin=0, fmax=22050), nonzero runs */\n"
            + _c_array("const uint16_t", "lcasc_mel_start", starts, 20)
            + _c_array("const uint16_t", "lcasc_mel_count", counts, 20)
            + _c_array("const uint16_t", "lcasc_mel_offset", offsets, 20)
            + _c_array("const float", "lcasc_mel_weight", weights, 8, _float))




def m4_clips_header(pcm: np.ndarray, int8_inputs: list[np.ndarray]) -> str:
    """cortex-m4/m4_clips.h: ``pcm`` (n, 44100) int16 clips and, per member, their (n, 40*51) int8 inputs
    as the host quantized them (so the network's bits can be compared without the front end's floats)."""
    pcm = np.asarray(pcm, np.int16)
    text = ["/* m4_clips.h - generated by `lcasc export`: real clips for the Cortex-M4 check. */\n",
            "#include <stdint.h>\n", f"#define LCASC_M4_N_CLIPS {len(pcm)}\n"]
    text.append(f"static const int16_t lcasc_m4_pcm[{len(pcm)}][{pcm.shape[1]}] = {{\n")
    text += ["{" + ",".join(map(str, clip.tolist())) + "},\n" for clip in pcm]
    text.append("};\n")
    size = int8_inputs[0].shape[1]
    text.append(f"static const int8_t lcasc_m4_int8[{len(int8_inputs)}][{len(pcm)}][{size}] = {{\n")
    for x in int8_inputs:
        text.append("{" + "".join("{" + ",".join(map(str, c.tolist())) + "}," for c in x) + "},\n")
    text.append("};\n")
    return "".join(text)


def readme(title: str, members: list[Member], classes: list[str]) -> str:
    nets = "\n".join(f"- `{m.name}` ({m.network.widths}), input scale {m.network.input_scale:.6g}, zero point "
                     f"{m.network.input_zero_point}; working memory {net_work_bytes(m.network):,} bytes"
                     for m in members)
    return f"""# lcasc on a microcontroller: {title}

Generated by `lcasc export`. C99, no heap, no OS. Classes: {', '.join(classes)}.

{nets}

```c
#include "lcasc.h"
static uint32_t work[LCASC_WORK_BYTES / 4];   /* the only working memory */
float probs[LCASC_N_CLASSES];
int scene = lcasc_classify(pcm, probs, work);  /* pcm: 44,100 int16 samples, 44.1 kHz mono */
```

Compile `{' '.join(LIBRARY_SOURCES)}` with your firmware (`-std=c99 -lm`). On a Cortex-M4/M7 add
`-DLCASC_USE_DSP` (SIMD dot products, same bits as the portable C) and, if you have CMSIS-DSP,
`-DLCASC_USE_CMSIS_DSP` (its `arm_rfft_fast_f32` instead of the bundled FFT).
`make` builds the host example `./lcasc_demo clip.wav`; `make m4 run-m4` the Cortex-M4 check in QEMU.
The int8 network computes exactly what TensorFlow Lite Micro's reference kernels compute for the
`model_int8.tflite` file(s) it was exported from; probabilities are a float softmax of the dequantized logits.
"""


def write_bundle(out: str | os.PathLike, members: list[Member], classes: list[str], title: str,
                 m4_clips: tuple[np.ndarray, list[np.ndarray]] | None = None) -> Path:
    """Write the bundle folder ``out`` (replaced as a whole when it exists; never left half-written)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        src = resources.files("lcasc.mcu") / "c"
        for rel in C_SOURCES:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes((src / rel).read_bytes())
        header, source = model_sources(members, classes, title)
        (tmp / "lcasc_model.h").write_text(header)
        (tmp / "lcasc_model.c").write_text(source)
        (tmp / "lcasc_tables.c").write_text(tables_source())
        (tmp / "README.md").write_text(readme(title, members, classes))
        if m4_clips is not None:
            (tmp / "cortex-m4" / "m4_clips.h").write_text(m4_clips_header(*m4_clips))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def members_from_files(files: dict[str, str | os.PathLike]) -> list[Member]:
    """name -> model_int8.tflite path, in order, as bundle members."""
    return [Member(name, read_network(path)) for name, path in files.items()]
