"""Input-aware dynamic backdoor: per-input triggers, the blend, the mask stage, the batch
poisoning with cross-trigger samples, the diversity loss, and its trainable state in fit's
checkpoint and in the cached run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ftsam import experiment
from ftsam.attacks import build_attack
from ftsam.attacks.input_aware import InputAware, TriggerNet, distance, diversity_loss
from ftsam.config import AttackConfig, ConfigError, DataConfig, SAMConfig, TrainConfig, from_dict
from ftsam.data import DatasetInfo, ImageSet, load_dataset
from ftsam.io import load_tensors
from ftsam.models.preact_resnet import PreActResNet18
from ftsam.defenses.ft_sam import sam_step
from ftsam.train import fit

TINY = {"channels": 4, "mask_epochs": 0}


def info(channels=1, size=16, classes=10) -> DatasetInfo:
    return DatasetInfo("test", channels, size, classes, (0.5,) * channels, (0.5,) * channels)


def attack(channels=1, size=16, seed=0, ratio=0.1, mode="all2one", target=0, train=None, cache_dir=None, **options):
    a = build_attack(AttackConfig(name="input_aware", target=target, mode=mode, poison_ratio=ratio,
                                  options={**TINY, **options}), info(channels, size))
    if train is None:
        g = torch.Generator().manual_seed(seed + 1)
        train = ImageSet(torch.randint(0, 256, (40, channels, size, size), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (40,), generator=g))
    a.prepare(train, seed=seed, cache_dir=cache_dir, key="k")
    return a


@pytest.fixture(scope="module")
def digits():
    train, _, _ = load_dataset(DataConfig(name="digits", image_size=16))
    return train.subset(torch.arange(384))


def test_registered_with_published_defaults():
    a = build_attack(AttackConfig(name="input_aware"), info(3, 32))
    assert (type(a).name, type(a).title) == ("input_aware", "Input-aware")
    assert a.on_the_fly and a.trainable
    o = a.opts
    assert (o.p_cross, o.lambda_div, o.lambda_norm, o.mask_density, o.mask_epochs, o.lr_g, o.lr_m) == \
        (0.1, 1.0, 100.0, 0.032, 25, 0.01, 0.01)
    # the official nets by image size: CIFAR-10/GTSRB (32, 3), MNIST (16, 2); smaller below 28 pixels
    assert (a.channels, a.steps) == (32, 3)
    assert InputAware.architecture(28) == (16, 2) and InputAware.architecture(16) == (8, 2)
    assert InputAware.architecture(16, 12, 1) == (12, 1)


@pytest.mark.parametrize("options", [{"p_cross": 1.0}, {"p_cross": -0.1}, {"lambda_div": -1}, {"mask_density": 0},
                                     {"mask_epochs": -1}, {"mask_batch_size": 1}, {"lr_g": 0}, {"steps": 3},
                                     {"g_schedule": "cosine"}])
def test_bad_options(options):
    with pytest.raises(ConfigError):    # steps 3 on 12-pixel images: not divisible by 8
        build_attack(AttackConfig(name="input_aware", options=options), info(1, 12))


def test_needs_prepare():
    a = build_attack(AttackConfig(name="input_aware"), info())
    with pytest.raises(RuntimeError, match="prepare"):
        a.trigger(torch.rand(2, 1, 16, 16))


def test_generator_shapes_and_range():
    for c_out, steps in ((3, 3), (1, 2)):
        net = TriggerNet(3, c_out, 4, steps)
        out = net(torch.randn(5, 3, 32, 32) * 3)
        assert out.shape == (5, c_out, 32, 32) and out.min() >= 0 and out.max() <= 1
    m = TriggerNet.threshold(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(m, torch.tensor([0.0, 0.5, 1.0]), atol=1e-8, rtol=0)


STAGE1 = {"mask_epochs": 8, "mask_batch_size": 32}


@pytest.fixture(scope="module")
def mask_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("resources")


@pytest.fixture(scope="module")
def stage1(digits, mask_cache):
    """An attack after a short stage 1 (96 steps), cached in ``mask_cache``."""
    return attack(train=digits, cache_dir=mask_cache, **STAGE1)


@pytest.fixture(scope="module")
def trained(digits, stage1, mask_cache):
    """The same mask net (read from the cache) and 48 steps of stage 2 with a tiny model."""
    a = attack(train=digits, cache_dir=mask_cache, ratio=0.125, p_cross=0.125, **STAGE1)
    fit(tiny_model(), digits.subset(torch.arange(256)), TrainConfig(epochs=3, batch_size=16, lr=0.05), seed=0,
        batch_hook=a.poison_batch, trainable=a, progress=False)
    return a


def test_trigger_is_input_specific(trained, digits):
    a = trained
    x = digits.x[300:302].float() / 255
    with torch.no_grad():
        a.netG.eval()
        p, m = a.netG(x), a.masks(x)
    assert (p[0] - p[1]).abs().max() > 0.05 and (m[0] - m[1]).abs().max() > 0.5
    # the trigger of an image does not depend on the batch it comes in (eval mode)
    torch.testing.assert_close(a.trigger(x)[:1], a.trigger(x[:1]))
    # and another image's trigger on it is not its own trigger
    assert (a.cross_trigger(x[:1], x[1:]) - a.trigger(x[:1])).abs().max() > 0.05
    xu = digits.x[300:310]
    bd = a.apply(xu)
    assert bd.dtype == torch.uint8 and bd.shape == xu.shape and not torch.equal(bd, xu)


def test_blend_is_x_where_mask_is_0_and_pattern_where_1():
    a = attack(channels=3, size=16)
    x = torch.rand(4, 3, 16, 16)
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 5:9, 2:7] = 1.0
    a.masks = lambda _: mask                  # a hand-made mask
    out = a.trigger(x)
    with torch.no_grad():
        a.netG.eval()
        pattern = a.netG(x)
    on = mask.expand_as(x).bool()
    assert torch.equal(out[~on], x[~on])
    torch.testing.assert_close(out[on], pattern[on], atol=1e-6, rtol=0)
    # half-way: the mean of the two
    torch.testing.assert_close(InputAware.blend(x, pattern, torch.full_like(mask, 0.5)), (x + pattern) / 2)
    assert out.min() >= 0 and out.max() <= 1


def test_mask_stage_reaches_the_density_target(digits, stage1, mask_cache):
    a = stage1
    with torch.no_grad():
        m = a.masks(digits.x[:200].float() / 255)
    density = float(m.mean())
    assert 0.5 * 0.032 < density < 2 * 0.032, density          # untrained: about 0.5
    assert not a.netM.training and not any(p.requires_grad for p in a.netM.parameters())
    # near-binary (the threshold), and different for different images (the diversity term)
    assert ((m < 0.05) | (m > 0.95)).float().mean() > 0.9
    on = m > 0.5
    assert (on[:100] != on[100:]).flatten(1).any(1).float().mean() > 0.9
    # cached by the stage-1 options: read back, not retrained
    assert len(list(mask_cache.glob("input_aware-mask-*.safetensors"))) == 1

    def boom(*_args, **_kw):
        raise AssertionError("stage 1 ran again")
    b = build_attack(a.cfg, a.info)
    b.train_mask = boom
    b.prepare(digits, seed=0, cache_dir=mask_cache, key="k")
    for (k, u), (_, v) in zip(a.netM.state_dict().items(), b.netM.state_dict().items()):
        assert torch.equal(u, v), k
    for changed in ({"seed": 1}, {"key": "other"}):                # another seed or data: rebuilt
        c = build_attack(a.cfg, a.info)
        c.train_mask = boom
        with pytest.raises(AssertionError, match="again"):
            c.prepare(digits, **({"seed": 0, "cache_dir": mask_cache, "key": "k"} | changed))
    c = attack(train=digits, cache_dir=mask_cache, **(STAGE1 | {"lambda_norm": 10.0}))   # a stage-1 option
    assert len(list(mask_cache.glob("input_aware-mask-*.safetensors"))) == 2


@pytest.mark.parametrize("batch, mode", [(64, "all2one"), (37, "all2one"), (50, "all2all")])
def test_poison_batch_labels_and_samples(batch, mode):
    a = attack(mode=mode, ratio=0.1, p_cross=0.2)
    x, y = torch.rand(batch, 1, 16, 16), torch.randint(1, 10, (batch,))     # no sample of target 0
    nb, nc = int(batch * 0.1), int(batch * 0.2)
    assert a.batch_counts(batch) == (nb, nc)
    xb, yb = a.poison_batch(x, y, torch.Generator().manual_seed(3))
    assert xb.shape == x.shape
    want = torch.zeros_like(y[:nb]) if mode == "all2one" else (y[:nb] + 1) % 10
    assert torch.equal(yb[:nb], want)                                       # attack samples: the target
    assert torch.equal(yb[nb:], y[nb:])                                     # cross and clean: their labels
    assert torch.equal(xb[nb + nc:], x[nb + nc:])                           # the rest is clean
    # attack samples carry their own trigger, cross samples another image's (same netG pass)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(3))
    src = torch.cat([x[:nb], x[perm][nb:nb + nc]])
    with torch.no_grad():
        p, m = a.netG(src), a.masks(src)
    torch.testing.assert_close(xb[:nb], a.blend(x[:nb], p[:nb], m[:nb]))
    torch.testing.assert_close(xb[nb:nb + nc], a.blend(x[nb:nb + nc], p[nb:], m[nb:]))
    assert not torch.allclose(xb[:nb + nc], x[:nb + nc])
    # the batch keeps the graph to netG (not to netM), and the diversity loss is there once
    extra = a.extra_loss()
    assert extra is not None and a.extra_loss() is None
    (xb.sum() + extra).backward()
    assert all(q.grad is not None for q in a.netG.parameters() if q.requires_grad)
    assert all(q.grad is None for q in a.netM.parameters())
    # deterministic per generator
    xb2, yb2 = a.poison_batch(x, y, torch.Generator().manual_seed(3))
    torch.testing.assert_close(xb2, xb)
    assert torch.equal(yb2, yb)


def test_diversity_loss_by_hand():
    x1 = torch.zeros(2, 1, 2, 2)
    x2 = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5)])      # rms distances 1 and 0.5
    g1 = torch.zeros(2, 1, 2, 2)
    g2 = torch.zeros(2, 1, 2, 2)
    g2[0, 0, 0, 0] = 1.0                          # rms 0.5
    g2[1] = 0.25                                  # rms 0.25
    torch.testing.assert_close(distance(x1, x2), torch.tensor([1.0, 0.5]))
    got = diversity_loss(x1, x2, g1, g2, eps=0.0)
    torch.testing.assert_close(got, torch.tensor((1.0 / 0.5 + 0.5 / 0.25) / 2))
    torch.testing.assert_close(diversity_loss(x1, x2, g1, g2, eps=0.5), torch.tensor((1.0 / 1.0 + 0.5 / 0.75) / 2))
    # an image paired with itself: 0, with a finite gradient
    g = torch.rand(1, 1, 2, 2, requires_grad=True)
    loss = diversity_loss(x1[:1], x1[:1], g, g * 1.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(g.grad).all()


def test_batch_diversity_loss_is_the_formula():
    a = attack(ratio=0.25, p_cross=0.25, lambda_div=2.0)
    x, y = torch.rand(16, 1, 16, 16), torch.randint(1, 10, (16,))
    xb, _ = a.poison_batch(x, y, torch.Generator().manual_seed(0))
    extra = a.extra_loss()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    x2 = x[perm]
    with torch.no_grad():
        p = a.netG(torch.cat([x[:4], x2[4:8]]))

    def norm(t):   # the normalised domain, mean 0.5 and std 0.5
        return (t - 0.5) / 0.5
    d_img = (norm(x[:4]) - norm(x2[4:8])).pow(2).mean((1, 2, 3)).sqrt()
    d_pat = (norm(p[:4]) - norm(p[4:])).pow(2).mean((1, 2, 3)).sqrt()
    torch.testing.assert_close(extra.detach(), 2.0 * (d_img / (d_pat + 1e-7)).mean())


# ---- training with fit: resume and cached runs ---------------------------------------------
CFG = TrainConfig(epochs=3, batch_size=16, lr=0.05, schedule="cosine", crop_padding=1, hflip=False)


class Interrupted(Exception):
    pass


def tiny_model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return PreActResNet18(1, 10, (0.5,), (0.5,), width=2)


def _fit(a, model, data, ckpt=None, fail_at=None):
    calls = []

    def ev(m):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise Interrupted
        return {"n": float(len(calls))}
    return fit(model, data, CFG, seed=1, batch_hook=a.poison_batch, trainable=a, evaluate=ev, checkpoint=ckpt,
               progress=False)


def test_fit_trains_the_generator_and_resumes_exactly(tmp_path, digits):
    data = digits.subset(torch.arange(64))
    ref_attack = attack(train=data, ratio=0.125, p_cross=0.125)
    g0 = {k: v.clone() for k, v in ref_attack.netG.state_dict().items()}
    m0 = {k: v.clone() for k, v in ref_attack.netM.state_dict().items()}
    ref = tiny_model()
    _fit(ref_attack, ref, data)
    assert any(not torch.equal(g0[k], v) for k, v in ref_attack.netG.state_dict().items())   # netG trained
    assert all(torch.equal(m0[k], v) for k, v in ref_attack.netM.state_dict().items())       # netM frozen
    assert ref_attack.opt_g.param_groups[0]["lr"] < 0.01     # followed the model's cosine schedule

    ckpt = tmp_path / "state.safetensors"
    first = attack(train=data, ratio=0.125, p_cross=0.125)
    with pytest.raises(Interrupted):
        _fit(first, tiny_model(), data, ckpt, fail_at=2)
    assert any(k.startswith("extra.netG.") for k in load_tensors(ckpt))
    assert any(k.startswith("extra.optG.") for k in load_tensors(ckpt))
    resumed_attack = attack(train=data, ratio=0.125, p_cross=0.125)
    resumed = tiny_model(5)
    _fit(resumed_attack, resumed, data, ckpt)
    for (k, u), (_, v) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(u, v), k
    for k, v in ref_attack.state_tensors().items():
        assert torch.equal(v, resumed_attack.state_tensors()[k]), k
    x = data.x[:8]
    assert torch.equal(ref_attack.apply(x), resumed_attack.apply(x))


def test_fit_refuses_sam_with_a_trainable_hook(digits):
    a = attack(train=digits)
    m = tiny_model()
    with pytest.raises(ValueError, match="SAM"):
        fit(m, digits.subset(torch.arange(32)), CFG, sam_step(m, CFG, SAMConfig(rho=1.0)), seed=0,
            batch_hook=a.poison_batch, trainable=a, progress=False)


def test_cached_run_reloads_the_generator(tmp_path, monkeypatch):
    cfg = from_dict({"seed": 0, "data": {"name": "digits"}, "model": {"name": "preactresnet18", "width": 2},
                     "attack": {"name": "input_aware", "options": {"channels": 4, "mask_epochs": 1}},
                     "attack_train": {"epochs": 1, "batch_size": 64, "lr": 0.05}})
    first = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    assert (first.run_dir / "attack.safetensors").is_file()
    assert not (first.run_dir / "train_state.safetensors").exists()

    def no_training(*_a, **_kw):
        raise AssertionError("the cached run was trained again")
    monkeypatch.setattr(experiment, "fit", no_training)
    second = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    assert torch.equal(second.test_bd.x, first.test_bd.x)
    assert torch.equal(second.test_bd.y_target, first.test_bd.y_target)
    assert second.metrics == first.metrics
    for k, v in first.attack.state_tensors().items():
        assert torch.equal(v, second.attack.state_tensors()[k]), k
    # the test set is the non-target images with their own trigger, made by the trained generator
    keep = first.test.y != 0
    assert torch.equal(first.test_bd.x, first.attack.apply(first.test.x[keep]))
    assert torch.equal(first.test_bd.y_true, first.test.y[keep])
