"""SAM's step-to-step buffers (T_w when eta > 0) and the in-place eps: the training step
gives what ``perturbation()`` gives, the buffers follow the parameters when those change
dtype or memory format, and a channels_last model under bf16 autocast (the CUDA path of
``fit``, run here on the CPU) steps cleanly."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ftsam.sam import SAM, frozen_bn


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).train()


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 6, 6, generator=g).to(dtype), torch.randint(0, 3, (8,), generator=g)


def sam_step(model, sam, x, y):
    F.cross_entropy(model(x), y).backward()
    sam.ascent_step()
    with frozen_bn(model):
        F.cross_entropy(model(x), y).backward()
    sam.descent_step()


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_ascent_adds_exactly_what_perturbation_returns_step_after_step(eta):
    model = net()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model, 2.0, eta=eta)
    x, y = data()
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        eps = sam.perturbation()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))   # grads left alone
        w = [p.detach().clone() for p in model.parameters()]
        sam.ascent_step()
        for (p, e), w0 in zip(eps, w):
            assert torch.equal(p.detach(), w0 + e)
        with frozen_bn(model):
            F.cross_entropy(model(x), y).backward()
        sam.descent_step()
    assert (len(sam._scratch) > 0) == (eta > 0)     # T_w needs its own buffers only when eta > 0


def test_buffers_follow_the_parameters_when_they_change_dtype():
    model = net()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), model, 2.0, eta=0.01)
    sam_step(model, sam, *data())
    model.double()                                   # same Parameter objects, new float64 data
    sam_step(model, sam, *data(torch.float64))
    assert all(b.dtype == torch.float64 for b in sam._scratch.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_channels_last_model_under_bf16_autocast_steps_like_float32(eta):
    # what fit does on CUDA (channels_last model and batches, bf16 autocast), on the CPU
    ref, model = net(), net().to(memory_format=torch.channels_last)
    x, y = data()
    opt_ref, opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, model))
    sam_ref, sam = SAM(opt_ref, ref, 1.0, eta=eta), SAM(opt, model, 1.0, eta=eta)
    w0 = copy.deepcopy(ref.state_dict())
    sam_step(ref, sam_ref, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sam_step(model, sam, x.contiguous(memory_format=torch.channels_last), y)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(b.stride() == p.stride() for p in model.parameters() for b in [sam._scratch.get(id(p))] if b is not None)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.isfinite(a.float()).all(), k
        if not a.is_floating_point():
            continue
        da, db = (a - w0[k]).flatten().double(), (b - w0[k]).flatten().double()
        if db.norm() > 1e-4:        # moved in float32 (a conv bias before BN has no gradient: round-off only)
            assert torch.dot(da, db) / (da.norm() * db.norm()) > 0.9, k   # bf16 rounds; the direction stays
