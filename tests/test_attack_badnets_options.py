"""BadNets' position and pattern options: the trigger changes exactly the patch pixels, where
and how the options say; the defaults are the paper's trigger; bad values name their key."""
from __future__ import annotations

import pytest
import torch

from ftsam.attacks import build_attack
from ftsam.config import AttackConfig, ConfigError
from ftsam.data import DatasetInfo


def info(channels=3, size=16, classes=10) -> DatasetInfo:
    return DatasetInfo("test", channels, size, classes, (0.5,) * channels, (0.5,) * channels)


def badnets(size=16, channels=3, **options):
    return build_attack(AttackConfig(name="badnets", options=options), info(channels, size))


def images(n, channels, size, seed=0) -> torch.Tensor:
    """Values 1..254: never what a patch writes (0 or 255), so every patch pixel changes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 255, (n, channels, size, size), dtype=torch.uint8, generator=g)


def changed(attack, size, channels=3):
    x = images(5, channels, size)
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    return x, out, (out != x).any(0).any(0)


def box(size, r, c, p):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[r:r + p, c:c + p] = True
    return m


@pytest.mark.parametrize("position, rc", [("bottom_right", (12, 12)), ("bottom_left", (12, 0)),
                                          ("top_left", (0, 0)), ("top_right", (0, 12)),
                                          ([5, 7], (5, 7)), ((0, 12), (0, 12))])
@pytest.mark.parametrize("pattern", ["white", "checkerboard", "random"])
def test_trigger_changes_exactly_the_patch(position, rc, pattern):
    attack = badnets(patch_size=4, position=position, pattern=pattern)
    x, out, ch = changed(attack, 16)
    assert torch.equal(ch, box(16, *rc, 4))
    assert torch.equal(attack.mask(16, 16), box(16, *rc, 4))
    r, c = rc
    vals = out[..., r:r + 4, c:c + 4]
    assert ((vals == 0) | (vals == 255)).all()
    assert (vals == vals[:1]).all()                       # the same patch on every image


def test_defaults_are_the_paper_trigger_bitwise():
    x = torch.rand(4, 3, 16, 16)
    old = x.clone()
    old[..., -3:, -3:] = 1.0
    for opts in ({}, {"position": "bottom_right", "pattern": "white"}):
        assert torch.equal(badnets(**opts).trigger(x), old)
    # the explicit coordinates of the bottom-right corner give the same trigger
    assert torch.equal(badnets(position=[13, 13]).trigger(x), old)


def test_checkerboard_pattern():
    attack = badnets(channels=1, patch_size=3, position="top_left", pattern="checkerboard")
    out = attack.apply(torch.full((1, 1, 16, 16), 100, dtype=torch.uint8))
    expected = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(out[0, 0, :3, :3], expected)


def test_random_pattern_is_fixed_by_its_seed():
    a, b = badnets(patch_size=5, pattern="random"), badnets(patch_size=5, pattern="random")
    c = badnets(patch_size=5, pattern="random", pattern_seed=1)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(a.trigger(x), b.trigger(x))
    assert not torch.equal(a.trigger(x), c.trigger(x))
    pat = a.patch(3)
    assert pat.shape == (3, 5, 5) and 0 < int(pat.count_nonzero()) < pat.numel()


def test_value_scales_the_patterns():
    attack = badnets(channels=1, patch_size=2, position="top_left", pattern="checkerboard", value=0.5)
    out = attack.apply(torch.full((1, 1, 16, 16), 100, dtype=torch.uint8))
    assert out[0, 0, 0, 0] == 128 and out[0, 0, 0, 1] == 0


@pytest.mark.parametrize("options, key", [
    ({"position": "middle"}, "attack.options.position"),
    ({"position": [1]}, "attack.options.position"),
    ({"position": [-1, 2]}, "attack.options.position"),
    ({"position": [1.5, 2]}, "attack.options.position"),
    ({"position": [14, 0]}, "attack.options.position"),        # a 3x3 patch at row 14 leaves 16x16
    ({"pattern": "stripes"}, "attack.options.pattern"),
    ({"pattern_seed": "x"}, "attack.options.pattern_seed"),
    ({"patch_size": 17}, "attack.options.patch_size"),
])
def test_bad_values_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        badnets(**options)
