"""The study's outputs for people: its Markdown table and paper Figures 1 and 2 as PNG."""

from __future__ import annotations

PAPER_KERNEL = 3  # Figure 2 compares activation patterns at this kernel size


def study_table_markdown(summary) -> str:
    """Markdown table of a study summary (the dict of ``summary.json`` or the rows ``run_study`` returns)."""
    rows = summary["variants"] if isinstance(summary, dict) else summary
    lines = ["| variant | kernel | activations | params | MACs | accuracy (%) | log-loss | repeats |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        k = r["kernel_size"]
        lines.append(f"| {r['variant']} | {k}×{k} | {r['activations']} | {r['params']:,} | {r['macs'] / 1e6:.2f}M "
                     f"| {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} "
                     f"| {r['log_loss_mean']:.3f} ± {r['log_loss_std']:.3f} | {r['repeats']} |")
    return "\n".join(lines) + "\n"


# -- figures ----------------------------------------------------------------------------------------------
def plot_kernels(rows: list[dict], path) -> None:
    """Paper Figure 1: accuracy and log-loss against kernel size, one line per activation pattern."""
    from lcasc.plots import _save, plt

    kernels = sorted({r["kernel_size"] for r in rows})
    params = {r["kernel_size"]: r["params"] for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    patterns = list(dict.fromkeys(r.get("series", r["activations"]) for r in rows))
    for i, act in enumerate(patterns):
        rs = sorted((r for r in rows if r.get("series", r["activations"]) == act), key=lambda r: r["kernel_size"])
        shift = 0.08 * (i - (len(patterns) - 1) / 2)  # a small offset keeps the error bars apart
        x = [r["kernel_size"] + shift for r in rs]
        for ax, key, scale in ((axes[0], "accuracy", 100), (axes[1], "log_loss", 1)):
            ax.errorbar(x, [scale * r[f"{key}_mean"] for r in rs], yerr=[scale * r[f"{key}_std"] for r in rs],
                        marker="o", capsize=3, label=act)
    for ax, label in ((axes[0], "accuracy (%)"), (axes[1], "log-loss")):
        ax.set_xticks(kernels, [f"{k}×{k}\n{params[k] / 1000:.1f}k params" for k in kernels], fontsize=8)
        ax.set_xlabel("kernel size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(title="C1 C2 C3 D", fontsize=8)
    fig.suptitle(f"kernel size and activations (mean ± std over {max(r['repeats'] for r in rows)} runs)")
    fig.tight_layout()
    _save(fig, path)


def plot_activations(rows: list[dict], path, kernel_size: int | None = None) -> None:
    """Paper Figure 2: accuracy and log-loss per activation pattern at one kernel size (3 if studied)."""
    from lcasc.plots import _save, plt

    kernels = [r["kernel_size"] for r in rows]
    k = kernel_size if kernel_size is not None else (PAPER_KERNEL if PAPER_KERNEL in kernels else kernels[0])
    rs = [r for r in rows if r["kernel_size"] == k]
    names = [r.get("series", r["activations"]) for r in rs]
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 2.0 + 1.2 * len(rs)), 3.6))
    for ax, key, scale, label, color in ((axes[0], "accuracy", 100, "accuracy (%)", "tab:blue"),
                                         (axes[1], "log_loss", 1, "log-loss", "tab:orange")):
        means, errs = [scale * r[f"{key}_mean"] for r in rs], [scale * r[f"{key}_std"] for r in rs]
        ax.bar(range(len(rs)), means, yerr=errs, capsize=4, color=color, alpha=0.8, width=0.6)
        for i, (m, e) in enumerate(zip(means, errs)):
            ax.annotate(f"{m:.1f}" if scale == 100 else f"{m:.3f}", (i, m + e), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rs)), names)
        ax.set_xlim(-0.6, len(rs) - 0.4)
        # Zoomed on the values (bars start below the axis), as differences are small next to the values.
        lo, hi = min(m - e for m, e in zip(means, errs)), max(m + e for m, e in zip(means, errs))
        pad = max(hi - lo, 0.02 * abs(hi), 1e-3)
        ax.set_ylim(max(0.0, lo - 0.6 * pad), hi + 0.35 * pad)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.supxlabel("activations of C1 C2 C3 D (T = tanh, R = ReLU)", fontsize=10)
    fig.suptitle(f"activation patterns at kernel {k}×{k} (mean ± std over {max(r['repeats'] for r in rs)} runs)")
    fig.tight_layout()
    _save(fig, path)
