"""ftsam's SAM against an independent implementation: ``pytorch_optimizer.SAM`` (pip
``pytorch-optimizer``, the optional ``bench`` dependencies; skipped when it is not installed).

How the two define the step (read from pytorch_optimizer 4.1.0, ``optimizer/sam.py``)::

    theirs, adaptive=True:  eps = rho * w^2 * g / (||w * g|| + 1e-12)       (no eta)
    ours:                   eps = rho * T^2 g / (||T g|| + 1e-12),  T = |w| + eta

so with eta = 0 they are the same map (w^2 = |w|^2), over the same parameters (ours with
``perturb="all"``: every parameter with a gradient; theirs: every parameter in the groups)
and with one global norm. Where they differ, on settings these tests do not compare:

- eta: theirs has none (T = |w|); ours adds eta (ASAM's eta; FT-SAM uses eta = 0).
- ``perturb="weights"`` (only parameters named ``*weight``) has no counterpart in theirs.
- Undoing the perturbation: theirs keeps a copy of w and copies it back (exact); ours
  subtracts eps (w + eps - eps, exact up to float round-off, a few ulp of w).
- Precision: theirs returns the global norm as float32 whatever the parameters' dtype
  (``get_global_gradient_norm``), so even in float64 the two agree to ~1e-7 relative, not
  to float64 round-off; and theirs computes ``(w^2 * g) * scale``, ours
  ``((g * T) * T) * scale``. The comparisons below are allclose, not bitwise.
- BatchNorm: theirs leaves the second pass to the caller (``disable_running_stats`` sets
  momentum to 0 but does not restore ``num_batches_tracked``); ours has ``frozen_bn``,
  used here for both so that only the optimizers differ.
- On CPU theirs loops over parameters unless ``foreach=True``; both are compared.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

from ftsam.config import ModelConfig  # noqa: E402
from ftsam.data import DatasetInfo  # noqa: E402
from ftsam.models import build_model  # noqa: E402
from ftsam.sam import SAM, frozen_bn  # noqa: E402

RHO, LR, MOMENTUM, WD = 2.0, 0.05, 0.9, 5e-4


def small_net(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).to(dtype).train()


def batch(dtype=torch.float64, n=16, c=3, size=8, classes=5):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, c, size, size, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def ours_and_theirs(model, adaptive=True, foreach=None):
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    opt = torch.optim.SGD(a.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    ours = SAM(opt, a, RHO, eta=0.0, adaptive=adaptive, perturb="all")
    theirs = pytorch_optimizer.SAM(b.parameters(), torch.optim.SGD, rho=RHO, adaptive=adaptive, foreach=foreach,
                                   lr=LR, momentum=MOMENTUM, weight_decay=WD)
    return a, ours, b, theirs


def loss(model, x, y):
    return F.cross_entropy(model(x), y)


def assert_params_close(a, b, rtol, atol):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "plain"])
@pytest.mark.parametrize("foreach", [None, True], ids=["loop", "foreach"])
def test_perturbation_equals_reference_with_eta_0(adaptive, foreach):
    x, y = batch()
    a, ours, b, theirs = ours_and_theirs(small_net(), adaptive, foreach)
    loss(a, x, y).backward()
    loss(b, x, y).backward()
    eps = {id(p): e for p, e in ours.perturbation()}
    w = [p.detach().clone() for p in b.parameters()]
    ours.ascent_step()
    theirs.first_step(zero_grad=True)
    for p, q, w0 in zip(a.parameters(), b.parameters(), w):
        torch.testing.assert_close(q - w0, eps[id(p)], rtol=1e-6, atol=1e-12)   # their eps, ours
    assert_params_close(a, b, rtol=1e-6, atol=1e-7)                               # w + eps
    assert all(p.grad is None for p in a.parameters()) and all(p.grad is None for p in b.parameters())


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "plain"])
def test_sam_steps_equal_reference_with_eta_0(adaptive):
    # several full steps with momentum and weight decay: the trajectories stay together
    x, y = batch()
    a, ours, b, theirs = ours_and_theirs(small_net(), adaptive)
    for _ in range(5):
        loss(a, x, y).backward()
        ours.ascent_step()
        with frozen_bn(a):
            loss(a, x, y).backward()
        ours.descent_step()

        loss(b, x, y).backward()
        theirs.first_step(zero_grad=True)
        with frozen_bn(b):
            loss(b, x, y).backward()
        theirs.second_step(zero_grad=True)
    assert_params_close(a, b, rtol=1e-6, atol=1e-7)
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")


def test_preactresnet_float32_step_equals_reference():
    # the offline default's model in float32, one step: equal up to float32 round-off
    info = DatasetInfo("digits", 1, 16, 10, (0.5,), (0.5,))
    torch.manual_seed(0)
    model = build_model(ModelConfig("preactresnet18", 8), info).train()
    x, y = batch(torch.float32, n=8, c=1, size=16, classes=10)
    a, ours, b, theirs = ours_and_theirs(model, True, foreach=True)
    for m, step1, step2 in ((a, ours.ascent_step, ours.descent_step),
                            (b, lambda: theirs.first_step(zero_grad=True), lambda: theirs.second_step(zero_grad=True))):
        loss(m, x, y).backward()
        step1()
        with frozen_bn(m):
            loss(m, x, y).backward()
        step2()
    assert_params_close(a, b, rtol=1e-4, atol=1e-6)


def test_eta_is_where_the_two_differ():
    # with eta > 0 ours is ASAM's T = |w| + eta; theirs has no eta, so the two part ways
    x, y = batch()
    a, _, b, theirs = ours_and_theirs(small_net())
    ours = SAM(torch.optim.SGD(a.parameters(), lr=LR), a, RHO, eta=0.01)
    loss(a, x, y).backward()
    loss(b, x, y).backward()
    ours.ascent_step()
    theirs.first_step(zero_grad=True)
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert diff > 1e-4
