"""The INT8 networks and the log-mel front end as a C library (lcasc.mcu), on the session's real run.

Host: gcc builds one bundle holding all seven networks of the run; on every clip of the test split its
int8 logits must equal the .tflite file's in tflite-micro (0 mismatching clips), and its front end must give
lcasc's log-mel within 1e-3 on real clips. Cortex-M4: the same bundle as a bare-metal image in
qemu-system-arm (mps2-an386) must print the host's outputs for 5 real clips per network; these tests skip,
naming the install command, where the Arm toolchain or QEMU is missing (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lcasc.stages.quantize import int8_available

from .conftest import copy_of

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytestmark = pytest.mark.skipif(not int8_available(), reason="INT8 export extras (lcasc[tflite]) not installed")

NETWORKS = ["unpruned", "pruned_C1", "pruned_C2", "pruned_C3", "pruned_C12", "pruned_C23", "pruned_C123"]
N_CLIPS = 5


def _no_host_cc():
    from lcasc.mcu.toolchain import host_compiler

    return host_compiler() is None


def _arm_missing() -> str:
    from lcasc.mcu.toolchain import INSTALL_HINT, arm_tools_missing

    missing = arm_tools_missing()
    return f"{', '.join(missing)} missing: {INSTALL_HINT}" if missing else ""


needs_cc = pytest.mark.skipif(_no_host_cc(), reason="no host C compiler (cc/gcc): apt-get install -y gcc make")
needs_arm = pytest.mark.skipif(bool(_arm_missing()), reason=f"Cortex-M4 check skipped, {_arm_missing()}")


@pytest.fixture(scope="module")
def run_dir(family_run, tmp_path_factory):
    return copy_of(family_run, tmp_path_factory)  # the session's shared run: `lcasc export` adds to it


@pytest.fixture(scope="module")
def run(run_dir):
    from lcasc.run import Run

    return Run(run_dir, progress=False)


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory):
    """All seven networks of the run in one bundle (members 0-6), with 5 real test clips for the M4 image."""
    from lcasc.mcu.export_c import members_from_files, write_bundle
    from lcasc.mcu.run_export import int8_inputs, real_clips

    members = members_from_files({n: run.model_dir(n) / "model_int8.tflite" for n in NETWORKS})
    pcm = real_clips(run, N_CLIPS)
    out = write_bundle(tmp_path_factory.mktemp("c") / "bundle", members, run.classes, "all seven networks",
                       (pcm, int8_inputs(members, pcm)))
    return out, members, pcm


@pytest.fixture(scope="module")
def host_build(bundle):
    from lcasc.mcu.toolchain import build_host

    build_host(bundle[0])
    return bundle


@pytest.fixture(scope="module")
def tflm_outputs(run, bundle):
    """Per member: (int8 inputs, int8 logits, output scale, zero point) of the .tflite file in tflite-micro on
    every test-split clip."""
    from lcasc.mcu.run_export import TFLM_ARENA
    from lcasc.runtimes import TFLiteMicroClassifier

    X = run.split("test").X
    out = []
    for m in bundle[1]:
        tflm = TFLiteMicroClassifier(m.network.path, run.classes, arena_size=TFLM_ARENA)
        Xq = tflm.quantize_input(X)
        out.append((Xq, tflm.invoke_int8(Xq), *tflm._qparams(tflm.output_detail)))
    return out


@needs_cc
def test_host_library_equals_tflite_micro_on_every_test_clip_for_all_seven_networks(host_build, tflm_outputs):
    from lcasc.mcu.toolchain import host_logits

    path, members, _ = host_build
    assert len(tflm_outputs[0][0]) >= 50
    for i, (m, (Xq, ref, _, _)) in enumerate(zip(members, tflm_outputs)):
        got = host_logits(path, i, Xq, ref.shape[1])
        assert (got != ref).any(axis=1).sum() == 0, f"{m.name}: C library differs from tflite-micro"
        assert len(np.unique(ref.argmax(1))) > 1  # a network that says one thing would prove little


@needs_cc
def test_host_probabilities_are_those_lcasc_predict_computes_from_the_int8_files(run, host_build, tflm_outputs):
    """lcasc_classify_logmel (C quantization, all seven members, float softmax, averaged) against the mean of
    lcasc's tflite-micro runners' probabilities on the test split."""
    from lcasc.int8 import dequantize_int8, probabilities_from_logits
    from lcasc.mcu.toolchain import host_probabilities

    path, members, _ = host_build
    n = len(run.classes)
    want = np.mean([probabilities_from_logits(dequantize_int8(ref, scale, zp), n)  # as TFLiteMicroClassifier does
                    for _, ref, scale, zp in tflm_outputs], axis=0)
    got = host_probabilities(path, run.split("test").X, n)
    assert np.abs(got - want).max() < 1e-5 and np.array_equal(got.argmax(1), want.argmax(1))


@needs_cc
def test_host_front_end_equals_lcasc_logmel_on_real_clips(host_build):
    from lcasc.logmel import logmel
    from lcasc.mcu.toolchain import host_logmel

    path, _, pcm = host_build
    got = host_logmel(path, pcm)
    ref = logmel(pcm.astype(np.float64) / 32768.0)
    assert ref.std() > 1 and np.abs(got - ref).max() < 1e-3


@needs_cc
def test_host_example_classifies_the_first_second_of_a_wav_file(host_build, tmp_path):
    import soundfile as sf

    path, members, pcm = host_build
    sf.write(tmp_path / "clip.wav", np.concatenate([pcm[0], pcm[1]]), 44100, subtype="PCM_16")
    out = subprocess.run([str(path / "lcasc_demo"), str(tmp_path / "clip.wav")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    probs = {line.split()[0]: float(line.split()[1]) for line in out.stdout.splitlines()[1:]}
    assert abs(sum(probs.values()) - 1) < 1e-3 and out.stdout.split("\t")[1] == max(probs, key=probs.get)
    sf.write(tmp_path / "float.wav", pcm[0] / 32768.0, 44100, subtype="FLOAT")
    bad = subprocess.run([str(path / "lcasc_demo"), str(tmp_path / "float.wav")], capture_output=True, text=True)
    assert bad.returncode == 1 and "float.wav" in bad.stderr and "PCM" in bad.stderr


@needs_cc
@needs_arm
@pytest.mark.parametrize("dsp", [True, False], ids=["simd", "portable"])
def test_cortex_m4_image_prints_the_host_outputs_for_real_clips(host_build, dsp):
    from lcasc.mcu.run_export import int8_inputs
    from lcasc.mcu.toolchain import build_m4, host_logits, host_pcm_logits, run_m4

    path, members, pcm = host_build
    inputs = int8_inputs(members, pcm)
    elf = build_m4(path, dsp=dsp)  # the SIMD kernels and the portable C fallback: the same bits
    assert elf.is_file()
    measured = run_m4(path)
    assert 39 <= measured["instructions_per_tick"] <= 41  # SysTick at 25 MHz, 1 instruction per ns (-icount 0)
    for i, m in enumerate(members):
        want = host_logits(path, i, inputs[i], 10)
        want_pcm = host_pcm_logits(path, i, pcm, 10)
        for c in range(N_CLIPS):
            ticks, stack, got = measured["int8"][(c, i)]
            assert np.array_equal(got, want[c]), (m.name, c)
            assert np.array_equal(measured["pcm"][(c, i)], want_pcm[c]), (m.name, c)
            assert 0 < stack < 2048 and ticks > 0


@needs_cc
@needs_arm
def test_export_command_records_the_measured_footprint(run_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "lcasc", "-q", "export", "--run", str(run_dir), "--model",
                          "unpruned", "--format", "c", "--out", str(tmp_path / "unpruned")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    entry = {n["name"]: n for n in json.loads((run_dir / "results.json").read_text())["networks"]}["unpruned_int8"]
    mcu = entry["mcu"]
    assert mcu["host_check"]["mismatching_clips"] == {"unpruned": 0}
    f = mcu["cortex_m4"]["footprint"][0]
    assert f["macs"] == 5_369_960 and f["clips_checked"] == N_CLIPS
    assert 15_000 < f["flash_bytes"]["model"] < 32_000 and f["flash_bytes"]["kernels"] > 500
    assert f["ram_bytes"]["network_work_buffer"] < entry["arena_bytes"] / 4  # strips, not full feature maps
    assert 1 < f["instructions"]["per_mac"] < 20 and f["instructions"]["front_end"] > 1_000_000
    assert json.loads((tmp_path / "unpruned" / "measurements.json").read_text())["cortex_m4"]["footprint"] == [f]
    assert "Cortex-M4 unpruned: flash" in out.stdout
    report = (run_dir / "report.md").read_text()
    assert "## On a microcontroller" in report and f"| {f['instructions']['per_mac']:.2f} |" in report


def test_export_refuses_a_file_that_is_not_the_networks_shape(tmp_path, run):
    from lcasc.mcu.tflite_graph import UnsupportedModel, read_network

    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    with pytest.raises(UnsupportedModel, match="junk.tflite"):
        read_network(tmp_path / "junk.tflite")
    from lcasc.mcu.run_export import ExportError, export

    with pytest.raises(ExportError, match=r"nope.*model_int8.tflite|model_int8.tflite.*nope"):
        export(run.dir, tmp_path / "b", model="nope", progress=False)
    with pytest.raises(ExportError, match="no ensemble 'nope'"):
        export(run.dir, tmp_path / "b", ensemble="nope", progress=False)
    assert not (tmp_path / "b").exists()


def test_tanh_table_equals_tflite_micro_for_all_256_inputs(tmp_path):
    """The int8 TANH (gemmlowp fixed point in TFLM) tabulated by lcasc.mcu.fixedpoint, on TANH-only files
    converted at two input ranges, against tflite-micro running them on every int8 value."""
    from lcasc import runtimes
    from lcasc.export import tflite as tflite_export
    from lcasc.mcu.fixedpoint import tanh_int8_table

    keras = tflite_export.tf_keras()
    values = np.resize(np.arange(-128, 128, dtype=np.int8), 40 * 51).reshape(1, 40, 51, 1)
    for spread in (0.7, 12.0):  # inside the fixed-point range; far beyond it (saturation)
        inp = keras.Input((40, 51, 1))
        model = keras.Model(inp, keras.layers.Activation("tanh")(inp))
        rng = np.random.default_rng(0)
        data = tflite_export.convert_keras(model, (rng.normal(0.3, spread, (20, 40, 51))).astype(np.float32))
        path = tmp_path / f"tanh_{spread}.tflite"
        path.write_bytes(data)
        interp = runtimes._tflm_interpreter(data, 1 << 16)
        detail = interp.get_input_details(0)
        scale, zero_point = float(detail["quantization_parameters"]["scales"][0]), \
            int(detail["quantization_parameters"]["zero_points"][0])
        interp.set_input(values, 0)
        interp.invoke()
        got = interp.get_output(0).reshape(-1)
        table = tanh_int8_table(scale, zero_point)
        assert np.array_equal(got, table[values.reshape(-1).astype(np.uint8)]), spread


def test_layer_constants_padded_weights_and_output_table():
    """The C kernels' layer constants: window rows of weights zero-padded to a multiple of 4 (the real weights
    unchanged), and one output table = the fused activation's clamp followed by the TANH table."""
    from lcasc.mcu.export_c import output_table, padded_weights
    from lcasc.mcu.tflite_graph import Conv

    rng = np.random.default_rng(0)
    tanh = rng.integers(-128, 128, 256).astype(np.int8)
    q = np.arange(-128, 128)
    for cin, lo, hi, t in [(1, -128, 127, None), (13, -3, 127, None), (11, -128, 127, tanh), (16, -20, 90, tanh)]:
        w = rng.integers(-128, 128, (5, 3, 3, cin)).astype(np.int8)
        layer = Conv(w=w, bias=np.zeros(5, np.int32), multiplier=np.ones(5, np.int32), shift=np.zeros(5, np.int32),
                     input_offset=0, output_offset=0, act_min=lo, act_max=hi, tanh=t)
        padded = padded_weights(layer)
        assert padded.shape == (5, 3, -(-3 * cin // 4) * 4)
        assert np.array_equal(padded[:, :, :3 * cin], w.reshape(5, 3, 3 * cin)) and not padded[:, :, 3 * cin:].any()
        table = output_table(layer)
        if t is None and (lo, hi) == (-128, 127):
            assert table is None
            continue
        want = np.clip(q, lo, hi) if t is None else t[np.clip(q, lo, hi) & 0xFF]
        assert table.dtype == np.int8 and np.array_equal(table[q & 0xFF], want)
