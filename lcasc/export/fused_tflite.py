"""The fused ensemble (:class:`lcasc.fused.FusedEnsemble`) as a full-integer INT8 TFLite file: its Keras
mirror, built from the family's description like the single network's (:mod:`lcasc.export.tflite`)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from lcasc.export.tflite import export_keras_int8, keras_layer, keras_weights, tf_keras
from lcasc.fused import HEAD_LAYERS, HEAD_POOLS, FusedEnsemble, Head
from lcasc.models import graph


def fused_keras_mirror(fused: FusedEnsemble):
    """A float Keras model computing what ``fused(x)`` computes, NHWC: input ``(N, n_mels, n_frames, 1)``,
    output ``(N, n_members * n_classes)``: the members' logits side by side (probabilities are computed from
    them in float, :func:`lcasc.int8.probabilities_from_logits`).

    Same conventions as :func:`lcasc.export.tflite.keras_mirror` (kernels ``(out, in, kh, kw) -> (kh, kw, in,
    out)``, BatchNorm with eps 1e-5 folded by the converter, fc1 columns reordered for the channel-last
    flatten). Each unit is Conv2D + BN; units are joined with Concatenate (the converter gives the convs the
    joined tensor's scale, so no requantization); channels are picked with ``keras.ops.take`` (TFLite GATHER,
    a copy that keeps the quantization) where a unit or head does not read the whole pool in order. ReLU
    stays per unit (fused into the conv); TANH comes once after the join, so a single TANH output carries the
    fixed 1/128 quantization TFLM needs (per-unit TANHs before a join would need requantizing QUANTIZE ops).
    The members' fc2 logits are joined with Concatenate (one int8 scale for all of them).
    """
    keras = tf_keras()
    spec = fused.spec
    family = {n.name: n for n in graph.nodes(spec)}
    weights: list = []  # (layer name, weights) set after the model is built
    pool = inputs = keras.Input((spec.n_mels, spec.n_frames, 1), name="logmel")
    for block in graph.conv_blocks():
        for p in block.pools:
            pool = keras_layer(keras, family[p.name])(pool)
        pool = _keras_units(keras, fused, block, family, pool, weights)
    for p in HEAD_POOLS:
        pool = keras_layer(keras, family[p.name])(pool)
    logits = [_keras_head(keras, m, head, family, pool, weights) for m, head in enumerate(fused.heads)]
    outputs = logits[0] if len(logits) == 1 else keras.layers.Concatenate(axis=-1, name="member_logits")(logits)
    mirror = keras.Model(inputs, outputs, name=f"lcasc_fused_{len(logits)}")
    for layer_name, values in weights:
        mirror.get_layer(layer_name).set_weights(values)
    return mirror


def _keras_take(keras, x, idx: torch.Tensor, name: str):
    """Channels ``idx`` of ``x`` (NHWC), in that order: a TFLite GATHER."""
    idx = [int(i) for i in idx]
    return keras.layers.Lambda(lambda t: keras.ops.take(t, np.array(idx, np.int32), axis=-1),
                               output_shape=tuple(x.shape[1:-1]) + (len(idx),), name=name)(x)


def _keras_units(keras, fused: FusedEnsemble, block: graph.ConvBlock, family: dict, pool, weights: list):
    """The Keras layers of one conv layer's units on ``pool`` (gather, Conv2D, BN, ReLU per unit; joined;
    TANH once after the join); appends the units' weights to ``weights``; returns the layer's joined output."""
    layer = block.conv.name
    conv, bn, act = family[layer], family[block.bn.name], family[block.act.name]
    tanh = act.activation == "T"
    outs = []
    for u, unit in enumerate(fused.units[layer]):
        name = f"{layer}_u{u}"
        x = pool if unit.identity else _keras_take(keras, pool, unit.inputs, f"{name}_gather")
        unit_conv = replace(conv, out_shape=(unit.conv.out_channels, *conv.out_shape[1:]))
        x = keras_layer(keras, unit_conv, name=f"{name}_conv")(x)
        x = keras_layer(keras, bn, name=f"{name}_bn")(x)
        if not tanh:
            x = keras_layer(keras, act, name=f"{name}_act")(x)
        outs.append(x)
        weights.append((f"{name}_conv", keras_weights(unit.conv, f"{name}_conv")))
        weights.append((f"{name}_bn", keras_weights(unit.bn, f"{name}_bn")))
    pool = outs[0] if len(outs) == 1 else keras.layers.Concatenate(axis=-1, name=f"{layer}_join")(outs)
    return keras_layer(keras, act, name=f"{layer}_act")(pool) if tanh else pool


def _keras_head(keras, m: int, head: Head, family: dict, pooled, weights: list):
    """Member ``m``'s Keras layers on the pooled maps (gather, flatten, dense layers with their activations
    folded in); appends their weights to ``weights``; returns the member's logits."""
    x = pooled if head.identity else _keras_take(keras, pooled, head.channels, f"m{m}_gather")
    flattened = None
    for i, layer in enumerate(HEAD_LAYERS):
        node, name = family[layer.name], f"m{m}_{layer.attr or layer.kind}"
        if layer.kind == "flatten":
            flattened = (len(head.channels), *node.in_shape[1:])  # (C, h, w) of this member
            flat = flattened[0] * flattened[1] * flattened[2]
            x = keras_layer(keras, replace(node, in_shape=flattened, out_shape=(flat,)), name=name)(x)
        elif layer.kind == "dense":
            module = getattr(head, layer.attr)
            after = HEAD_LAYERS[i + 1] if i + 1 < len(HEAD_LAYERS) else None
            folded = family[after.name].activation if after is not None and after.kind == "act" else None
            x = keras_layer(keras, replace(node, out_shape=(module.out_features,)), folded, name=name)(x)
            weights.append((name, keras_weights(module, name, flattened if HEAD_LAYERS[i - 1].kind == "flatten"
                                                else None)))
        elif HEAD_LAYERS[i - 1].kind != "dense":  # an activation not folded into a Dense layer
            x = keras_layer(keras, node, name=name)(x)
    return x


def export_fused_tflite_int8(fused: FusedEnsemble, calibration: np.ndarray, path: str | os.PathLike,
                             max_samples: int = 500, seed: int = 0) -> dict:
    """Write a full-integer INT8 .tflite file of ``fused`` for TFLite Micro; returns ``{"file_bytes",
    "arena_bytes"}``.

    Same contract as :func:`lcasc.export.tflite.export_tflite_int8`: calibrated on a fixed random subset (at most
    ``max_samples``, chosen with ``seed``) of ``calibration`` (N, n_mels, n_frames) real training log-mel;
    written under a temporary name, refused if a TANH/SOFTMAX output lacks the quantization TFLM assumes,
    checked to allocate and run in TFLM (smallest arena measured), then renamed to ``path``. Run it with
    :class:`lcasc.runtimes.TFLiteMicroClassifier`.
    """
    return export_keras_int8(fused_keras_mirror(fused), fused.spec, calibration, path, max_samples, seed)
