"""INT8 evaluation in bulk by the C library compiled for this machine (lcasc.mcu.host_runner): the same bits
as TensorFlow Lite Micro, and TFLM itself whenever the C library cannot be trusted or built."""

from __future__ import annotations

import numpy as np
import pytest

from lcasc.stages.quantize import int8_available

pytestmark = pytest.mark.skipif(not int8_available(), reason="INT8 export extras (lcasc[tflite]) not installed")


@pytest.fixture(scope="module")
def run(family_run):
    from lcasc.run import Run

    return Run(family_run, progress=False)


def _tflm(run, name):
    from lcasc.runtimes import TFLiteMicroClassifier

    return TFLiteMicroClassifier(run.model_dir(name) / "model_int8.tflite", run.classes)


def _need_compiler():
    from lcasc.mcu.toolchain import host_compiler

    if host_compiler() is None:
        pytest.skip("no host C compiler (cc/gcc)")


@pytest.mark.parametrize("name", ["unpruned", "pruned_C123"])
def test_compiled_library_gives_tflite_micros_probabilities_bit_for_bit(run, name):
    from lcasc.mcu.host_runner import CompiledInt8Classifier

    _need_compiler()
    X = np.concatenate([run.split("test").X, run.split("validate").X])
    tflm = _tflm(run, name)
    with CompiledInt8Classifier(tflm.path, run.classes, workers=3) as fast:  # 3 processes: uneven parts
        Xq = tflm.quantize_input(X)
        np.testing.assert_array_equal(fast.invoke_int8(Xq), tflm.invoke_int8(Xq))
        np.testing.assert_array_equal(fast.predict_proba(X), tflm.predict_proba(X))
        assert fast.predict_proba(X[:0]).shape == (0, len(run.classes))
        build = fast._tmp
    assert not build.exists()  # the build folder goes with the classifier


def test_bulk_classifier_checks_a_sample_in_tflite_micro(run):
    from lcasc.mcu.host_runner import CompiledInt8Classifier, bulk_classifier

    _need_compiler()
    sample = run.split("validate").X[:20]
    clf, check = bulk_classifier(run.model_dir("unpruned") / "model_int8.tflite", run.classes, sample)
    try:
        assert isinstance(clf, CompiledInt8Classifier)
        assert check == {"bulk_runtime": "c-host", "tflm_sample_clips": 20, "tflm_sample_mismatches": 0}
    finally:
        clf.close()


def test_bulk_classifier_falls_back_to_tflite_micro_on_a_difference(run, monkeypatch):
    from lcasc.mcu import host_runner
    from lcasc.runtimes import TFLiteMicroClassifier

    _need_compiler()
    real = host_runner.CompiledInt8Classifier.invoke_int8

    def one_step_off(self, Xq):  # a C library that disagrees with TFLM on the first clip
        out = real(self, Xq)
        out[0, 0] = out[0, 0] + 1 if out[0, 0] < 127 else 126
        return out

    monkeypatch.setattr(host_runner.CompiledInt8Classifier, "invoke_int8", one_step_off)
    clf, check = host_runner.bulk_classifier(run.model_dir("unpruned") / "model_int8.tflite", run.classes,
                                             run.split("validate").X[:10])
    assert isinstance(clf, TFLiteMicroClassifier)
    assert check["bulk_runtime"] == "tflite-micro" and check["tflm_sample_mismatches"] == 1
    assert "differs from TFLite Micro on 1 of 10" in check["bulk_fallback_reason"]


def test_bulk_classifier_runs_files_the_c_library_does_not_implement_in_tflite_micro(run):
    from lcasc.mcu.host_runner import bulk_classifier
    from lcasc.runtimes import TFLiteMicroClassifier

    fused = run.model_dir("ensemble_fused") / "model_int8.tflite"  # GATHER/CONCATENATION: not in the C library
    clf, check = bulk_classifier(fused, run.classes, run.split("validate").X[:5])
    assert isinstance(clf, TFLiteMicroClassifier)
    assert check["bulk_runtime"] == "tflite-micro" and "GATHER" in check["bulk_fallback_reason"]


def test_bulk_classifier_without_a_compiler_uses_tflite_micro(run, monkeypatch):
    from lcasc.mcu import toolchain
    from lcasc.mcu.host_runner import bulk_classifier
    from lcasc.runtimes import TFLiteMicroClassifier

    monkeypatch.setattr(toolchain, "host_compiler", lambda: None)
    clf, check = bulk_classifier(run.model_dir("unpruned") / "model_int8.tflite", run.classes,
                                 run.split("validate").X[:5])
    assert isinstance(clf, TFLiteMicroClassifier)
    assert check == {"bulk_runtime": "tflite-micro", "bulk_fallback_reason": "no host C compiler (cc/gcc) on PATH"}
