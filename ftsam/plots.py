"""Figures for the notebooks. Each function returns a matplotlib Figure; :func:`save`
writes it as PNG (and PDF) with fixed metadata, so a rerun gives the same files."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

DEFENSE_COLORS = {"ft": "tab:blue", "ft_sam": "tab:red", "ft_l2": "tab:green"}


def save(fig, figures_dir: str | Path, name: str, pdf: bool = True) -> list[Path]:
    d = Path(figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = [d / f"{name}.png"]
    fig.savefig(out[0], dpi=120, bbox_inches="tight", metadata={"Software": None})
    if pdf:
        out.append(d / f"{name}.pdf")
        fig.savefig(out[1], bbox_inches="tight", metadata={"CreationDate": None, "Producer": None, "Creator": None})
    return out


def _show(ax, img: torch.Tensor) -> None:
    img = img.detach().cpu()
    if img.dtype != torch.uint8:
        img = img.clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=255 if img.dtype == torch.uint8 else 1)
    else:
        ax.imshow(img.permute(1, 2, 0))
    ax.set_xticks([])
    ax.set_yticks([])


def clean_vs_triggered(runs: dict, n: int = 6):
    """For each attack: clean test images, their triggered copies, and the amplified difference."""
    fig, axes = plt.subplots(3 * len(runs), n, figsize=(1.3 * n, 4.0 * len(runs)), squeeze=False)
    for r, (label, run) in enumerate(runs.items()):
        keep = (run.attack.target_of(run.test.y) != run.test.y).nonzero().flatten()[:n]
        clean, bd = run.test.x[keep], run.test_bd.x[:n]
        diff = (bd.float() - clean.float()).abs()
        diff = (diff / diff.amax().clamp(min=1)).clamp(0, 1)
        for j in range(min(n, len(keep))):
            _show(axes[3 * r, j], clean[j])
            _show(axes[3 * r + 1, j], bd[j])
            _show(axes[3 * r + 2, j], diff[j])
        axes[3 * r, 0].set_ylabel(f"{label}\nclean", fontsize=8)
        axes[3 * r + 1, 0].set_ylabel("triggered", fontsize=8)
        axes[3 * r + 2, 0].set_ylabel("|difference|", fontsize=8)
    fig.tight_layout()
    return fig


def attack_gallery(runs: dict, n: int = 2):
    """One column per attack: ``n`` test images that the attack should flip, each clean, triggered,
    and the difference amplified to the full range (so an invisible trigger shows)."""
    fig, axes = plt.subplots(3 * n, len(runs), figsize=(1.25 * len(runs), 1.3 * 3 * n), squeeze=False)
    for c, (label, run) in enumerate(runs.items()):
        keep = (run.attack.target_of(run.test.y) != run.test.y).nonzero().flatten()[:n]
        clean, bd = run.test.x[keep], run.test_bd.x[:len(keep)]
        for j in range(len(keep)):
            diff = (bd[j].float() - clean[j].float()).abs()
            _show(axes[3 * j, c], clean[j])
            _show(axes[3 * j + 1, c], bd[j])
            _show(axes[3 * j + 2, c], (diff / diff.amax().clamp(min=1)).clamp(0, 1))
        axes[0, c].set_title(label, fontsize=7)
    for j in range(n):
        for k, name in enumerate(("clean", "triggered", "|diff|, scaled")):
            axes[3 * j + k, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    return fig


def defense_curves(results: dict[str, dict], metrics=("asr", "acc")):
    """ASR and ACC per fine-tuning epoch; one column per attack, one line per defense.
    ``results[attack][defense]`` is a :class:`ftsam.experiment.DefenseRun`."""
    cols = len(results)
    fig, axes = plt.subplots(len(metrics), cols, figsize=(4.2 * cols, 2.8 * len(metrics)), squeeze=False, sharex=True)
    for c, (attack, by_defense) in enumerate(results.items()):
        for r, m in enumerate(metrics):
            ax = axes[r, c]
            for name, dr in by_defense.items():
                pts = [(h["epoch"], h[m]) for h in dr.history if m in h]
                ax.plot(*zip(*pts), label=dr.title, color=DEFENSE_COLORS.get(name), lw=1.5)
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(attack)
            if c == 0:
                ax.set_ylabel(f"{m.upper()} (%)")
            if r == len(metrics) - 1:
                ax.set_xlabel("fine-tuning epoch")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def neuron_panels(values: dict[int, torch.Tensor], order: torch.Tensor, titles: dict[int, str], ylabel: str, cols: int = 4):
    """One bar panel per epoch: a per-neuron quantity with neurons sorted by ``order``
    (the paper's Figure 1: gradient norms sorted by TAC)."""
    keys = sorted(values)
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharey=True)
    for ax, k in zip(axes.flat, keys):
        ax.bar(range(len(order)), values[k][order].numpy(), width=1.0, color="tab:red")
        ax.set_title(titles.get(k, str(k)), fontsize=9)
        ax.set_xticks([])
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for r in range(rows):
        axes[r, 0].set_ylabel(ylabel, fontsize=8)
    fig.supxlabel("neurons of the last convolution, sorted by TAC (high to low)", fontsize=9)
    fig.tight_layout()
    return fig


def weight_norms(series: dict[str, torch.Tensor], order: torch.Tensor, tac: torch.Tensor):
    """Per-neuron weight norms (sorted by TAC) before and after each defense, with TAC above."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.6), sharex=True, height_ratios=[1, 2])
    axes[0].bar(range(len(order)), tac[order].numpy(), width=1.0, color="grey")
    axes[0].set_ylabel("TAC")
    for (name, norms), color in zip(series.items(), ("black", "tab:blue", "tab:red", "tab:green")):
        axes[1].plot(range(len(order)), norms[order].numpy(), lw=1.0, color=color, label=name)
    axes[1].set_ylabel("weight norm")
    axes[1].set_xlabel("neurons of the last convolution, sorted by TAC (high to low)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradcam_grid(images: torch.Tensor, rows: dict[str, torch.Tensor], title: str = ""):
    """Poisoned images on top, then one row of Grad-CAM overlays per model."""
    n = len(images)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.5 * n, 1.6 * (1 + len(rows))), squeeze=False)
    for j in range(n):
        _show(axes[0, j], images[j])
        for r, maps in enumerate(rows.values(), start=1):
            _show(axes[r, j], images[j])
            axes[r, j].imshow(maps[j].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[0, 0].set_ylabel("poisoned", fontsize=8)
    for r, name in enumerate(rows, start=1):
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tsne_panels(panels: dict[str, dict], num_classes: int):
    """t-SNE scatter per model: clean test points coloured by class, poisoned points as black
    crosses. ``panels[name] = {"xy": [N, 2], "y": [N] (class, -1 for poisoned)}``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    for ax, (name, p) in zip(axes.flat, panels.items()):
        xy, y = p["xy"], p["y"]
        clean = y >= 0
        ax.scatter(xy[clean, 0], xy[clean, 1], c=[cmap(int(c) % cmap.N) for c in y[clean]], s=6, alpha=0.7, linewidths=0)
        ax.scatter(xy[~clean, 0], xy[~clean, 1], c="black", marker="x", s=10, linewidths=0.7, label="poisoned")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def sweep(xs: list[float], series: dict[str, dict[str, list[float]]], reference: dict[str, dict[str, float]] | None = None,
          xlabel: str = "gamma"):
    """ACC and ASR against a swept hyper-parameter, one line per attack; dashed lines for a
    reference method (e.g. FT-SAM)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, m in enumerate(("acc", "asr")):
        for k, (label, vals) in enumerate(series.items()):
            color = f"C{k}"
            axes[i].plot(xs, vals[m], marker="o", color=color, label=label)
            if reference and label in reference:
                axes[i].axhline(reference[label][m], color=color, ls="--", lw=1)
        axes[i].set_xscale("log")
        axes[i].set_xlabel(xlabel)
        axes[i].set_ylabel(f"{m.upper()} (%)")
        axes[i].set_ylim(-3, 103)
        axes[i].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
