"""The adaptive SAM step against hand-computed numbers, frozen BatchNorm, and one FT-SAM step of fit().

The two-parameter case used throughout (float64, so comparisons are tight)::

    w = (w1, w2) = (a.weight, b.bias) = (2, -1)
    L(w) = 0.375 * w1^2 + 2 * w2^2          grad L = (0.75 w1, 4 w2) = (1.5, -4) at w
    rho = 0.5
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ftsam.config import SAMConfig, TrainConfig
from ftsam.data import ImageSet
from ftsam.defenses.ft_sam import sam_step
from ftsam.sam import SAM, frozen_bn
from ftsam.train import fit

W0 = (2.0, -1.0)
RHO = 0.5


class TwoParams(nn.Module):
    """Two scalar parameters named ``a.weight`` and ``b.bias`` (names matter for perturb='weights')."""

    def __init__(self, w1: float = W0[0], w2: float = W0[1]):
        super().__init__()
        self.a, self.b = nn.Module(), nn.Module()
        self.a.weight = nn.Parameter(torch.tensor(w1, dtype=torch.float64))
        self.b.bias = nn.Parameter(torch.tensor(w2, dtype=torch.float64))

    def loss(self) -> torch.Tensor:
        return 0.375 * self.a.weight ** 2 + 2.0 * self.b.bias ** 2

    def w(self) -> tuple[float, float]:
        return self.a.weight.item(), self.b.bias.item()


def make(lr: float = 0.1, **kw):
    model = TwoParams()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, opt, SAM(opt, model, RHO, **kw)


def eps_of(model, sam) -> tuple[float, float]:
    """eps per parameter (0 for a parameter SAM does not perturb)."""
    model.loss().backward()
    got = {id(p): e.item() for p, e in sam.perturbation()}
    return got.get(id(model.a.weight), 0.0), got.get(id(model.b.bias), 0.0)


# eps = rho * T^2 g / ||T g||, T = |w| + eta, g = (1.5, -4)
CASES = {
    # eta = 0: T = (2, 1); T g = (3, -4), ||T g|| = 5; T^2 g = (6, -4); eps = 0.5 * (6, -4) / 5
    "adaptive_eta0": (dict(eta=0.0), (0.6, -0.4)),
    # eta = 0.01: T = (2.01, 1.01); T g = (3.015, -4.04), ||T g|| = sqrt(9.090225 + 16.3216) = 5.0410142828...
    # T^2 g = (6.06015, -4.0804); eps = 0.5 * (6.06015, -4.0804) / 5.0410142828
    "adaptive_eta001": (dict(eta=0.01), (0.6010843909533, -0.4047201387500)),
    # adaptive=False: T = I; ||g|| = sqrt(2.25 + 16) = 4.2720018727; eps = 0.5 * (1.5, -4) / 4.2720018727
    "plain": (dict(adaptive=False), (0.1755617207942, -0.4681645887845)),
    # perturb="weights": only a.weight; the norm is over it alone: T g = 2 * 1.5 = 3, ||T g|| = 3,
    # eps1 = 0.5 * 2^2 * 1.5 / 3 = 1.0
    "weights_adaptive": (dict(perturb="weights"), (1.0, 0.0)),
    # perturb="weights", T = I: eps1 = 0.5 * 1.5 / 1.5 = 0.5
    "weights_plain": (dict(perturb="weights", adaptive=False), (0.5, 0.0)),
}


@pytest.mark.parametrize("kw, expected", CASES.values(), ids=CASES.keys())
def test_perturbation_matches_hand_computed_eps(kw, expected):
    model, _, sam = make(**kw)
    assert eps_of(model, sam) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("kw, expected", CASES.values(), ids=CASES.keys())
def test_ascent_step_moves_w_by_eps_and_clears_grads(kw, expected):
    model, _, sam = make(**kw)
    model.loss().backward()
    sam.ascent_step()
    assert model.w() == pytest.approx((W0[0] + expected[0], W0[1] + expected[1]), abs=1e-10)
    assert model.a.weight.grad is None and model.b.bias.grad is None


def test_perturbation_lies_on_the_rho_ball_of_the_adaptive_norm():
    # ||T^-1 eps|| = rho: the inner maximisation's constraint is active
    model, _, sam = make(eta=0.01)
    e1, e2 = eps_of(model, sam)
    assert ((e1 / 2.01) ** 2 + (e2 / 1.01) ** 2) ** 0.5 == pytest.approx(RHO, abs=1e-12)


def test_perturbation_is_proportional_to_rho():
    model = TwoParams()
    model.loss().backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    e_small = [e.item() for _, e in SAM(opt, model, 0.5).perturbation()]
    e_big = [e.item() for _, e in SAM(opt, model, 2.0).perturbation()]
    assert e_big == pytest.approx([4 * e for e in e_small], abs=1e-12)


# descent: w_new = w - lr * grad L(w + eps), lr = 0.1, grad L(v) = (0.75 v1, 4 v2)
DESCENT = {
    # w + eps = (2.6, -1.4); grad = (1.95, -5.6); w_new = (2 - 0.195, -1 + 0.56)
    "adaptive_eta0": (dict(eta=0.0), (1.805, -0.44)),
    # w + eps = (2.1755617208, -1.4681645888); grad = (1.6316712906, -5.8726583551)
    # w_new = (2 - 0.16316712906, -1 + 0.58726583551)
    "plain": (dict(adaptive=False), (1.83683287094, -0.41273416449)),
    # w + eps = (3, -1); grad = (2.25, -4); w_new = (2 - 0.225, -1 + 0.4)
    "weights_adaptive": (dict(perturb="weights"), (1.775, -0.6)),
}


@pytest.mark.parametrize("kw, expected", DESCENT.values(), ids=DESCENT.keys())
def test_full_step_descends_from_w_with_the_gradient_at_w_plus_eps(kw, expected):
    model, _, sam = make(lr=0.1, **kw)
    model.loss().backward()
    sam.ascent_step()
    model.loss().backward()          # gradient at w + eps
    sam.descent_step()
    assert model.w() == pytest.approx(expected, abs=1e-10)
    assert model.a.weight.grad is None and model.b.bias.grad is None


def test_descent_step_restores_w_before_the_optimizer_step():
    # with lr -> 0 the step must land back on w (eps is subtracted, not left in; up to round-off)
    model, opt, sam = make(lr=1e-300)
    model.loss().backward()
    sam.ascent_step()
    model.loss().backward()
    grads_at_w_plus_eps = (model.a.weight.grad.item(), model.b.bias.grad.item())
    assert grads_at_w_plus_eps == pytest.approx((1.95, -5.6), abs=1e-12)
    sam.descent_step()
    assert model.w() == pytest.approx(W0, abs=1e-14)


def test_descent_step_with_a_real_optimizer_uses_the_sam_gradient():
    # the base optimizer is free: with momentum SGD the first step equals plain SGD's
    model = TwoParams()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sam = SAM(opt, model, RHO)
    model.loss().backward()
    sam.ascent_step()
    model.loss().backward()
    sam.descent_step()
    assert model.w() == pytest.approx((1.805, -0.44), abs=1e-10)


def test_zero_gradient_gives_no_nan():
    model = TwoParams(0.0, 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sam = SAM(opt, model, RHO)
    model.loss().backward()
    eps = [e.item() for _, e in sam.perturbation()]
    assert eps == [0.0, 0.0]


def test_params_without_grad_are_skipped():
    model = TwoParams()
    model.b.bias.requires_grad_(False)
    opt = torch.optim.SGD([model.a.weight], lr=0.1)
    sam = SAM(opt, model, RHO)
    # only a.weight: T g = 3, eps1 = 0.5 * 4 * 1.5 / 3 = 1.0
    model.loss().backward()
    pairs = sam.perturbation()
    assert [p is model.a.weight for p, _ in pairs] == [True]
    assert pairs[0][1].item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kw, needle", [
    (dict(rho=0.0), "0.0"), (dict(rho=-1.0), "-1.0"),
    (dict(rho=1.0, eta=-0.01), "-0.01"),
    (dict(rho=1.0, perturb="biases"), "biases"),
])
def test_bad_arguments_raise_value_error_naming_the_value(kw, needle):
    model = TwoParams()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=needle):
        SAM(opt, model, **kw)


# ---- frozen BatchNorm ------------------------------------------------------------------
def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def bn_model(momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.BatchNorm1d(3, momentum=momentum)).train()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_frozen_bn_keeps_running_stats_and_restores_momentum(momentum):
    model = bn_model(momentum)
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    model(x)                       # some non-trivial running stats first
    before = bn_state(model)
    with frozen_bn(model):
        out = model(x)
    after = bn_state(model)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [momentum] * 2
    # train mode still normalises with the batch statistics
    assert not torch.allclose(out, model.eval()(x))
    model.train()
    model(torch.randn(8, 3, 6, 6))  # without the context they do move (a new batch: momentum=None averages)
    moved = bn_state(model)
    assert all(not torch.equal(before[k], moved[k]) for k in before)


def test_frozen_bn_restores_momentum_after_an_exception():
    model = bn_model(0.3)
    with pytest.raises(RuntimeError):
        with frozen_bn(model):
            raise RuntimeError("boom")
    assert model[1].momentum == 0.3 and model[5].momentum == 0.3


def test_fit_with_sam_updates_bn_stats_from_the_first_pass_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (16,), generator=g))
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.5, crop_padding=0, hflip=False, schedule="constant")

    reference = copy.deepcopy(model).train()
    reference(data.x.float() / 255.0)                 # one plain forward pass
    twice = copy.deepcopy(reference)
    twice(data.x.float() / 255.0)                     # what two passes would give

    w_before = copy.deepcopy(model.state_dict())
    fit(model, data, cfg, sam_step(model, cfg, SAMConfig(rho=2.0)), seed=0, progress=False)

    got, want, two = bn_state(model), bn_state(reference), bn_state(twice)
    assert got["1.num_batches_tracked"].item() == 1
    for k in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got[k], two[k], rtol=1e-3, atol=1e-4)
    assert not torch.equal(w_before["0.weight"], model.state_dict()["0.weight"])  # it did step


def test_fit_sam_step_differs_from_plain_sgd_step():
    def run(sam):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
        g = torch.Generator().manual_seed(1)
        data = ImageSet(torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=g),
                        torch.randint(0, 3, (8,), generator=g))
        cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, momentum=0.0, weight_decay=0.0,
                          crop_padding=0, hflip=False, schedule="constant")
        fit(model, data, cfg, sam_step(model, cfg, sam) if sam else None, seed=0, progress=False)
        return model[2].weight.detach().clone()
    assert not torch.allclose(run(None), run(SAMConfig(rho=1.0)))
