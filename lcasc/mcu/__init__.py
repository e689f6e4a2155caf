"""The INT8 networks and their log-mel front end as a C99 library for microcontrollers.

``lcasc export --format c`` reads a run's ``model_int8.tflite`` files (:mod:`lcasc.mcu.tflite_graph`), turns
their quantization parameters into the integers TensorFlow Lite Micro's reference kernels derive from them
(:mod:`lcasc.mcu.fixedpoint`) and writes a self-contained bundle: the kernels and front end from
``lcasc/mcu/c/`` plus generated constant tables (:mod:`lcasc.mcu.export_c`). :mod:`lcasc.mcu.toolchain`
builds it with the host gcc or ``arm-none-eabi-gcc`` and runs it in ``qemu-system-arm`` (Cortex-M4), which
the tests use to prove bit-exactness and which measures flash, RAM and instructions.
"""
