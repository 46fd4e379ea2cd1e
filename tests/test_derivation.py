"""Eq. (4) of the supplement, checked numerically (ftsam.derivation), and checked against the
perturbation ftsam.sam.SAM applies on a real (small) model and batch.

    max_{||T_w^-1 eps|| <= rho} eps . g   is attained at   eps* = rho T_w^2 g / ||T_w g||
"""
from __future__ import annotations

import pytest
import torch

from ftsam.config import DataConfig, ModelConfig, SAMConfig
from ftsam.data import load_dataset
from ftsam.derivation import (closed_form_eps, constraint_norm, ellipse_2d, linearised_gain,
                              projected_gradient_ascent, random_feasible, random_gains, sam_probe,
                              scale_to_boundary, scaling)
from ftsam.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
# (eta, adaptive): the authors' code, ASAM's reference setting, plain SAM (T_w = I)
SETTINGS = {"adaptive_eta0": (0.0, True), "adaptive_eta001": (0.01, True), "plain": (0.0, False)}


def problem(d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (w, g) in float64, with weights of very different sizes (so T_w matters)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen, dtype=F64) * torch.logspace(-2, 0, d, dtype=F64)
    g = torch.randn(d, generator=gen, dtype=F64)
    return w, g


def test_closed_form_matches_hand_computed_value():
    # the two-parameter case of tests/test_sam.py: T = (2, 1), T g = (3, -4), ||T g|| = 5,
    # eps = 0.5 * T^2 g / 5 = 0.1 * (6, -4)
    w, g = torch.tensor([2.0, -1.0], dtype=F64), torch.tensor([1.5, -4.0], dtype=F64)
    assert closed_form_eps(g, w, 0.5).tolist() == pytest.approx([0.6, -0.4], abs=1e-12)


@pytest.mark.parametrize("d", [2, 50])
@pytest.mark.parametrize("eta, adaptive", SETTINGS.values(), ids=SETTINGS.keys())
def test_closed_form_is_on_the_boundary(d, eta, adaptive):
    w, g = problem(d)
    eps = closed_form_eps(g, w, 1.5, eta, adaptive)
    assert constraint_norm(eps, w, eta, adaptive).item() == pytest.approx(1.5, rel=1e-12)


@pytest.mark.parametrize("d", [2, 50])
@pytest.mark.parametrize("eta, adaptive", SETTINGS.values(), ids=SETTINGS.keys())
def test_closed_form_beats_every_random_feasible_point(d, eta, adaptive):
    w, g = problem(d)
    best = linearised_gain(closed_form_eps(g, w, 1.5, eta, adaptive), g).item()
    gen = torch.Generator().manual_seed(1)
    for on_boundary in (False, True):
        pts = random_feasible(w, 1.5, 5000, eta, adaptive, generator=gen, on_boundary=on_boundary)
        assert (constraint_norm(pts, w, eta, adaptive) <= 1.5 * (1 + 1e-12)).all()
        assert linearised_gain(pts, g).max().item() < best
    # the plain-SAM direction g, rescaled onto the same constraint, is feasible and no better
    other = scale_to_boundary(g, w, 1.5, eta, adaptive)
    assert linearised_gain(other, g).item() <= best * (1 + 1e-12)


def test_random_points_fill_the_ball_and_are_reproducible():
    w, _ = problem(2)
    a = random_feasible(w, 1.0, 2000, generator=torch.Generator().manual_seed(3))
    b = random_feasible(w, 1.0, 2000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    r = constraint_norm(a, w)
    assert r.min() < 0.05 and r.max() > 0.99          # inside, not only on the boundary
    on = random_feasible(w, 1.0, 100, on_boundary=True)
    assert torch.allclose(constraint_norm(on, w), torch.ones(100, dtype=F64), rtol=1e-12)


def test_ellipse_2d_is_the_boundary():
    w = torch.tensor([2.0, 0.5], dtype=F64)
    pts = ellipse_2d(w, 0.8, eta=0.1)
    assert torch.allclose(constraint_norm(pts, w, 0.1), torch.full((len(pts),), 0.8, dtype=F64))


@pytest.mark.parametrize("d", [2, 50])
@pytest.mark.parametrize("eta, adaptive", SETTINGS.values(), ids=SETTINGS.keys())
def test_projected_gradient_ascent_reaches_the_closed_form(d, eta, adaptive):
    w, g = problem(d)
    eps = closed_form_eps(g, w, 1.5, eta, adaptive)
    pga = projected_gradient_ascent(g, w, 1.5, eta, adaptive, generator=torch.Generator().manual_seed(2))
    assert torch.linalg.vector_norm(pga.eps - eps) <= 1e-4 * torch.linalg.vector_norm(eps)
    assert linearised_gain(pga.eps, g).item() == pytest.approx(linearised_gain(eps, g).item(), rel=1e-4)


def test_pga_path_starts_inside_and_is_reproducible():
    w, g = problem(2)
    a = projected_gradient_ascent(g, w, 1.0, keep_path=True)
    b = projected_gradient_ascent(g, w, 1.0, keep_path=True)
    assert a.path.shape == (41, 2) and torch.equal(a.path, b.path)
    assert (constraint_norm(a.path, w) <= 1.0 + 1e-12).all()
    assert projected_gradient_ascent(g, w, 1.0).path is None


def test_eta0_with_zero_weights_leaves_them_unperturbed():
    # eta = 0 makes T_w singular where w = 0 (fresh BatchNorm biases): eps must be 0 there
    w = torch.tensor([0.0, 1.0, -2.0], dtype=F64)
    g = torch.tensor([5.0, 1.0, 1.0], dtype=F64)
    eps = closed_form_eps(g, w, 1.0)
    assert eps[0] == 0 and constraint_norm(eps, w).item() == pytest.approx(1.0)
    assert constraint_norm(torch.tensor([1e-3, 0.0, 0.0], dtype=F64), w) == torch.inf
    pga = projected_gradient_ascent(g, w, 1.0)
    assert torch.allclose(pga.eps, eps, atol=1e-10)
    assert scale_to_boundary(g, w, 1.0)[0] == 0


# ---- the real optimizer on a real model ---------------------------------------------------


@pytest.fixture(scope="module")
def digits_batch():
    train, _, info = load_dataset(DataConfig(name="digits"))     # 8x8, 1 channel
    return train.x[:32].float() / 255.0, train.y[:32], info


SAM_SETTINGS = {
    "authors_code": SAMConfig(rho=2.0, eta=0.0, adaptive=True, perturb="all"),
    "asam_reference": SAMConfig(rho=2.0, eta=0.01, adaptive=True, perturb="weights"),
    "plain_sam": SAMConfig(rho=0.5, adaptive=False, perturb="all"),
}


@pytest.mark.parametrize("sam_cfg", SAM_SETTINGS.values(), ids=SAM_SETTINGS.keys())
def test_closed_form_equals_sam_perturbation_on_preactresnet18(digits_batch, sam_cfg):
    x, y, info = digits_batch
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="preactresnet18", width=4), info).train()
    before = [p.detach().clone() for p in model.parameters()]
    probe = sam_probe(model, x, y, sam_cfg, label_smoothing=0.1)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))     # nothing applied
    if sam_cfg.perturb == "weights":
        assert all(n.endswith("weight") for n in probe.names)
    eps = closed_form_eps(probe.g, probe.w, sam_cfg.rho, sam_cfg.eta, sam_cfg.adaptive)
    # SAM computes in float32, the closed form here in float64
    assert (eps - probe.sam_eps).abs().max() <= 1e-5 * eps.abs().max()
    assert constraint_norm(eps, probe.w, sam_cfg.eta, sam_cfg.adaptive).item() == pytest.approx(sam_cfg.rho)
    best = linearised_gain(eps, probe.g).item()
    constraint = dict(rho=sam_cfg.rho, eta=sam_cfg.eta, adaptive=sam_cfg.adaptive)
    assert random_gains(probe.g, probe.w, n=64, on_boundary=True, **constraint).max().item() < best
    pga = projected_gradient_ascent(probe.g, probe.w, **constraint)
    assert linearised_gain(pga.eps, probe.g).item() == pytest.approx(best, rel=1e-4)
    if sam_cfg.adaptive:
        assert (probe.sam_eps[scaling(probe.w, sam_cfg.eta) == 0] == 0).all()
