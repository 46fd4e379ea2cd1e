"""AC (activation clustering): penultimate activations by a hook on the last linear layer, per-class
reduction and 2-means, the poisoned cluster judged by size; flags are sample indices; the defended
model is retrained on the rest; the pipeline scores the flags."""
import warnings

import pytest
import torch
from torch import nn

from ftsam import experiment
from ftsam.config import ConfigError, from_dict
from ftsam.data import ImageSet
from ftsam.defenses import build_defense
from ftsam.defenses.ac import cluster_flags, judge_clusters, penultimate_activations
from ftsam.defenses.base import Context

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def feature_model(d: int = 16, classes: int = 4) -> nn.Module:
    """Flatten, an identity layer and a classifier: the penultimate activations are the pixels / 255."""
    torch.manual_seed(0)
    hidden = nn.Linear(d, d)
    with torch.no_grad():
        hidden.weight.copy_(torch.eye(d))
        hidden.bias.zero_()
    return nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), nn.Linear(d, classes))


def backdoored_set(per_class: int = 40, poisons: int = 14, classes: int = 4, seed: int = 0):
    """4x4 images: each class a bright pixel of its own over faint noise; ``poisons`` images of the
    other classes carry a white bottom row instead of their own pixel (as a backdoored network's
    features of a triggered image are the trigger's) and label 0 (a quarter of class 0). Shuffled, so the poisons
    sit at scattered indices. Returns the set and the poisons' indices."""
    g = torch.Generator().manual_seed(seed)
    n = per_class * classes
    y = torch.arange(n) % classes
    x = torch.randint(0, 40, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    x.view(n, 16)[torch.arange(n), 5 + y] = 200
    src = (y != 0).nonzero().flatten()[:poisons]
    x.view(n, 16)[src, 5 + y[src]] = 20     # in a backdoored network the trigger's features dominate
    x.view(n, 16)[src, 12:] = 255
    y[src] = 0
    perm = torch.randperm(n, generator=g)
    poisoned = torch.zeros(n, dtype=torch.bool)
    poisoned[src] = True
    return ImageSet(x[perm], y[perm]), poisoned[perm].nonzero().flatten()


def test_activations_are_the_input_of_the_last_linear_layer_in_index_order():
    model = feature_model()
    data, _ = backdoored_set()
    model.train()
    acts = penultimate_activations(model, data.x, torch.device("cpu"), batch_size=7)
    torch.testing.assert_close(acts, data.x.flatten(1).float() / 255)
    assert model.training                      # mode restored
    with pytest.raises(ValueError, match="nn.Linear"):
        penultimate_activations(nn.Sequential(nn.Conv2d(1, 2, 3)), data.x, torch.device("cpu"))


@pytest.mark.parametrize("reduce", ["ica", "pca"])
def test_the_poisoned_quarter_of_a_class_is_flagged_and_clean_classes_are_not(reduce):
    data, poison = backdoored_set()
    acts = penultimate_activations(feature_model(), data.x, torch.device("cpu"))
    # 4 components: 12 of the 16 features are uniform noise, which whitening (ICA) would weigh like the trigger
    flagged, per_class = cluster_flags(acts, data.y, dims=4, reduce=reduce, analysis="relative_size",
                                       size_threshold=0.35, silhouette_threshold=0.1, seed=0)
    scores = experiment.detection_scores({"flagged": flagged}, poison, "flagged")
    assert scores["recall"] >= 90 and scores["precision"] >= 80, (scores, per_class)
    assert per_class["0"]["poisoned_clusters"] and sorted(per_class["0"]["sizes"]) == [14, 40]
    assert all(not per_class[str(c)]["poisoned_clusters"] for c in (1, 2, 3))


def test_the_reduction_is_applied(monkeypatch):
    from ftsam.defenses import ac
    calls, real = [], ac.reduce_dims

    def spy(acts, dims, method, seed):
        out = real(acts, dims, method, seed)
        calls.append((acts.shape[1], dims, method, out.shape[1]))
        return out
    monkeypatch.setattr(ac, "reduce_dims", spy)
    data, _ = backdoored_set()
    acts = penultimate_activations(feature_model(), data.x, torch.device("cpu"))
    ac.cluster_flags(acts, data.y, dims=3, reduce="ica", analysis="relative_size", size_threshold=0.35,
                     silhouette_threshold=0.1, seed=0)
    assert calls == [(16, 3, "ica", 3)] * 4
    ica, pca = (real(acts.double().numpy(), 3, m, 0) for m in ("ica", "pca"))
    assert ica.std(0) == pytest.approx([1, 1, 1], rel=0.05)                # whitened independent components
    assert pca.std(0)[0] > pca.std(0)[1] > pca.std(0)[2] and pca.std(0)[0] < 1


def test_flags_follow_the_samples_when_the_set_is_reordered():
    data, poison = backdoored_set()
    model = feature_model()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(5))
    kw = dict(dims=4, reduce="pca", analysis="relative_size", size_threshold=0.35, silhouette_threshold=0.1, seed=0)
    a = cluster_flags(penultimate_activations(model, data.x, torch.device("cpu")), data.y, **kw)[0]
    b = cluster_flags(penultimate_activations(model, data.x[perm], torch.device("cpu")), data.y[perm], **kw)[0]
    assert torch.equal(a, poison)
    assert torch.equal(perm[b].sort().values, a)       # index i of the shuffled set is perm[i] of the original


def test_cluster_judgements():
    labels = torch.tensor([0] * 10 + [1] * 30).numpy()
    split = torch.cat([torch.zeros(10, 2), torch.ones(30, 2)]).numpy() + 0.01 * torch.randn(40, 2).numpy()
    assert judge_clusters(labels, split, "relative_size", 0.35, 0.1)[0] == [0]        # 25% < 35%
    assert judge_clusters(labels, split, "relative_size", 0.2, 0.1)[0] == []
    assert judge_clusters(labels, split, "silhouette", 0.35, 0.1)[0] == [0]           # a clean split: trusted
    blob = torch.randn(40, 2, generator=torch.Generator().manual_seed(0)).numpy()
    poisoned, info = judge_clusters(labels, blob, "silhouette", 0.35, 0.1)            # arbitrary split of one blob
    assert poisoned == [] and info["silhouette"] <= 0.1
    assert judge_clusters(1 - labels, split, "smaller", 0.35, 0.1)[0] == [1]


def test_options_are_range_checked():
    base = {"data": {"name": "digits"}}
    for key, value in (("size_threshold", 0.7), ("dims", 0), ("reduce", "tsne"), ("analysis", "distance")):
        with pytest.raises(ConfigError, match=f"defense.ac.{key}"):
            from_dict(base | {"defense": {"ac": {key: value}}})


def test_run_retrains_a_fresh_model_without_the_flagged_samples(monkeypatch):
    """AC trains a model on the poisoned set, flags, and trains a *new* model on the rest."""
    data, poison = backdoored_set()
    cfg = from_dict({"data": {"name": "digits"}, "attack_train": {"epochs": 1, "batch_size": 16}})
    ac = build_defense("ac", cfg.defense)
    seen = []

    class FakeContext(Context):
        def fit(self, model, data, train_cfg, step=None, **kw):
            seen.append((model, len(data), kw["state"], kw.get("monitor", True)))
            return super().fit(model, data, train_cfg, step, **kw)
    monkeypatch.setattr(ac, "flag", lambda model, data, ctx: (poison, {}))
    models = []

    class G:
        poisoned, scratch_train = data, cfg.attack_train

        def new_model(self):
            models.append(feature_model())
            return models[-1]
    out = ac.run(G(), FakeContext(seed=0))
    assert out.found["flagged"] == poison.tolist()
    (m1, n1, s1, mon1), (m2, n2, s2, mon2) = seen
    assert (n1, n2) == (len(data), len(data) - len(poison)) and s1 != s2 and not mon1 and mon2
    assert m1 is models[0] and m2 is models[1] and out.model is models[1]


def test_defend_caches_ac_and_scores_its_flags(tmp_path):
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 12, "test_per_class": 4},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"ac": {"dims": 3}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    first = experiment.defend(run, "ac", progress=False)
    assert set(first.found) == {"flagged", "per_class"} and {"precision", "recall"} <= set(first.metrics)
    flagged = set(first.found["flagged"])
    poison = set(run.poisoned.poison_index.tolist())
    recall = 100.0 * len(flagged & poison) / len(poison)
    assert first.metrics["recall"] == pytest.approx(recall)
    stamp = {p: p.stat().st_mtime_ns for p in run.run_dir.glob("ac-*/*")}
    again = experiment.defend(run, "ac", progress=False)         # cached: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in run.run_dir.glob("ac-*/*")} == stamp
    assert again.metrics == first.metrics and again.found["flagged"] == first.found["flagged"]
    for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)


def test_detection_scores_read_only_the_key_the_defense_declares():
    poison = torch.tensor([1, 2, 3, 4])
    assert experiment.detection_scores({"flagged": [0]}, poison, None) == {}      # e.g. NC's classes
    assert experiment.detection_scores({"flagged": [1, 2, 9]}, poison, "flagged") == \
        {"precision": pytest.approx(200 / 3), "recall": 50.0}
    assert experiment.detection_scores({"flagged": []}, poison, "flagged") == {"precision": None, "recall": 0.0}
    with pytest.raises(KeyError, match="isolated"):
        experiment.detection_scores({"flagged": [1]}, poison, "isolated")
