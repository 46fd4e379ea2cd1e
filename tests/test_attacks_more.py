"""The published attacks beyond BadNets and Blended: each one's defining property."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ftsam.attacks import build_attack
from ftsam.config import AttackConfig, ConfigError
from ftsam.data import DatasetInfo, ImageSet

import synthetic                      # tests/synthetic.py
from synthetic import images


def info(channels=3, size=32, classes=10) -> DatasetInfo:
    return synthetic.info(channels, size, classes)


def imageset(n=200, classes=10, channels=3, size=16, seed=0) -> ImageSet:
    return synthetic.imageset(n, classes, channels, size, seed)


# ---- SIG -------------------------------------------------------------------------------
@pytest.mark.parametrize("delta, f", [(20.0, 6), (40.0, 6), (30.0, 3)])
@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32)])
def test_sig_adds_exactly_the_column_sinusoid(delta, f, channels, size):
    attack = build_attack(AttackConfig(name="sig", options={"delta": delta, "frequency": f}), info(channels, size))
    x = torch.rand(4, channels, size, size) * 0.5 + 0.25          # far from 0 and 1: no clipping
    added = attack.trigger(x) - x
    j = torch.arange(size, dtype=torch.float64)
    want = delta / 255.0 * torch.sin(2 * math.pi * j * f / size)
    torch.testing.assert_close(added.double(), want.expand_as(added), atol=1e-6, rtol=0)
    # on uint8 images: the same sinusoid in pixel units, up to rounding
    xu = images(3, channels, size, lo=60, hi=190)
    diff = attack.apply(xu).double() - xu.double()
    assert (diff - delta * torch.sin(2 * math.pi * j * f / size)).abs().max() <= 0.5 + 1e-9


def test_sig_clips_to_the_valid_range():
    attack = build_attack(AttackConfig(name="sig", options={"delta": 40}), info(1, 16))
    out = attack.trigger(torch.cat([torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)]))
    assert out.min() >= 0 and out.max() <= 1
    s = attack.signal(16)
    torch.testing.assert_close(out[0, 0, 0], s.clamp(min=0))
    torch.testing.assert_close(out[1, 0, 0], 1 + s.clamp(max=0))


@pytest.mark.parametrize("ratio_of, ratio, expected", [("dataset", 0.05, 10), ("target_class", 0.5, None)])
def test_sig_poisons_only_the_target_class_and_keeps_labels(ratio_of, ratio, expected):
    train = imageset(200, channels=1)
    target = 3
    n_target = int((train.y == target).sum())
    attack = build_attack(AttackConfig(name="sig", target=target, poison_ratio=ratio,
                                       options={"ratio_of": ratio_of}), info(1, 16))
    p = attack.poison_trainset(train, seed=2)
    idx = p.poison_index
    assert len(idx) == (expected if expected is not None else round(ratio * n_target))
    assert (train.y[idx] == target).all()
    assert torch.equal(p.data.y, train.y)                         # clean label: no label changes
    assert torch.equal(p.data.x[idx], attack.apply(train.x[idx]))
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(p.data.x[rest], train.x[rest])


def test_sig_test_set_is_the_triggered_non_target_images():
    test = imageset(100, channels=1, seed=4)
    attack = build_attack(AttackConfig(name="sig", target=1), info(1, 16))
    bd = attack.poison_testset(test)
    keep = test.y != 1
    assert torch.equal(bd.x, attack.apply(test.x[keep])) and (bd.y_target == 1).all()


def test_sig_ratio_beyond_the_target_class_raises_with_a_hint():
    y = torch.tensor([0] * 10 + [1] * 90)
    train = ImageSet(images(100, 1, 16), y)
    with pytest.raises(ConfigError, match="ratio_of"):
        build_attack(AttackConfig(name="sig", target=0, poison_ratio=0.2), info(1, 16)).poison_trainset(train, 0)
    ok = build_attack(AttackConfig(name="sig", target=0, poison_ratio=0.5, options={"ratio_of": "target_class"}),
                      info(1, 16)).poison_trainset(train, 0)
    assert len(ok.poison_index) == 5


@pytest.mark.parametrize("options", [{"delta": 0}, {"frequency": 0}, {"ratio_of": "class"}])
def test_sig_bad_options(options):
    with pytest.raises(ConfigError):
        build_attack(AttackConfig(name="sig", options=options), info())


def test_sig_is_all2one_only():
    with pytest.raises(ConfigError, match="all2one"):
        build_attack(AttackConfig(name="sig", mode="all2all"), info())


# ---- WaNet -----------------------------------------------------------------------------
def wanet(size=32, channels=3, seed=0, **options):
    attack = build_attack(AttackConfig(name="wanet", poison_ratio=0.1, options=options), info(channels, size))
    attack.set_seed(seed)
    return attack


def test_wanet_published_defaults():
    o = build_attack(AttackConfig(name="wanet"), info()).opts
    assert (o.k, o.s, o.grid_rescale, o.cross_ratio) == (4, 0.5, 1.0, 2.0)


@pytest.mark.parametrize("size", [16, 32])
def test_wanet_field_is_the_official_one_and_bounded_by_s(size):
    attack = wanet(size)
    noise = attack.noise_grid
    assert noise.shape == (1, size, size, 2)
    # the k x k control values have mean |.| = 1 and the upsampling passes through them
    g = torch.Generator().manual_seed(0)
    ins = torch.rand(1, 2, 4, 4, generator=g) * 2 - 1
    ins = ins / ins.abs().mean()
    corners = noise[0, [0, 0, -1, -1], [0, -1, 0, -1]]                   # [4, 2]
    torch.testing.assert_close(corners, ins[0][:, [0, 0, -1, -1], [0, -1, 0, -1]].T)
    disp = attack.grid - attack.identity_grid(size, size)
    # displacement (normalised coordinates) = s * noise / H before the clamp, never more after it
    assert (disp.abs() <= 0.5 * noise.abs() / size + 1e-6).all()
    inside = (attack.grid.abs() < 1).all(-1)
    torch.testing.assert_close(disp[inside], (0.5 * noise / size)[inside], atol=1e-6, rtol=0)
    assert attack.grid.abs().max() <= 1


def test_wanet_field_is_smooth():
    attack = wanet(32)
    d = (attack.opts.s * attack.noise_grid / 32)[0]     # the field before the clamp to the image
    rough = torch.randn_like(d) * d.abs().max()
    def second(t):
        return torch.maximum((t[2:] - 2 * t[1:-1] + t[:-2]).abs().max(), (t[:, 2:] - 2 * t[:, 1:-1] + t[:, :-2]).abs().max())
    assert second(d) < 0.15 * d.abs().max()       # a white-noise field: > 1
    assert second(rough) > 1.0 * d.abs().max()


def test_wanet_identity_when_s_is_zero():
    attack = wanet(16, s=0.0)
    x = torch.rand(5, 3, 16, 16)
    torch.testing.assert_close(attack.trigger(x), x, atol=1e-5, rtol=0)
    xu = images(4, 3, 16)
    assert torch.equal(attack.apply(xu), xu)


def test_wanet_trigger_is_the_grid_sample():
    attack = wanet(16)
    x = torch.rand(3, 3, 16, 16)
    want = F.grid_sample(x, attack.grid.expand(3, -1, -1, -1), align_corners=True)
    torch.testing.assert_close(attack.trigger(x), want)
    assert (attack.trigger(x) - x).abs().max() > 0.05


def test_wanet_field_depends_on_the_seed_only():
    a, b, c = wanet(16, seed=1), wanet(16, seed=1), wanet(16, seed=2)
    assert torch.equal(a.grid, b.grid) and not torch.equal(a.grid, c.grid)
    d = build_attack(AttackConfig(name="wanet"), info(3, 16))
    d.prepare(imageset(20), seed=1, cache_dir=None, key="k")
    assert torch.equal(d.grid, a.grid)


def test_wanet_needs_prepare():
    with pytest.raises(RuntimeError, match="prepare"):
        build_attack(AttackConfig(name="wanet"), info(3, 16)).trigger(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("batch", [64, 128, 37])
def test_wanet_poison_batch(batch):
    attack = wanet(16)
    x, y = torch.rand(batch, 3, 16, 16), torch.randint(1, 10, (batch,))     # no sample of target 0
    num_bd, num_cross = int(batch * 0.1), int(batch * 0.1) * 2
    assert attack.batch_counts(batch) == (num_bd, num_cross)
    xb, yb = attack.poison_batch(x, y, torch.Generator().manual_seed(3))
    assert xb.shape == x.shape and torch.equal(yb[num_bd:], y[num_bd:])
    assert (yb[:num_bd] == 0).all() and int((yb != y).sum()) == num_bd          # exactly the poisoned fraction
    torch.testing.assert_close(xb[:num_bd], attack.trigger(x[:num_bd]))
    cross = xb[num_bd:num_bd + num_cross]
    assert not torch.allclose(cross, x[num_bd:num_bd + num_cross])              # noise-warped
    assert not torch.allclose(cross, attack.trigger(x[num_bd:num_bd + num_cross]))
    assert torch.equal(xb[num_bd + num_cross:], x[num_bd + num_cross:])          # the rest is clean
    # deterministic per generator
    xb2, yb2 = attack.poison_batch(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(xb, xb2) and torch.equal(yb, yb2)
    xb3, _ = attack.poison_batch(x, y, torch.Generator().manual_seed(4))
    assert not torch.equal(xb, xb3) and torch.equal(xb3[:num_bd], xb[:num_bd])


def test_wanet_cross_samples_stay_within_one_pixel_of_the_field():
    attack = wanet(16)
    # with a linear ramp image, grid_sample reads the coordinate back: cross grids = grid + U(-1,1)/H
    ramp = torch.linspace(0, 1, 16).expand(1, 1, 16, 16).repeat(20, 1, 1, 1)
    x, y = ramp, torch.randint(1, 10, (20,))
    xb, _ = attack.poison_batch(x.repeat(1, 1, 1, 1), y, torch.Generator().manual_seed(0))
    warped = attack.trigger(ramp[:1])
    off = (xb[2:6] - warped).abs().max()   # samples 2..5 are the cross samples for batch 20
    assert 0 < off <= (1 / 16) * (15 / 2) / 15 + 1e-5


def test_wanet_all2all_and_no_fixed_poison_set():
    attack = build_attack(AttackConfig(name="wanet", mode="all2all", poison_ratio=0.25), info(3, 16))
    attack.set_seed(0)
    train = imageset(100)
    p = attack.poison_trainset(train, seed=0)
    assert len(p.poison_index) == 0 and torch.equal(p.data.x, train.x) and torch.equal(p.data.y, train.y)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    _, yb = attack.poison_batch(x, y, torch.Generator().manual_seed(0))
    assert yb[:2].tolist() == [1, 2] and torch.equal(yb[2:], y[2:])


@pytest.mark.parametrize("options", [{"k": 1}, {"s": -0.1}, {"cross_ratio": -1}, {"grid_rescale": 0}])
def test_wanet_bad_options(options):
    with pytest.raises(ConfigError):
        build_attack(AttackConfig(name="wanet", options=options), info())


# ---- CLA -------------------------------------------------------------------------------
class Spy:
    """A clean_model() that counts its calls and returns a tiny fixed linear model."""

    def __init__(self, channels=1, size=16, classes=10):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * size * size, classes))
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.model


def cla(target=0, ratio=0.05, **options):
    return build_attack(AttackConfig(name="cla", target=target, poison_ratio=ratio, options=options), info(1, 16))


def test_cla_pattern_is_the_papers_four_corners():
    attack = cla()
    p = attack.pattern
    assert int((p != 0).sum()) == 36
    # as BackdoorBench lists it: the bottom corners repeat the top ones, the right ones mirror the left
    assert torch.equal(p[:3], p[-3:]) and torch.equal(p, p.flip(1))
    assert p[-3:, -3:].tolist() == [[-1, -1, 1], [-1, 1, -1], [1, -1, 1]]
    br = cla(corners="bottom_right").pattern
    assert int((br != 0).sum()) == 9 and torch.equal(br[-3:, -3:], p[-3:, -3:])
    out = attack.apply(torch.full((1, 1, 16, 16), 128, dtype=torch.uint8))[0, 0]
    assert int((p > 0).sum()) == 16 and int((p < 0).sum()) == 20
    assert (out[p > 0] == 255).all() and (out[p < 0] == 0).all()
    assert (out[p == 0] == 128).all()


def test_cla_needs_prepare():
    with pytest.raises(RuntimeError, match="prepare"):
        cla().poison_trainset(imageset(50, channels=1), seed=0)


def test_cla_pgd_within_eps_and_labels_untouched(tmp_path):
    train = imageset(200, channels=1)
    spy = Spy()
    attack = cla(target=3, ratio=0.05)
    attack.prepare(train, seed=0, cache_dir=tmp_path, key="k", clean_model=spy)
    assert spy.calls == 1
    target_idx = (train.y == 3).nonzero().flatten()
    delta = attack.adv.int() - train.x[target_idx].int()
    assert delta.abs().max() <= 16 and delta.abs().max() >= 15     # within eps = 16/255, and using it
    # the perturbation raises the loss of the true label on the clean model
    with torch.no_grad():
        before = F.cross_entropy(spy.model(train.x[target_idx].float() / 255), train.y[target_idx])
        after = F.cross_entropy(spy.model(attack.adv.float() / 255), train.y[target_idx])
    assert after > before
    p = attack.poison_trainset(train, seed=1)
    idx = p.poison_index
    assert len(idx) == 10 and (train.y[idx] == 3).all()
    assert torch.equal(p.data.y, train.y)                          # clean label
    pos = torch.searchsorted(target_idx, idx)
    assert torch.equal(p.data.x[idx], attack.apply(attack.adv[pos]))
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(p.data.x[rest], train.x[rest])
    # the test-time trigger is the pattern alone, no perturbation
    test = imageset(60, channels=1, seed=9)
    bd = attack.poison_testset(test)
    assert torch.equal(bd.x, attack.apply(test.x[test.y != 3]))


def test_cla_cache_is_reused_and_rebuilt_when_options_change(tmp_path):
    train = imageset(200, channels=1)
    spy = Spy()
    a = cla()
    a.prepare(train, seed=0, cache_dir=tmp_path, key="k", clean_model=spy)
    files = list(tmp_path.glob("cla-*.safetensors"))
    assert spy.calls == 1 and len(files) == 1
    b = cla()
    b.prepare(train, seed=0, cache_dir=tmp_path, key="k", clean_model=spy)
    assert spy.calls == 1 and torch.equal(a.adv, b.adv)             # read back, no model needed
    c = cla(amplitude=0.5)                                          # pattern options: same resource
    c.prepare(train, seed=0, cache_dir=tmp_path, key="k", clean_model=spy)
    assert spy.calls == 1
    d = cla(eps=8.0)                                                # a PGD option: rebuilt
    d.prepare(train, seed=0, cache_dir=tmp_path, key="k", clean_model=spy)
    assert spy.calls == 2 and (d.adv.int() - a.adv.int()).abs().max() > 0
    assert (d.adv.int() - train.x[train.y == 0].int()).abs().max() <= 8
    cla().prepare(train, seed=0, cache_dir=tmp_path, key="other clean model", clean_model=spy)
    assert spy.calls == 3 and len(list(tmp_path.glob("cla-*.safetensors"))) == 3


@pytest.mark.parametrize("options", [{"eps": -1}, {"steps": -1}, {"step_size": 0}, {"amplitude": 0},
                                     {"corners": "top"}])
def test_cla_bad_options(options):
    with pytest.raises(ConfigError):
        cla(**options)
