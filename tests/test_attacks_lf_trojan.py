"""LF and Trojan: the defining property of each trigger, its cache, its options."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from ftsam.attacks import build_attack
from ftsam.attacks.lf import dct2, kept, lowpass_matrix
from ftsam.config import AttackConfig, ConfigError
from ftsam.data import DatasetInfo, ImageSet

import synthetic                      # tests/synthetic.py
from synthetic import images


def info(channels=1, size=16, classes=10) -> DatasetInfo:
    return synthetic.info(channels, size, classes)


def imageset(n=120, classes=10, channels=1, size=16, seed=0) -> ImageSet:
    return synthetic.imageset(n, classes, channels, size, seed)


class Spy:
    """A clean_model() that counts its calls and returns a fixed tiny model."""

    def __init__(self, model: nn.Module):
        self.model, self.calls = model, 0

    def __call__(self):
        self.calls += 1
        return self.model


def linear_model(channels=1, size=16, classes=10, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes))


def patch_model(channels=1, classes=10, width=8, seed=0) -> nn.Module:
    """One 4x4 stride-4 convolution, average-pooled: each feature is affine in the bottom-right
    4x4 cell (the default mask of a 16-pixel image), with no dead ReLU to stall the descent."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, width, 4, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, classes))


def conv_model(channels=1, classes=10, width=8, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


# ---- LF --------------------------------------------------------------------------------
FAST_LF = {"images": 20, "passes": 2}


def lf(channels=1, size=16, target=0, ratio=0.1, mode="all2one", **options):
    return build_attack(AttackConfig(name="lf", target=target, mode=mode, poison_ratio=ratio,
                                     options=FAST_LF | options), info(channels, size))


def prepared_lf(tmp_path=None, channels=1, size=16, spy=None, seed=0, key="k", **options):
    attack = lf(channels, size, **options)
    spy = spy or Spy(linear_model(channels, size))
    attack.prepare(imageset(120, channels=channels, size=size), seed=seed, cache_dir=tmp_path, key=key,
                   clean_model=spy)
    return attack


def test_lf_published_defaults():
    o = lf().opts.__class__()
    assert (o.eps, o.norm, o.images, o.passes, o.fooling_rate, o.overshoot, o.deepfool_steps) == \
        (51.0, "range", 100, 50, 0.2, 0.02, 200)


@pytest.mark.parametrize("n, cut", [(16, 0.125), (32, 0.25), (7, 0.5), (8, 1.0)])
def test_lowpass_is_the_orthogonal_projection_onto_low_dct_frequencies(n, cut):
    p = lowpass_matrix(n, cut)
    torch.testing.assert_close(p @ p, p)
    torch.testing.assert_close(p, p.T)
    k = kept(n, cut)
    assert torch.linalg.matrix_rank(p) == k
    # against scipy's DCT: a signal of low frequencies passes unchanged, a high one is removed
    coef = np.zeros(n)
    coef[:k] = np.arange(1, k + 1)
    low = torch.from_numpy(scipy.fft.idct(coef, norm="ortho"))
    torch.testing.assert_close(p @ low, low)
    if k < n:
        high = np.zeros(n)
        high[k:] = 1.0
        assert (p @ torch.from_numpy(scipy.fft.idct(high, norm="ortho"))).abs().max() < 1e-12


@pytest.mark.parametrize("channels, size, cut", [(1, 16, 0.125), (3, 32, 0.25), (3, 20, 0.3)])
@pytest.mark.parametrize("norm, eps", [("range", 51.0), ("linf", 8.0), ("l2", 100.0)])
def test_lf_trigger_has_no_energy_above_its_cut_and_respects_the_budget(channels, size, cut, norm, eps):
    attack = prepared_lf(channels=channels, size=size, freq_cut=cut, norm=norm, eps=eps)
    d = attack.delta
    assert d.shape == (channels, size, size) and d.abs().max() > 0
    coef = scipy.fft.dctn(d.double().numpy(), type=2, norm="ortho", axes=(-2, -1))
    k = kept(size, cut)
    high = coef.copy()
    high[:, :k, :k] = 0
    assert np.abs(high).max() <= 1e-6 * np.abs(coef).max()
    assert np.abs(coef[:, :k, :k]).max() > 0
    torch.testing.assert_close(dct2(d.double()), torch.from_numpy(coef))
    if norm == "range":          # the code's normalisation: spans exactly [0, eps]
        assert abs(float(d.min())) < 1e-6 and abs(float(d.max()) - eps / 255) < 1e-6
    elif norm == "linf":
        assert float(d.abs().max()) <= eps / 255 + 1e-6
    else:
        assert float(d.norm()) <= eps / 255 + 1e-5


@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32)])
def test_lf_adds_delta_up_to_clipping_and_rounding(channels, size):
    attack = prepared_lf(channels=channels, size=size)
    d255 = attack.delta.double() * 255
    x = images(6, channels, size, lo=60, hi=190)       # eps 51: no clipping
    diff = attack.apply(x).double() - x.double()
    assert (diff - d255).abs().max() <= 0.5 + 1e-6
    xf = torch.rand(4, channels, size, size) * 0.5 + 0.2     # far from 1 - 0.2: no clipping
    torch.testing.assert_close(attack.trigger(xf) - xf, attack.delta.expand_as(xf), atol=1e-6, rtol=0)
    full = images(6, channels, size)                  # the whole range: clipped at 255
    out = attack.apply(full).double()
    want = (full.double() + d255).clamp(0, 255)
    assert (out - want).abs().max() <= 0.5 + 1e-6


def check_all2one_poisoning(attack, train):
    """10% of ``train``, none of target 0, triggered and relabelled 0; the rest untouched."""
    p = attack.poison_trainset(train, seed=1)
    idx = p.poison_index
    assert len(idx) == 20 and (train.y[idx] != 0).all() and (p.data.y[idx] == 0).all()
    assert torch.equal(p.data.x[idx], attack.apply(train.x[idx]))
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(p.data.x[rest], train.x[rest]) and torch.equal(p.data.y[rest], train.y[rest])


def test_lf_poisons_non_target_samples_and_relabels():
    attack = prepared_lf(target=0)
    check_all2one_poisoning(attack, imageset(200, seed=3))
    bd = build_attack(AttackConfig(name="lf", mode="all2all", options=FAST_LF), info())
    bd.delta = attack.delta
    t = bd.poison_testset(imageset(50, seed=5))
    assert torch.equal(t.y_target, (t.y_true + 1) % 10)


def test_lf_deepfool_reaches_the_target_on_a_linear_model():
    model = linear_model().eval()
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    top = int(model(x).argmax())
    target = (top + 1) % 10
    attack = lf(target=target)
    r, steps = attack.deepfool(model, x)
    assert 1 <= steps < attack.opts.deepfool_steps
    assert int(model(x + r).argmax()) == target
    # every step moves along the weight difference of the target and the first top class
    w = model[1].weight.detach()
    dirn = (w[target] - w[top]).view_as(x)
    assert float((r * dirn).sum() / (r.norm() * dirn.norm())) > 0.999
    with torch.no_grad():
        assert int(attack.deepfool(model, x + r)[1]) == 0        # already there: no step


def test_lf_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path):
    spy = Spy(linear_model())
    a = prepared_lf(tmp_path, spy=spy)
    assert spy.calls == 1 and len(list(tmp_path.glob("lf-*.safetensors"))) == 1
    b = prepared_lf(tmp_path, spy=spy)
    assert spy.calls == 1 and torch.equal(a.delta, b.delta)           # read back, no model needed
    c = prepared_lf(tmp_path, spy=spy, freq_cut=0.25)
    assert spy.calls == 2
    coef = dct2(c.delta.double())
    assert coef[:, 2:4, :4].abs().max() > 1e-6 or coef[:, :4, 2:4].abs().max() > 1e-6   # uses the wider band
    prepared_lf(tmp_path, spy=spy, eps=30.0)
    prepared_lf(tmp_path, spy=spy, key="another clean model")
    prepared_lf(tmp_path, spy=spy, seed=1)
    assert spy.calls == 5 and len(list(tmp_path.glob("lf-*.safetensors"))) == 5
    other_target = lf(target=3)
    other_target.prepare(imageset(120), seed=0, cache_dir=tmp_path, key="k", clean_model=spy)
    assert spy.calls == 6


def test_lf_needs_prepare_and_a_clean_model(tmp_path):
    with pytest.raises(RuntimeError, match="prepare"):
        lf().trigger(torch.rand(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="clean model"):
        lf().prepare(imageset(), seed=0, cache_dir=tmp_path, key="k")


@pytest.mark.parametrize("options, key", [({"eps": 0}, "eps"), ({"eps": 300}, "eps"), ({"norm": "l1"}, "norm"),
                                          ({"freq_cut": 0}, "freq_cut"), ({"freq_cut": 1.5}, "freq_cut"),
                                          ({"images": 0}, "images"), ({"passes": 0}, "passes"),
                                          ({"fooling_rate": 2}, "fooling_rate"), ({"overshoot": -1}, "overshoot"),
                                          ({"deepfool_steps": 0}, "deepfool_steps"), ({"freq": 0.1}, "freq")])
def test_lf_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=f"attack.options.{key}"):
        build_attack(AttackConfig(name="lf", options=options), info())


# ---- Trojan ----------------------------------------------------------------------------
FAST_TROJAN = {"steps": 60}


def trojan(channels=1, size=16, target=0, ratio=0.1, mode="all2one", **options):
    return build_attack(AttackConfig(name="trojan", target=target, mode=mode, poison_ratio=ratio,
                                     options=FAST_TROJAN | options), info(channels, size))


def prepared_trojan(tmp_path=None, channels=1, size=16, spy=None, seed=0, key="k", **options):
    attack = trojan(channels, size, **options)
    spy = spy or Spy(patch_model(channels))
    attack.prepare(imageset(60, channels=channels, size=size), seed=seed, cache_dir=tmp_path, key=key,
                   clean_model=spy)
    return attack


def test_trojan_published_defaults():
    o = trojan().opts.__class__()
    assert (o.layer, o.neurons, o.target_value, o.steps, o.lr, o.background) == ("", 2, 100.0, 1000, 0.1, "black")
    assert trojan(size=32).patch_size == 8 and trojan(size=16).patch_size == 4 and trojan(size=64).patch_size == 16


@pytest.mark.parametrize("channels, size, patch", [(1, 16, 0), (3, 32, 0), (3, 20, 7)])
def test_trojan_stamps_the_pattern_inside_the_mask_only(channels, size, patch):
    attack = prepared_trojan(channels=channels, size=size, patch=patch)
    p = patch or size // 4
    m = attack.mask()
    assert int(m.sum()) == p * p and m[-p:, -p:].all()
    x = images(5, channels, size, seed=2)
    out = attack.apply(x)
    inside = m.expand_as(x)
    assert torch.equal(out[~inside], x[~inside])                          # only the mask changes
    want = (attack.pattern * 255).round().to(torch.uint8).expand_as(x)
    assert torch.equal(out[inside], want[inside])                         # ... and is set to t
    xf = torch.rand(3, channels, size, size)
    torch.testing.assert_close(attack.trigger(xf), (1 - m.float()) * xf + m.float() * attack.pattern)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trojan_selects_the_most_connected_neuron_and_drives_it_up(seed):
    model = patch_model(1, seed=seed)
    attack = prepared_trojan(spy=Spy(model), steps=100, neurons=1)
    w = model[-1].weight.detach().abs().sum(0)
    assert attack.neuron_index.tolist() == [int(w.argmax())]
    layer, m = model[-1], attack.mask()

    def act(pattern, background=torch.zeros(1, 1, 16, 16)):
        with torch.no_grad():
            return attack.activations(model, layer, torch.where(m, pattern, background))[:, attack.neuron_index]
    g = torch.Generator().manual_seed(5)
    black = act(torch.zeros(1, 16, 16))
    random = torch.cat([act(torch.rand(1, 16, 16, generator=g)) for _ in range(50)]) - black
    optimised = act(attack.pattern) - black
    assert (optimised > random.max(0).values).all()                         # above every random trigger
    assert (optimised - random.mean(0) > 2 * random.std(0)).all()
    # here the feature is affine in the patch: the descent reaches the best vertex of the box
    wc = model[0].weight.detach()[attack.neuron_index, 0]                 # [1, 4, 4]
    torch.testing.assert_close(attack.pattern[0, -4:, -4:], (wc[0] > 0).float())
    torch.testing.assert_close(optimised[0], wc.clamp(min=0).sum((1, 2)) / 16, atol=1e-5, rtol=0)
    # the same gain on images stamped with the trigger
    xs = images(16, 1, 16, seed=7).float() / 255
    on_images = act(attack.pattern, xs).mean(0)
    rand_images = act(torch.rand(16, 1, 16, 16, generator=g), xs).mean(0)
    assert (on_images - rand_images > 2 * random.std(0)).all()


def test_trojan_with_two_neurons_pushes_their_sum():
    model = patch_model(1, seed=3)
    attack = prepared_trojan(spy=Spy(model), steps=100)
    strength = model[-1].weight.detach().abs().sum(0)
    assert attack.neuron_index.tolist() == sorted(strength.argsort(descending=True)[:2].tolist())
    # far below the target value 100, both neurons pull with about the same weight
    wc = model[0].weight.detach()[attack.neuron_index, 0].sum(0)
    torch.testing.assert_close(attack.pattern[0, -4:, -4:], (wc > 0).float())


def test_trojan_on_a_conv_layer_and_with_train_background():
    model = conv_model(3)
    attack = prepared_trojan(channels=3, spy=Spy(model), layer="2", neurons=1, background="train", images=8)
    w = model[2].weight.detach().abs().sum((0, 2, 3))
    assert attack.neuron_index.tolist() == [int(w.argmax())]
    assert attack.pattern.shape == (3, 16, 16)
    assert ((attack.pattern >= 0) & (attack.pattern <= 1)).all()


def test_trojan_bad_layer_names_the_key():
    with pytest.raises(ConfigError, match="attack.options.layer"):
        prepared_trojan(layer="nope")
    with pytest.raises(ConfigError, match="attack.options.neurons"):
        prepared_trojan(neurons=9)


def test_trojan_poisons_and_relabels_all2one_and_all2all():
    attack = prepared_trojan(target=0)
    train = imageset(200, seed=3)
    check_all2one_poisoning(attack, train)
    a2a = trojan(mode="all2all")
    a2a.pattern = attack.pattern
    q = a2a.poison_trainset(train, seed=1)
    assert torch.equal(q.data.y[q.poison_index], (train.y[q.poison_index] + 1) % 10)


def test_trojan_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path):
    spy = Spy(patch_model(1))
    a = prepared_trojan(tmp_path, spy=spy)
    assert spy.calls == 1 and len(list(tmp_path.glob("trojan-*.safetensors"))) == 1
    b = prepared_trojan(tmp_path, spy=spy)
    assert spy.calls == 1 and torch.equal(a.pattern, b.pattern) and torch.equal(a.neuron_index, b.neuron_index)
    c = prepared_trojan(tmp_path, spy=spy, steps=0)                 # the random start, unoptimised
    assert spy.calls == 2 and not torch.equal(a.pattern, c.pattern)
    prepared_trojan(tmp_path, spy=spy, target_value=10.0)
    assert spy.calls == 3
    prepared_trojan(tmp_path, spy=spy, patch=3)
    prepared_trojan(tmp_path, spy=spy, key="another clean model")
    prepared_trojan(tmp_path, spy=spy, seed=1)
    assert spy.calls == 6 and len(list(tmp_path.glob("trojan-*.safetensors"))) == 6


def test_trojan_needs_prepare_and_a_clean_model(tmp_path):
    with pytest.raises(RuntimeError, match="prepare"):
        trojan().trigger(torch.rand(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="clean model"):
        trojan().prepare(imageset(), seed=0, cache_dir=tmp_path, key="k")


@pytest.mark.parametrize("options, key", [({"patch": -1}, "patch"), ({"patch": 17}, "patch"),
                                          ({"neurons": 0}, "neurons"), ({"steps": -1}, "steps"),
                                          ({"lr": 0}, "lr"), ({"background": "white"}, "background"),
                                          ({"images": 0}, "images"), ({"target_value": "high"}, "target_value")])
def test_trojan_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=f"attack.options.{key}"):
        build_attack(AttackConfig(name="trojan", options=options), info())


# ---- both, on the accelerator ----------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_lf_and_trojan_prepare_on_cuda_match_cpu():
    cpu = prepared_lf()
    gpu = lf()
    gpu.prepare(imageset(120), seed=0, cache_dir=None, key="k", device="cuda", clean_model=Spy(linear_model()))
    assert gpu.delta.device.type == "cpu"
    torch.testing.assert_close(gpu.delta, cpu.delta, atol=2e-3, rtol=0)
    t = trojan()
    t.prepare(imageset(60), seed=0, cache_dir=None, key="k", device="cuda", clean_model=Spy(patch_model(1)))
    x = images(3, 1, 16).cuda()
    assert t.apply(x).device.type == "cuda"
    assert torch.equal(t.apply(x).cpu(), t.apply(x.cpu()))
