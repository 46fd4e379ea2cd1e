"""i-BAU: the implicit hypergradient is the derivative of the outer loss through the inner
solution (closed form on a quadratic, unrolled differentiation on a tiny network), the inner
perturbation respects its L2 bound, and the defense runs through the pipeline and caches."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ftsam import experiment
from ftsam.config import ConfigError, from_dict
from ftsam.defenses.ibau import IBAU, implicit_hypergradient, universal_perturbation

import pytest


def _quadratic(seed=0):
    """Inner: L_i(d, th) = 0.5 d^T A d - d^T B th (A positive definite), so d*(th) = A^-1 B th.
    Outer: L_o(d, th) = ||d - c||^2 + sum(th^3): a direct and an indirect part."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(4, 4, generator=g, dtype=torch.float64)
    A = m @ m.T + torch.eye(4, dtype=torch.float64)
    B = torch.randn(4, 3, generator=g, dtype=torch.float64)
    c = torch.randn(4, generator=g, dtype=torch.float64)
    th = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    return A, B, c, th


def test_hypergradient_matches_the_closed_form_on_a_quadratic_inner_problem():
    A, B, c, th = _quadratic()
    d_star = torch.linalg.solve(A, B @ th.detach())
    inner = lambda d: 0.5 * d @ A @ d - d @ (B @ th)
    outer = lambda d: (d - c).pow(2).sum() + th.pow(3).sum()
    exact = 3 * th.detach() ** 2 + B.T @ torch.linalg.solve(A, 2 * (d_star - c))    # A symmetric
    lr = 1.0 / float(torch.linalg.eigvalsh(A).max())        # ||I - lr A|| < 1: the iteration converges
    got = implicit_hypergradient(d_star, [th], outer, inner, lr, K=2000)[0]
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-8)
    # Few iterations: a truncated series, not the answer; none: only the direct gradient.
    assert not torch.allclose(implicit_hypergradient(d_star, [th], outer, inner, lr, K=2)[0], exact, rtol=1e-2)
    torch.testing.assert_close(implicit_hypergradient(d_star, [th], outer, inner, lr, K=0)[0], 3 * th.detach() ** 2)


def test_hypergradient_matches_differentiation_through_the_unrolled_inner_loop():
    """A tiny network (theta) and a strongly convex inner problem in delta: the gradient obtained by
    backpropagating through 300 unrolled gradient steps equals the implicit one at their end point."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    params = list(net.parameters())
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    x2, y2 = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    inner = lambda d: F.cross_entropy(net(x + d), y) + 0.5 * d.pow(2).sum()
    outer = lambda d: F.cross_entropy(net(x2 + d), y2)
    lr, steps = 0.5, 300
    d = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    unrolled = d
    for _ in range(steps):
        unrolled = unrolled - lr * torch.autograd.grad(inner(unrolled), unrolled, create_graph=True)[0]
    reference = torch.autograd.grad(outer(unrolled), params)
    implicit = implicit_hypergradient(unrolled.detach(), params, outer, inner, lr, K=steps)
    for r, i in zip(reference, implicit):
        torch.testing.assert_close(i, r, rtol=1e-6, atol=1e-9)
    plain = torch.autograd.grad(outer(unrolled.detach()), params)     # ignoring delta's dependence on theta
    assert max(float((p - r).abs().max()) for p, r in zip(plain, reference)) > 1e-3


def test_universal_perturbation_raises_the_loss_within_its_l2_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    batches = [torch.rand(10, 1, 4, 4) for _ in range(3)]
    opts = IBAU.Options(norm_bound=0.5)
    delta = universal_perturbation(model, batches, opts)
    assert delta.shape == (1, 1, 4, 4) and float(delta.norm()) <= 0.5 + 1e-6
    x = torch.cat(batches)
    own = model(x).argmax(1)
    assert F.cross_entropy(model((x + delta).clamp(0, 1)), own) > F.cross_entropy(model(x), own)


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"defense\.ibau\.K"):
        from_dict({"defense": {"ibau": {"K": 0}}})
    with pytest.raises(ConfigError, match=r"defense\.ibau\.perturbed_share"):
        from_dict({"defense": {"ibau": {"perturbed_share": 0.0}}})


def test_ibau_through_the_pipeline_changes_the_model_and_caches(tmp_path, monkeypatch):
    cfg = from_dict({"data": {"name": "digits", "image_size": 8, "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.5, "ibau": {"rounds": 2, "K": 2, "batch_size": 16}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    d = experiment.defend(run, "ibau", progress=False)
    assert set(d.found) == {"delta", "rounds"} and len(d.found["rounds"]) == 2
    assert d.found["delta"].shape == (1, 1, 8, 8) and [r["epoch"] for r in d.history[1:]] == [1, 2]
    before = dict(run.model.state_dict())
    assert any(not torch.equal(v, before[k]) for k, v in d.model.state_dict().items() if v.is_floating_point())
    monkeypatch.setattr(IBAU, "run", lambda *a, **k: pytest.fail("the cached result was not reused"))
    again = experiment.defend(run, "ibau", progress=False)
    assert again.metrics == d.metrics and torch.equal(again.found["delta"], d.found["delta"])
