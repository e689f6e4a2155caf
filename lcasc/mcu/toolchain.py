"""Build an exported C bundle and run it: host gcc, and a bare-metal Cortex-M4 image in QEMU.

What: :func:`build_host` / :func:`host_logits` / :func:`host_logmel` / :func:`host_pcm_logits` drive the
bundle's ``lcasc_demo`` on raw arrays (how the tests compare it with tflite-micro and lcasc's front end);
:func:`build_m4` / :func:`run_m4` build ``cortex-m4/lcasc_m4.elf`` with ``arm-none-eabi-gcc -mcpu=cortex-m4
-mfpu=fpv4-sp-d16 -mfloat-abi=hard`` and run it in ``qemu-system-arm -M mps2-an386 -icount shift=0`` with
semihosting; :func:`footprint` turns the ELF and the harness's output into flash, RAM and instruction counts.

Why instructions and not cycles: QEMU is not cycle-accurate. With ``-icount shift=0`` its clock advances a
fixed amount per executed instruction, so SysTick ticks count instructions; the harness calibrates ticks
per instruction on a loop of known length (2,000,000 instructions) in the same run, to a resolution of one
tick (40 instructions on this board).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lcasc.mcu.export_c import net_work_bytes

ARM_GCC, QEMU = "arm-none-eabi-gcc", "qemu-system-arm"
INSTALL_HINT = "apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
LIBRARY_OBJECTS = {"lcasc.o": "glue", "lcasc_nn.o": "kernels", "lcasc_frontend.o": "front_end",
                   "lcasc_tables.o": "front_end", "lcasc_model.o": "model"}


class BuildError(RuntimeError):
    """A compiler or emulator step failed; the message holds its output."""


def host_compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def arm_tools_missing() -> list[str]:
    """Names of the Cortex-M4 tools not on PATH (empty when the M4 check can run)."""
    missing = [t for t in (ARM_GCC, QEMU, "make") if shutil.which(t) is None]
    if not missing:  # the compiler alone is not enough: newlib provides libc/libm for the bare-metal image
        probe = subprocess.run([ARM_GCC, "-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                                "--specs=nano.specs", "-print-file-name=libm.a"], capture_output=True, text=True)
        if not os.path.isabs(probe.stdout.strip()):
            missing.append("libnewlib-arm-none-eabi")
    return missing


def _make(bundle: Path, target: str, timeout: float = 600, **env) -> str:
    cmd = ["make", "-s", "-C", str(bundle), target] + [f"{k}={v}" for k, v in env.items()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def build_host(bundle: str | os.PathLike, cflags: str | None = None) -> Path:
    """``make lcasc_demo`` with the host compiler (and ``cflags`` instead of the Makefile's ``-O2``);
    returns the program's path."""
    bundle = Path(bundle)
    cc = host_compiler()
    if cc is None:
        raise BuildError("no host C compiler (cc/gcc) on PATH")
    _make(bundle, "lcasc_demo", CC=cc, **({"CFLAGS": cflags} if cflags else {}))
    return bundle / "lcasc_demo"


def _run_demo(bundle: Path, *args: str) -> None:
    out = subprocess.run([str(bundle / "lcasc_demo"), *args], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise BuildError(f"lcasc_demo {' '.join(args)} failed: {out.stderr.strip()}")


def _demo_io(bundle, option: list[str], data: np.ndarray, in_dtype, out_dtype, out_shape: tuple) -> np.ndarray:
    """Run ``lcasc_demo OPTION IN OUT`` on ``data`` written as raw ``in_dtype``; its raw ``out_dtype`` output."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        np.ascontiguousarray(data, in_dtype).tofile(src)
        _run_demo(Path(bundle), *option, str(src), str(dst))
        return np.fromfile(dst, out_dtype).reshape(out_shape)


def host_logits(bundle: str | os.PathLike, member: int, inputs: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, 40, 51) int8 network inputs -> (N, n_classes) int8 logits of bundle member ``member`` (host build)."""
    return _demo_io(bundle, ["--logits", str(member)], inputs, np.int8, np.int8, (len(inputs), n_classes))


def host_logmel(bundle: str | os.PathLike, pcm: np.ndarray) -> np.ndarray:
    """(N, 44100) int16 PCM -> (N, 40, 51) float32 log-mel of the bundle's C front end (host build)."""
    return _demo_io(bundle, ["--logmel"], pcm, np.int16, np.float32, (len(pcm), 40, 51))


def host_pcm_logits(bundle: str | os.PathLike, member: int, pcm: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, 44100) int16 PCM -> (N, n_classes) int8 logits: C front end, C quantization, member ``member``."""
    return _demo_io(bundle, ["--pcm-logits", str(member)], pcm, np.int16, np.int8, (len(pcm), n_classes))


def host_probabilities(bundle: str | os.PathLike, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, 40, 51) float log-mel -> (N, n_classes) float32 probabilities of the bundle (members averaged),
    through ``lcasc_classify_logmel`` (C quantization, int8 network, float softmax)."""
    return _demo_io(bundle, ["--probs"], X, np.float32, np.float32, (len(X), n_classes))


def build_m4(bundle: str | os.PathLike, dsp: bool = True) -> Path:
    """``make m4``: the bare-metal Cortex-M4 image (the bundle must hold ``cortex-m4/m4_clips.h``)."""
    bundle = Path(bundle)
    if not (bundle / "cortex-m4" / "m4_clips.h").is_file():
        raise BuildError(f"{bundle}: no cortex-m4/m4_clips.h (export with clips for the Cortex-M4 check)")
    shutil.rmtree(bundle / "cortex-m4" / "obj", ignore_errors=True)  # objects of another DSP setting
    (bundle / "cortex-m4" / "lcasc_m4.elf").unlink(missing_ok=True)
    _make(bundle, "m4", DSP=int(dsp))
    return bundle / "cortex-m4" / "lcasc_m4.elf"


def run_m4(bundle: str | os.PathLike, timeout: float = 600) -> dict:
    """Run the image in QEMU; returns the harness's measurements, parsed:
    ``instructions_per_tick``, ``frontend`` [(ticks, stack)], ``pcm`` {(clip, member): logits},
    ``int8`` {(clip, member): (ticks, stack, logits)}."""
    elf = Path(bundle) / "cortex-m4" / "lcasc_m4.elf"
    cmd = [QEMU, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none", "-icount", "shift=0",
           "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    text = out.stdout + "\n" + out.stderr  # QEMU writes the semihosting console to stderr
    if out.returncode != 0 or "done" not in text.split():
        raise BuildError(f"{' '.join(cmd)} exited with {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    res = {"frontend": [], "pcm": {}, "int8": {}}
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        v = [int(x) for x in f[1:]]
        if f[0] == "calib":
            res["instructions_per_tick"] = v[1] / v[0]
        elif f[0] == "frontend":
            res["frontend"].append((v[1], v[2]))
        elif f[0] == "pcm":
            res["pcm"][(v[0], v[1])] = np.array(v[3:], np.int8)
        elif f[0] == "int8":
            res["int8"][(v[0], v[1])] = (v[2], v[3], np.array(v[5:], np.int8))
    return res


def _symbols(nm: str, path: Path) -> dict[str, tuple[int, str]]:
    """name -> (size, type letter) of the sized symbols of an object or ELF file."""
    out = subprocess.run([nm, "-S", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    syms = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^[0-9a-f]+ ([0-9a-f]+) (\w) (\S+)$", line)
        if m:
            syms[m.group(3)] = (int(m.group(1), 16), m.group(2))
    return syms


def footprint(bundle: str | os.PathLike, measured: dict, members: list, clock_hz: float = 80e6) -> list[dict]:
    """Per member: flash (its model constants, the kernels, the front end, C-library functions the bundle
    pulls in; from the linked ELF's symbol table, with -ffunction-sections/--gc-sections), RAM (working
    buffer, static data, measured stack high-water marks) and instructions (front end, network, per MAC),
    plus a millisecond estimate at ``clock_hz`` assuming one cycle per instruction."""
    bundle = Path(bundle)
    nm = ARM_GCC.replace("gcc", "nm")
    elf = _symbols(nm, bundle / "cortex-m4" / "lcasc_m4.elf")
    owner: dict[str, str] = {}
    for obj, part in LIBRARY_OBJECTS.items():
        for name in _symbols(nm, bundle / "cortex-m4" / "obj" / obj):
            owner[name] = part
    harness = set()
    for obj in ("startup.o", "harness.o"):
        harness |= set(_symbols(nm, bundle / "cortex-m4" / "obj" / obj))
    flash = {"kernels": 0, "front_end": 0, "glue": 0, "c_library": 0}
    static = {"bundle": 0, "c_library": 0}
    model_flash: dict[int, int] = {}
    for name, (size, kind) in elf.items():
        if name in harness:  # the harness's own code, clips and buffers
            continue
        part = owner.get(name, "c_library")  # not defined by a bundle object: newlib's libc/libm
        if kind in "bBdD":  # RAM; a .data symbol also keeps its initial value in flash
            static["c_library" if part == "c_library" else "bundle"] += size
            if kind in "bB":
                continue
        m = re.match(r"^m(\d+)(_|$)", name) if part == "model" else None
        if m:
            model_flash[int(m.group(1))] = model_flash.get(int(m.group(1)), 0) + size
        else:
            flash["glue" if part == "model" else part] += size  # the member table and class names: glue
    ipt = measured["instructions_per_tick"]
    fe_ticks = [t for t, _ in measured["frontend"]]
    fe_stack = max(s for _, s in measured["frontend"])
    out = []
    for i, member in enumerate(members):
        runs = [v for (c, m), v in measured["int8"].items() if m == i]
        net_instr = float(np.median([t for t, _, _ in runs])) * ipt
        fe_instr = float(np.median(fe_ticks)) * ipt
        macs = member.network.macs()
        work = net_work_bytes(member.network)
        input_bytes = (40 * 51 + 3) // 4 * 4
        out.append({
            "member": member.name, "widths": member.network.widths, "macs": macs,
            "flash_bytes": {"model": model_flash.get(i, 0), **flash,
                            "network_and_kernels": model_flash.get(i, 0) + flash["kernels"],
                            "total": model_flash.get(i, 0) + sum(flash.values())},
            "ram_bytes": {"network_work_buffer": work, "network_input": input_bytes,
                          "network_stack_high_water": max(s for _, s, _ in runs),
                          "front_end_work": (2048 + 2) * 4 + 40 * 51 * 4, "front_end_stack_high_water": fe_stack,
                          "static_bundle": static["bundle"], "static_c_library": static["c_library"],
                          "network_total": work + input_bytes + max(s for _, s, _ in runs) + static["bundle"]},
            "instructions": {"front_end": round(fe_instr), "network": round(net_instr),
                             "per_mac": round(net_instr / macs, 3), "resolution": round(ipt)},
            "ms_at_80mhz_1_cpi": {"front_end": round(fe_instr / clock_hz * 1e3, 1),
                                  "network": round(net_instr / clock_hz * 1e3, 1)},
            "clips_checked": len(runs),
        })
    return out
