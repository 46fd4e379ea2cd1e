"""NGD: the update is the damped K-FAC natural gradient (checked against (G (x) A + damping I)^-1 g
built by hand and solved with torch.linalg), KL clipping, the diagonal-Fisher regulariser, the
one layer it tunes, an exact resume, and one run through the pipeline."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ftsam import experiment
from ftsam.config import ConfigError, TrainConfig, from_dict
from ftsam.defenses.ngd import NGDStep, diagonal_fisher, fisher_regularised, kfac_modules
from ftsam.models.preact_resnet import PreActResNet18
from ftsam.train import fit

from synthetic import imageset


def mse(m, x, y):
    return (m(x) - y).pow(2).mean()


def one_step(model, x, y, lr=0.1, damping=0.05, kl_clip=1e6):
    """One NGD step with the factors equal to this batch's statistics (stat_decay 0)."""
    step = NGDStep(model, torch.optim.SGD(model.parameters(), lr=lr), mse, {"lin": model},
                   damping=damping, kl_clip=kl_clip, stat_decay=0.0, cov_every=1, inv_every=1)
    step(x, y)
    return step


def by_hand(w0, x, y, damping, bias):
    """K-FAC for out = W a: A = E[a a^T], G = E[s s^T] with s_n = dloss_n/dout_n (per-sample),
    F = G (x) A (row-major vec of W), natural gradient (F + damping I)^-1 vec(grad W)."""
    n = x.shape[0]
    a = torch.cat([x, torch.ones(n, 1)], 1) if bias else x
    out = a @ w0.T
    s = 2 * (out - y) / y.shape[1]           # per-sample gradient of mean_k (out_k - y_k)^2 w.r.t. out
    A, G = a.T @ a / n, s.T @ s / n
    g = (s.T @ a / n).flatten()              # gradient of the batch-mean loss
    F_ = torch.kron(G, A)
    return torch.linalg.solve(F_ + damping * torch.eye(len(g)), g), g


@pytest.mark.parametrize("out_features,bias", [(1, False), (2, True)])
def test_the_update_is_the_damped_kfac_natural_gradient(out_features, bias):
    torch.manual_seed(0)
    model = nn.Linear(2, out_features, bias=bias).double()
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, out_features, dtype=torch.float64)
    w0 = torch.cat([model.weight, model.bias[:, None]], 1).detach().clone() if bias else model.weight.detach().clone()
    one_step(model, x, y, lr=0.1, damping=0.05)
    nat, _ = by_hand(w0, x, y, 0.05, bias)
    w1 = torch.cat([model.weight, model.bias[:, None]], 1) if bias else model.weight
    torch.testing.assert_close(w1.detach().flatten().double(), (w0.flatten() - 0.1 * nat), atol=1e-5, rtol=1e-4)
    sgd = w0.flatten() - 0.1 * by_hand(w0, x, y, 0.05, bias)[1]
    assert not torch.allclose(w1.detach().flatten().double(), sgd, atol=1e-3)   # not plain SGD


def test_kl_clipping_scales_the_natural_gradient():
    torch.manual_seed(1)
    model = nn.Linear(2, 1, bias=False).double()
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    w0 = model.weight.detach().clone()
    one_step(model, x, y, lr=0.5, damping=0.01, kl_clip=1e-4)
    nat, g = by_hand(w0, x, y, 0.01, False)
    nu = math.sqrt(1e-4 / float(0.25 * (nat @ g)))
    assert nu < 1
    torch.testing.assert_close(model.weight.detach().flatten(), w0.flatten() - 0.5 * nu * nat, atol=1e-6, rtol=1e-5)


def test_diagonal_fisher_and_the_regulariser():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    data = imageset(5, 3, 1, 2)
    params = {"1.weight": model[1].weight}
    fisher = diagonal_fisher(model, params, data.x, data.y, torch.device("cpu"), chunk=2)
    expect = torch.zeros(3, 4)
    for i in range(5):                       # mean of squared per-sample gradients, one at a time
        model.zero_grad()
        nn.functional.cross_entropy(model(data.x[i:i + 1].float() / 255), data.y[i:i + 1]).backward()
        expect += model[1].weight.grad.pow(2) / 5
    torch.testing.assert_close(fisher["1.weight"], expect)
    loss = fisher_regularised(lambda m, x, y: torch.zeros(()), params, fisher, 0.1)
    assert loss(model, None, None).item() == 0.0             # at the start: no penalty
    with torch.no_grad():
        model[1].weight += 1.0
    assert loss(model, None, None).item() == pytest.approx(0.05 * float(fisher["1.weight"].sum()), rel=1e-5)


def test_only_the_classification_layer_is_tuned_by_default():
    model = PreActResNet18(1, 10, (0.5,), (0.5,), width=2)
    assert list(kfac_modules(model, "last")) == list(kfac_modules(model, "reference")) == ["linear"]
    assert len(kfac_modules(model, "all")) == 1 + sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_a_resumed_fit_continues_exactly(tmp_path):
    data = imageset(24, 3, 1, 4)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, schedule="constant", crop_padding=0, hflip=False)

    def run(epochs, model, ckpt):
        m = model
        step = NGDStep(m, torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=0.9),
                       lambda mm, x, y: nn.functional.cross_entropy(mm(x), y), {"1": m[1]},
                       stat_decay=0.5, cov_every=2, inv_every=4)
        fit(m, data, TrainConfig(**{**cfg.__dict__, "epochs": epochs}), step, seed=0, checkpoint=ckpt, progress=False)
        return m

    torch.manual_seed(3)
    base = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    whole = run(3, copy.deepcopy(base), None)
    part = copy.deepcopy(base)
    run(2, part, tmp_path / "s.safetensors")
    resumed = run(3, copy.deepcopy(base), tmp_path / "s.safetensors")   # a fresh step object and model
    assert torch.equal(resumed[1].weight, whole[1].weight)


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"defense\.ngd\.damping"):
        from_dict({"defense": {"ngd": {"damping": 0}}})
    with pytest.raises(ConfigError, match=r"defense\.ngd\.layers"):
        from_dict({"defense": {"ngd": {"layers": "first"}}})


def test_ngd_through_the_pipeline_tunes_one_layer_and_is_cached(tmp_path, monkeypatch):
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.5, "train": {"epochs": 2, "batch_size": 16}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    out = experiment.defend(run, "ngd", progress=False)
    assert out.found["layers"] == ["linear"]
    changed = {k for k, v in out.model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, run.model.state_dict()[k])}
    assert {"linear.weight", "linear.bias"} <= changed
    assert not any(k.endswith(("weight", "bias")) and not k.startswith("linear") for k in changed)  # BN statistics may move
    monkeypatch.setattr(NGDStep, "__call__", lambda *a, **k: pytest.fail("NGD ran again"))
    again = experiment.defend(run, "ngd", progress=False)
    assert again.metrics == out.metrics
