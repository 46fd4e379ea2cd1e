"""``ftsam.train.augment`` (one gather for crop + flip, run on uint8) against the plain
float implementation it replaced: same values, same strides, same random draws."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ftsam.train import augment


def reference(x: torch.Tensor, padding: int, hflip: bool, g: torch.Generator) -> torch.Tensor:
    """The earlier augment: pad, per-pixel indexing for the crop, torch.where for the flip."""
    n, _, h, w = x.shape
    if padding:
        xp = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None])
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None])
        idx_n = torch.arange(n, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(n, generator=g, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("padding, hflip", [(0, False), (0, True), (1, False), (4, True), (2, True)])
def test_augment_on_uint8_equals_the_float_reference(channels, padding, hflip):
    gx = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (33, channels, 12, 10), dtype=torch.uint8, generator=gx)
    g_new, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = augment(x, padding, hflip, g_new).float().div_(255.0)    # as fit does it
    want = reference(x.float().div_(255.0), padding, hflip, g_ref)
    assert torch.equal(got, want)
    assert got.stride() == want.stride()          # memory layout decides the conv kernels: keep it
    assert torch.equal(g_new.get_state(), g_ref.get_state())        # the same random draws
    assert torch.equal(augment(x.float(), padding, hflip, torch.Generator().manual_seed(5)),
                       reference(x.float(), padding, hflip, torch.Generator().manual_seed(5)))


def test_augment_leaves_its_input_alone():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    before = x.clone()
    augment(x, 2, True, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
