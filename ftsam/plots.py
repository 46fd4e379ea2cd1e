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
