"""Writers of exported files: INT8 TFLite for TensorFlow Lite Micro (:mod:`lcasc.export.tflite`, with the fused
ensemble's in :mod:`lcasc.export.fused_tflite`) and ONNX (:mod:`lcasc.export.onnx`). The runtimes that run
them are in :mod:`lcasc.runtimes`; the C library of an INT8 file in :mod:`lcasc.mcu`."""
