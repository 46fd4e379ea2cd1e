"""AC, Activation Clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by
Activation Clustering", SafeAI @ AAAI 2019): find the poisoned samples of a training set in the
activations of a model trained on it, drop them and train anew.

1. Train a model on the poisoned training set (the defender has no other: the attack training
   settings, ``given.scratch_train``).
2. For every class (by its given label): the penultimate activations of its samples (the input of
   the last ``nn.Linear``), in index order, eval mode, no augmentation; reduced to ``dims``
   dimensions by ICA (the paper; ``reduce: pca`` is what common code uses), split by 2-means.
3. Judge the clusters (``analysis``): ``relative_size`` flags a cluster holding less than
   ``size_threshold`` (0.35, the paper's and ART's value) of its class; ``silhouette`` does the
   same only where the split fits the data (silhouette score above ``silhouette_threshold``, ART's
   0.1), so a clean class whose 2-means split is arbitrary keeps all its samples; ``smaller``
   (ART's default) always flags the smaller cluster.
4. Train a new model from scratch on the samples not flagged: the defended model.

A size rule presumes the poisons are a minority of their labelled class. Where an all-to-one
attack poisons as many samples as the target class holds (10% of a 10-class set), the poisons
make up half the target class and no size rule can single them out; the paper's third check,
exclusionary reclassification (retrain without a cluster, see where its samples go), is not
implemented here.

BackdoorBench's copy departs from this: its dimensionality reduction never runs (a chained
comparison keeps the first 10 raw dimensions), and it clusters per batch of a shuffled, augmented
loader with cluster ids pooled across batches, so its flags do not line up with sample indices.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ftsam.config import Config, ConfigError
from ftsam.data import ImageSet
from ftsam.defenses.base import Defended, Defense
from ftsam.train import autocast


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (its classifier), whose input is the penultimate layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: activation clustering needs "
                         "a final linear classifier to read the penultimate activations from")
    return linears[-1]


@torch.no_grad()
def penultimate_activations(model: nn.Module, x_u8: torch.Tensor, device: torch.device,
                            batch_size: int = 256) -> torch.Tensor:
    """The input of the last linear layer for every image, in index order (eval mode, no
    augmentation), as float32 on the CPU. The model's mode is restored."""
    grabbed = []
    hook = last_linear(model).register_forward_hook(lambda m, inp, out: grabbed.append(inp[0].flatten(1).float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x_u8), batch_size):
            xb = x_u8[i:i + batch_size].to(device).float().div_(255.0)
            with autocast(device):
                model(xb)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(grabbed) if grabbed else torch.empty(0)


def reduce_dims(acts: np.ndarray, dims: int, method: str, seed: int) -> np.ndarray:
    """``acts`` [n, d] reduced to ``dims`` components by FastICA or PCA (fitted on these rows)."""
    from sklearn.decomposition import PCA, FastICA
    dims = min(dims, acts.shape[1], acts.shape[0])
    if method == "ica":   # ART's settings for FastICA
        return FastICA(n_components=dims, max_iter=1000, tol=0.005, random_state=seed,
                       whiten="unit-variance").fit_transform(acts)
    return PCA(n_components=dims, random_state=seed).fit_transform(acts)


def judge_clusters(labels: np.ndarray, reduced: np.ndarray, analysis: str, size_threshold: float,
                   silhouette_threshold: float) -> tuple[list[int], dict]:
    """Which of the two clusters of one class are poisoned, and the class's sizes/silhouette."""
    from sklearn.metrics import silhouette_score
    sizes = np.bincount(labels, minlength=2)
    silhouette = float(silhouette_score(reduced, labels)) if 1 < len(set(labels.tolist())) < len(labels) else 0.0
    share = sizes / sizes.sum()
    if analysis == "smaller":
        poisoned = [int(np.argmin(sizes))]
    elif analysis == "silhouette" and silhouette <= silhouette_threshold:
        poisoned = []                  # the split does not fit the data: one clean population
    else:
        poisoned = [c for c in range(2) if share[c] < size_threshold]
    return poisoned, {"sizes": sizes.tolist(), "silhouette": silhouette, "poisoned_clusters": poisoned}


def cluster_flags(acts: torch.Tensor, y: torch.Tensor, *, dims: int, reduce: str, analysis: str,
                  size_threshold: float, silhouette_threshold: float, seed: int) -> tuple[torch.Tensor, dict]:
    """Activation clustering of a whole set: per class, reduce, 2-means, judge. Returns the flagged
    sample indices (sorted, into ``acts``) and per class ``{sizes, silhouette, poisoned_clusters}``
    (classes with too few samples to split are reported with ``skipped``)."""
    from sklearn.cluster import KMeans
    flagged, per_class = [], {}
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        if len(idx) < 4:               # nothing to split (ICA and silhouette need a few points)
            per_class[str(c)] = {"sizes": [len(idx)], "silhouette": 0.0, "poisoned_clusters": [], "skipped": True}
            continue
        reduced = reduce_dims(acts[idx].double().numpy(), dims, reduce, seed)
        labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
        poisoned, per_class[str(c)] = judge_clusters(labels, reduced, analysis, size_threshold, silhouette_threshold)
        for k in poisoned:
            flagged.append(idx[torch.from_numpy(labels == k)])
    flagged = torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long)
    return flagged, per_class


class AC(Defense):
    name, title = "ac", "AC"
    needs = ("poisoned",)
    flags_samples = "flagged"

    @dataclass(frozen=True)
    class Options:
        dims: int = 10                                   # components kept by the reduction
        reduce: Literal["ica", "pca"] = "ica"
        analysis: Literal["relative_size", "silhouette", "smaller"] = "relative_size"
        size_threshold: float = 0.35                     # a cluster under this share of its class is poisoned
        silhouette_threshold: float = 0.1                # ``silhouette``: below it, the class is left whole

    @classmethod
    def check_options(cls, opts):
        if opts.dims < 1:
            raise ConfigError(f"defense.ac.dims must be >= 1, got {opts.dims!r}")
        if opts.reduce not in ("ica", "pca"):
            raise ConfigError(f"defense.ac.reduce must be one of ica, pca; got {opts.reduce!r}")
        if opts.analysis not in ("relative_size", "silhouette", "smaller"):
            raise ConfigError(f"defense.ac.analysis must be one of relative_size, silhouette, smaller; "
                              f"got {opts.analysis!r}")
        if not 0.0 < opts.size_threshold <= 0.5:
            raise ConfigError(f"defense.ac.size_threshold must lie in (0, 0.5], got {opts.size_threshold!r}")
        if not -1.0 <= opts.silhouette_threshold <= 1.0:
            raise ConfigError(f"defense.ac.silhouette_threshold must lie in [-1, 1], got {opts.silhouette_threshold!r}")

    def cache_inputs(self, cfg: Config) -> dict:
        # Not the fine-tuning settings or the clean subset (AC uses neither): its own options and
        # the training it repeats.
        return {"seed": cfg.seed, "ac": dataclasses.asdict(self.opts),
                "scratch_train": dataclasses.asdict(cfg.attack_train)}

    def flag(self, model: nn.Module, data: ImageSet, ctx) -> tuple[torch.Tensor, dict]:
        o = self.opts
        acts = penultimate_activations(model, data.x, ctx.device)
        return cluster_flags(acts, data.y, dims=o.dims, reduce=o.reduce, analysis=o.analysis,
                             size_threshold=o.size_threshold, silhouette_threshold=o.silhouette_threshold,
                             seed=ctx.seed)

    def run(self, given, ctx):
        data, train = given.poisoned, given.scratch_train
        first = given.new_model()
        ctx.fit(first, data, train, desc="AC: model on the poisoned set", state="ac_poisoned_model", monitor=False)
        flagged, per_class = self.flag(first, data, ctx)
        keep = torch.ones(len(data), dtype=torch.bool)
        keep[flagged] = False
        model = given.new_model()
        fitted = ctx.fit(model, data.subset(keep.nonzero().flatten()), train, desc="AC: retraining",
                         state="ac_retrain")
        return Defended(model, fitted.history, {"flagged": flagged.tolist(), "per_class": per_class})
