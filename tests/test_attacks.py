"""Triggers change what they should and nothing else; poisoning picks, relabels and keeps the right samples."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from ftsam.attacks import build_attack
from ftsam.config import AttackConfig, ConfigError
from ftsam.data import DatasetInfo, ImageSet


def info(channels=3, size=32, classes=10) -> DatasetInfo:
    return DatasetInfo("test", channels, size, classes, (0.5,) * channels, (0.5,) * channels)


def images(n, channels, size, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def imageset(n=200, classes=10, channels=3, size=16, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed + 1)
    return ImageSet(images(n, channels, size, seed), torch.randint(0, classes, (n,), generator=g))


# ---- BadNets ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size, p", [(16, 3), (32, 3), (64, 6)])
def test_badnets_changes_only_the_bottom_right_patch(channels, size, p):
    attack = build_attack(AttackConfig(name="badnets"), info(channels, size))
    assert attack.patch_size == p
    x = images(6, channels, size)
    x[..., -p:, -p:] = torch.randint(0, 255, (6, channels, p, p), dtype=torch.uint8)  # never 255 before
    out = attack.apply(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert (out[..., -p:, -p:] == 255).all()
    changed = (out != x).any(0).any(0)               # [H, W]
    expected = torch.zeros(size, size, dtype=torch.bool)
    expected[-p:, -p:] = True
    assert torch.equal(changed, expected)
    assert torch.equal(attack.mask(size, size), expected)


def test_badnets_does_not_modify_its_input():
    attack = build_attack(AttackConfig(name="badnets"), info(3, 32))
    x = images(4, 3, 32)
    copy = x.clone()
    attack.apply(x)
    assert torch.equal(x, copy)


@pytest.mark.parametrize("patch_size", [1, 5])
def test_badnets_patch_size_option(patch_size):
    attack = build_attack(AttackConfig(name="badnets", options={"patch_size": patch_size}), info(3, 32))
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    out = attack.apply(x)
    assert int((out == 255).sum()) == 2 * 3 * patch_size ** 2
    assert (out[..., -patch_size:, -patch_size:] == 255).all()


def test_badnets_value_option():
    attack = build_attack(AttackConfig(name="badnets", options={"value": 0.5}), info(1, 16))
    out = attack.apply(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))
    assert (out[..., -3:, -3:] == 128).all()         # round(0.5 * 255) = 127.5 -> 128
    assert int(out.count_nonzero()) == 9


@pytest.mark.parametrize("options", [{"patch_size": -1}, {"value": 1.5}, {"colour": 1}])
def test_badnets_bad_options(options):
    with pytest.raises(ConfigError):
        build_attack(AttackConfig(name="badnets", options=options), info())


# ---- Blended ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image", ["china", "flower"])
def test_blended_pattern_shape_and_range(channels, image):
    attack = build_attack(AttackConfig(name="blended", options={"image": image}), info(channels, 32))
    pat = attack.pattern
    assert pat.shape == (channels, 32, 32) and pat.dtype == torch.float32
    assert pat.min() >= 0.0 and pat.max() <= 1.0
    assert pat.std() > 0.05                          # a picture, not a flat colour


@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32), (3, 64)])
def test_blended_apply_is_the_alpha_blend(channels, size):
    attack = build_attack(AttackConfig(name="blended"), info(channels, size))
    assert attack.opts.alpha == 0.1
    x = images(5, channels, size)
    out = attack.apply(x)
    want = (0.9 * x.double() + 0.1 * 255.0 * attack.pattern.double()).round()
    assert out.dtype == torch.uint8
    assert (out.double() - want).abs().max() <= 1.0


def test_blended_alpha_option():
    attack = build_attack(AttackConfig(name="blended", options={"alpha": 0.3}), info(3, 16))
    x = images(3, 3, 16)
    want = (0.7 * x.double() + 0.3 * 255.0 * attack.pattern.double()).round()
    assert (attack.apply(x).double() - want).abs().max() <= 1.0


def test_blended_with_a_user_image_file(tmp_path):
    path = tmp_path / "trigger.png"
    Image.new("RGB", (40, 30), (200, 0, 128)).save(path)
    rgb = build_attack(AttackConfig(name="blended", options={"image": str(path)}), info(3, 16))
    want = torch.tensor([200 / 255, 0.0, 128 / 255]).view(3, 1, 1).expand(3, 16, 16)
    torch.testing.assert_close(rgb.pattern, want, atol=1e-4, rtol=0)
    grey = build_attack(AttackConfig(name="blended", options={"image": str(path)}), info(1, 16))
    torch.testing.assert_close(grey.pattern, torch.full((1, 16, 16), (0.299 * 200 + 0.114 * 128) / 255), atol=1e-4, rtol=0)
    # blended into black images: round(0.1 * 255 * pattern)
    out = rgb.apply(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    assert out[0, :, 0, 0].tolist() == [20, 0, 13]    # 0.1 * (200, 0, 128) = (20, 0, 12.8)


@pytest.mark.parametrize("image", ["does/not/exist.png", "kitty"])
def test_blended_missing_image_raises_config_error(image):
    with pytest.raises(ConfigError, match="kitty|exist"):
        build_attack(AttackConfig(name="blended", options={"image": image}), info())


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_blended_alpha_out_of_range(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        build_attack(AttackConfig(name="blended", options={"alpha": alpha}), info())


# ---- poisoning -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["badnets", "blended"])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.33])
def test_poison_trainset_all2one(name, ratio):
    train = imageset(200)
    target = 3
    attack = build_attack(AttackConfig(name=name, target=target, poison_ratio=ratio), info(3, 16))
    p = attack.poison_trainset(train, seed=7)
    idx = p.poison_index
    assert len(idx) == round(ratio * 200)
    assert len(set(idx.tolist())) == len(idx)
    assert (train.y[idx] != target).all()
    assert torch.equal(p.original_y, train.y)
    assert (p.data.y[idx] == target).all()
    assert torch.equal(p.data.x[idx], attack.apply(train.x[idx]))
    assert not torch.equal(p.data.x[idx], train.x[idx])
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(p.data.x[rest], train.x[rest])
    assert torch.equal(p.data.y[rest], train.y[rest])
    assert p.data.x.dtype == torch.uint8 and p.data.y.dtype == torch.int64


def test_poison_trainset_does_not_modify_the_clean_set():
    train = imageset(100)
    x, y = train.x.clone(), train.y.clone()
    build_attack(AttackConfig(target=0, poison_ratio=0.2), info(3, 16)).poison_trainset(train, seed=0)
    assert torch.equal(train.x, x) and torch.equal(train.y, y)


def test_poison_trainset_is_deterministic_given_the_seed():
    train = imageset(300)
    attack = build_attack(AttackConfig(target=0, poison_ratio=0.1), info(3, 16))
    a, b = attack.poison_trainset(train, seed=5), attack.poison_trainset(train, seed=5)
    assert torch.equal(a.poison_index, b.poison_index)
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.data.y, b.data.y)
    c = attack.poison_trainset(train, seed=6)
    assert not torch.equal(a.poison_index, c.poison_index)


def test_poison_trainset_all2all():
    train = imageset(200, classes=10)
    attack = build_attack(AttackConfig(mode="all2all", poison_ratio=0.25), info(3, 16, classes=10))
    p = attack.poison_trainset(train, seed=1)
    idx = p.poison_index
    assert len(idx) == 50
    assert torch.equal(p.data.y[idx], (train.y[idx] + 1) % 10)
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(p.data.x[rest], train.x[rest]) and torch.equal(p.data.y[rest], train.y[rest])


def test_all2all_target_mapping_wraps_around():
    attack = build_attack(AttackConfig(mode="all2all"), info(classes=4))
    assert attack.target_of(torch.tensor([0, 1, 2, 3])).tolist() == [1, 2, 3, 0]


def test_poison_testset_all2one_keeps_only_non_target():
    test = imageset(120, seed=3)
    attack = build_attack(AttackConfig(target=2), info(3, 16))
    bd = attack.poison_testset(test)
    keep = test.y != 2
    assert len(bd.x) == int(keep.sum())
    assert torch.equal(bd.y_true, test.y[keep])
    assert (bd.y_target == 2).all()
    assert torch.equal(bd.x, attack.apply(test.x[keep]))


def test_poison_testset_all2all_keeps_every_sample():
    test = imageset(120, seed=3)
    attack = build_attack(AttackConfig(mode="all2all", name="blended"), info(3, 16))
    bd = attack.poison_testset(test)
    assert len(bd.x) == 120
    assert torch.equal(bd.y_true, test.y)
    assert torch.equal(bd.y_target, (test.y + 1) % 10)
    assert torch.equal(bd.x, attack.apply(test.x))


@pytest.mark.parametrize("target", [10, 11])
def test_target_outside_the_classes_raises(target):
    with pytest.raises(ConfigError, match=str(target)):
        build_attack(AttackConfig(target=target), info(classes=10))


def test_ratio_beyond_the_eligible_samples_raises():
    # 100 samples, 80 of them already in the target class: 20 eligible, 0.3 asks for 30
    y = torch.tensor([0] * 80 + [1] * 20)
    train = ImageSet(images(100, 1, 16), y)
    attack = build_attack(AttackConfig(target=0, poison_ratio=0.3), info(1, 16))
    with pytest.raises(ConfigError, match="30"):
        attack.poison_trainset(train, seed=0)
    # exactly the eligible count is fine
    ok = build_attack(AttackConfig(target=0, poison_ratio=0.2), info(1, 16)).poison_trainset(train, seed=0)
    assert sorted(ok.poison_index.tolist()) == list(range(80, 100))


def test_unknown_attack_raises():
    with pytest.raises(ConfigError, match="no_such_attack"):
        build_attack(AttackConfig(name="no_such_attack"), info())


def test_blended_noise_image_is_fixed_by_its_seed():
    a = build_attack(AttackConfig(name="blended", options={"image": "noise:3"}), info(1, 16))
    b = build_attack(AttackConfig(name="blended", options={"image": "noise:3"}), info(1, 16))
    c = build_attack(AttackConfig(name="blended", options={"image": "noise:4"}), info(1, 16))
    assert a.pattern.shape == (1, 16, 16) and 0 <= a.pattern.min() and a.pattern.max() <= 1
    assert torch.equal(a.pattern, b.pattern) and not torch.equal(a.pattern, c.pattern)
    with pytest.raises(ConfigError, match="attack.options.image"):
        build_attack(AttackConfig(name="blended", options={"image": "noise:x"}), info(1, 16))
