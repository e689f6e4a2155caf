"""The "On a microcontroller" section of ``report.md``: what ``lcasc export --format c`` proved and measured.

Why a module of its own: ``lcasc.stages.report`` only calls :func:`section`; the table is also what the README quotes.
"""

from __future__ import annotations

from lcasc.markdown import table


def rows(entries: list[dict]) -> list[list[str]]:
    """One row per footprint member of the results entries (networks or ensembles) that carry ``"mcu"``."""
    out = []
    for e in entries:
        mcu = e.get("mcu") or {}
        host = mcu.get("host_check", {})
        for f in mcu.get("cortex_m4", {}).get("footprint", []):
            fl, ram, ins, ms = f["flash_bytes"], f["ram_bytes"], f["instructions"], f["ms_at_80mhz_1_cpi"]
            name = e["name"] if len(mcu["cortex_m4"]["footprint"]) == 1 else f"{e['name']}: {f['member']}"
            arena = f"{e['arena_bytes']:,}" if e.get("arena_bytes") else "–"
            out.append([name, f["widths"], f"{host.get('mismatching_clips', {}).get(f['member'], '–')} of "
                        f"{host.get('test_clips', '–')}", f"{host.get('front_end_max_abs_diff', float('nan')):.1e}",
                        f"{fl['model']:,}", f"{fl['kernels']:,}", f"{fl['network_and_kernels']:,}",
                        f"{fl['front_end']:,}", f"{fl['c_library']:,}", f"{ram['network_total']:,}", arena,
                        f"{ins['front_end']:,}", f"{ins['network']:,}", f"{ins['per_mac']:.2f}",
                        f"{ms['front_end'] + ms['network']:.0f}"])
    return out


HEADER = ["network", "widths", "clips ≠ TFLM", "front end max Δ", "flash: model", "kernels", "model + kernels",
          "front end", "C library", "network RAM", "TFLM arena", "instr. front end", "instr. network",
          "instr./MAC", "ms @ 80 MHz"]


def section(res: dict) -> list[str]:
    """Markdown lines of the section (empty when nothing was exported with checks)."""
    rows_ = rows(res.get("networks", []) + res.get("ensembles", []))
    if not rows_:
        return []
    return ["## On a microcontroller (`lcasc export --format c`)", "",
            "The C library of each exported network: its int8 logits compared with the `.tflite` file's in "
            "tflite-micro on every test clip (host gcc), its front end with lcasc's log-mel (max |Δ|), and a "
            "Cortex-M4 image (QEMU mps2-an386) whose outputs equal the host's on real clips. Flash in bytes "
            "from the ELF (model constants, int8 kernels, front end with its tables, newlib functions it "
            "calls); network RAM = working buffer + int8 input + measured stack high-water mark; instructions "
            "counted in QEMU (`-icount`), milliseconds assume one cycle per instruction at 80 MHz (QEMU is "
            "not cycle-accurate).", "", table(HEADER, rows_), ""]
