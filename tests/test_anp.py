"""ANP (ftsam.defenses.anp): masks stay in [0, 1], the adversarial noise in [-eps, eps] and
ascends the loss, a pruned channel's BN output is its shift whatever the input, the mask
falls on a planted channel that clean data does not need but noise exploits (and only with
the right signs), a model without BatchNorm is refused, the optimisation resumes exactly,
and the pipeline caches the pruned model with what ANP found."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ftsam import experiment
from ftsam.config import ConfigError, from_dict
from ftsam.data import ImageSet
from ftsam.defenses import anp as anp_mod
from ftsam.defenses import build_defense
from ftsam.defenses.anp import adversarial_noise, mask_step, perturbed, prune
from ftsam.defenses.base import Context, Given
from ftsam.models.preact_resnet import PreActResNet18

from synthetic import imageset

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return PreActResNet18(1, 10, (0.5,), (0.5,), width=2).eval()


def anp(**opts):
    cfg = from_dict({"defense": {"train": {"crop_padding": 0}, "anp": opts}})
    return build_defense("anp", cfg.defense)


def batch(n=32, seed=0):
    data = imageset(n, 10, 1, 8, seed=seed)
    return data.x.float() / 255, data.y


def planted(n=256, seed=0):
    """Two BN channels into a two-class linear head: channel 0 is the label (needed), channel 1
    a random sign that the head weighs half as much (not needed: the clean margin 20 +- 10 is
    so safe that the clean loss hardly cares about it). Noise of the right signs (channel 0
    down, channel 1 up) flips half the samples (20 * 0.6 - 10 * 1.4 < 0); the wrong signs none."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    r = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([y, r], 1).mul(255).to(torch.uint8).view(n, 2, 1, 1)
    bn = nn.BatchNorm1d(2)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        bn.bias.zero_()
        head.weight.copy_(torch.tensor([[-10.0, -5.0], [10.0, 5.0]]))
        head.bias.zero_()
    return nn.Sequential(nn.Flatten(), bn, head).eval(), ImageSet(x, y)


def test_unmasked_noiseless_layers_are_the_model_and_everything_is_put_back():
    """Mask 1 and no noise: the swapped-in layers compute what the model does (running statistics
    as in eval mode, or batch statistics as in train mode) and touch no buffer; on exit the
    model has its own layers, state and trainable flags again."""
    model, (x, _) = tiny_resnet(), batch()
    with torch.no_grad():
        for m in anp_mod.maskable_layers(model).values():
            m.running_mean.uniform_(-0.5, 0.5), m.bias.uniform_(-0.5, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eval_out = model(x)
    train_out = copy.deepcopy(model).train()(x)
    own = list(model.parameters())
    with perturbed(model, batch_stats=False) as layers:
        assert len(layers) == 16 and not any(p.requires_grad for p in own)     # the model is frozen
        torch.testing.assert_close(model(x), eval_out)
    with perturbed(model, batch_stats=True):
        torch.testing.assert_close(model(x), train_out)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, anp_mod.PerturbedBN) for m in model.modules())


def test_masks_stay_in_the_unit_interval_while_optimised():
    model, (x, y) = tiny_resnet(), batch()
    with perturbed(model) as layers:
        opt = torch.optim.SGD([w.mask for w in layers.values()], lr=50.0, momentum=0.9)   # huge: would leave [0, 1]
        hit = set()
        for i in range(6):
            adversarial_noise(model, layers, x, y, 0.4, 1, torch.Generator().manual_seed(i))
            mask_step(model, layers, opt, x, y, 0.2, noisy=True)
            masks = torch.cat([w.mask.detach() for w in layers.values()])
            assert masks.min() >= 0.0 and masks.max() <= 1.0
            hit |= {0.0 in masks, 1.0 in masks}
    assert hit == {True}, "the clip at 0 and at 1 was never exercised"


def test_noise_stays_within_eps_and_ascends_the_loss():
    model, (x, y) = tiny_resnet(), batch()
    eps = 0.4
    with perturbed(model) as layers:
        clean = F.cross_entropy(model(x), y).item()                   # masks 1, no noise
        for steps in (1, 3):
            adversarial_noise(model, layers, x, y, eps, steps, torch.Generator().manual_seed(steps))
            noise = torch.cat([t.detach().flatten() for w in layers.values() for t in (w.noise_w, w.noise_b)])
            assert noise.abs().max() <= eps + 1e-7
            on_scale = torch.cat([w.noise_w.detach() for w in layers.values()])
            # one full step from a uniform start lands on the bound half the time: projected, not 2 eps
            assert (on_scale.abs() == eps).float().mean() > (0.3 if steps == 1 else 0.1)
            assert all(w.noisy for w in layers.values())
            noisy = F.cross_entropy(model(x), y).item()
            assert noisy > clean + 0.05, (steps, clean, noisy)        # ascent, not descent


def test_a_pruned_channel_outputs_its_shift_on_any_input():
    """The authors' pruning zeroes the BN scale only (their mask multiplies the scale): the
    channel's output is then its shift beta, the same for every input; other channels keep theirs."""
    model = tiny_resnet()
    bn = model.layer3[0].bn2
    with torch.no_grad():
        bn.bias.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {name: torch.ones(m.num_features) for name, m in anp_mod.maskable_layers(model).items()}
    masks["layer3.0.bn2"][[0, 2]] = torch.tensor([0.1, 0.4])
    masks["layer4.1.bn2"][1] = 0.41                                            # just above the threshold: kept
    pruned = prune(model, masks, anp(threshold=0.4).opts)
    assert pruned == {"layer3.0.bn2": [0, 2]}
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["layer3.0.bn2.weight"]
    assert after["layer3.0.bn2.weight"][[0, 2]].eq(0).all()
    assert torch.equal(after["layer3.0.bn2.weight"][[1, 3, 4, 5, 6, 7]], before["layer3.0.bn2.weight"][[1, 3, 4, 5, 6, 7]])
    seen = []
    bn.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    for seed in (1, 2):
        model(torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(seed)))
    for out in seen:
        for c in (0, 2):
            assert torch.equal(out[:, c], torch.full_like(out[:, c], bn.bias[c].item()))
        assert out[:, 1].std() > 0                                    # a kept channel still varies


def test_prune_by_number_takes_the_lowest_masks():
    model = tiny_resnet()
    masks = {name: torch.ones(m.num_features) for name, m in anp_mod.maskable_layers(model).items()}
    masks["layer1.0.bn1"][1], masks["layer4.1.bn2"][3], masks["layer4.1.bn2"][0] = 0.9, 0.5, 0.95
    assert prune(model, masks, anp(prune_by="number", count=2).opts) == {"layer1.0.bn1": [1], "layer4.1.bn2": [3]}


def negate_loss_in(monkeypatch, phase: str) -> None:
    """Make ``phase`` (adversarial_noise or mask_step) step against its loss: the sign bug."""
    real_phase, real_ce = getattr(anp_mod, phase), anp_mod._ce

    def flipped(*args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(anp_mod, "_ce", lambda *a: -real_ce(*a))
            return real_phase(*args, **kwargs)
    monkeypatch.setattr(anp_mod, phase, flipped)


@pytest.mark.parametrize("flip", [None, "adversarial_noise", "mask_step"])
def test_the_mask_falls_on_the_channel_noise_exploits(flip, monkeypatch):
    """With the published signs channel 1 is pruned and channel 0 kept; a noise that descends
    instead of ascending, or a mask step that ascends, must not give that result."""
    if flip is not None:
        negate_loss_in(monkeypatch, flip)
    model, data = planted()
    out = anp(iterations=40, batch_size=64).run(Given("anp", ("model", "clean"), model=model, clean=data),
                                                Context(seed=0, progress=False))
    m = out.found["masks"]
    published = out.found["pruned"] == {"1": [1]} and m[0] == 1.0 and m[1] < 0.2
    assert published == (flip is None), m.tolist()


def test_a_model_without_batchnorm_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ConfigError, match=r"anp.*BatchNorm"):
        anp(iterations=1).run(Given("anp", ("model", "clean"), model=model, clean=imageset(8, 10, 1, 8)),
                              Context(seed=0, progress=False))


def test_options_are_range_checked_by_key():
    for key, bad in [("eps", -0.1), ("alpha", 1.5), ("threshold", 1.2), ("steps", 0), ("iterations", 0)]:
        with pytest.raises(ConfigError, match=rf"defense\.anp\.{key}"):
            anp(**{key: bad})
    with pytest.raises(ConfigError, match=r"defense\.anp\.count"):
        anp(prune_by="number")                       # number without a count
    with pytest.raises(ConfigError, match=r"defense\.anp\.bn_stats"):
        anp(bn_stats="train")


def test_an_interrupted_optimisation_resumes_exactly(tmp_path, monkeypatch):
    data, d = imageset(40, 10, 1, 8), anp(iterations=6, batch_size=16, eps=0.3)

    def masks(ctx):
        return d.run(Given("anp", ("model", "clean"), model=tiny_resnet(), clean=data), ctx).found["masks"]
    whole = masks(Context(seed=3, progress=False))
    calls, real = [], anp_mod.mask_step

    def dies_at_the_fifth(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(anp_mod, "mask_step", dies_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        masks(Context(seed=3, state_dir=tmp_path, progress=False))
    monkeypatch.setattr(anp_mod, "mask_step", real)
    assert (tmp_path / "anp_state.safetensors").is_file()
    assert torch.equal(masks(Context(seed=3, state_dir=tmp_path, progress=False)), whole)


def test_defend_caches_the_pruned_model_and_what_anp_found(tmp_path, monkeypatch):
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.2,
                                 "anp": {"iterations": 3, "batch_size": 16, "prune_by": "number", "count": 3}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    first = experiment.defend(run, "anp", progress=False)
    f = first.found
    assert set(f) == {"masks", "layers", "pruned", "threshold"} and f["threshold"] is None
    assert len(f["masks"]) == sum(n for _, n in f["layers"]) and sum(map(len, f["pruned"].values())) == 3
    state = first.model.state_dict()
    for layer, channels in f["pruned"].items():
        assert state[f"{layer}.weight"][channels].eq(0).all()
    monkeypatch.setattr(anp_mod.ANP, "run", lambda *a: pytest.fail("the cached result was not reused"))
    again = experiment.defend(run, "anp", progress=False)
    assert again.found["pruned"] == f["pruned"] and torch.equal(again.found["masks"], f["masks"])
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in state.items())
    assert again.metrics == first.metrics
