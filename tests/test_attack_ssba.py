"""SSBA: an invisible, sample-specific residual that carries a secret the decoder reads back
from the saved (uint8) image; the trained encoder is a cached resource."""
from __future__ import annotations

import time

import pytest
import torch

from ftsam.attacks import build_attack
from ftsam.attacks.base import to_float
from ftsam.attacks.ssba import SSBA, StegaDecoder, StegaEncoder, psnr
from ftsam.config import AttackConfig, ConfigError, DataConfig
from ftsam.data import DatasetInfo, ImageSet, load_dataset

# Small enough to train in a few seconds on one thread, large enough to learn the secret.
TINY = {"bits": 8, "width": 8, "steps": 300, "secret_only_steps": 60, "ramp_steps": 120}
# For the cache tests only: quality does not matter there.
TOY = {"bits": 4, "width": 4, "steps": 6, "secret_only_steps": 2, "ramp_steps": 2}


def info(channels=1, size=16, classes=10) -> DatasetInfo:
    return DatasetInfo("test", channels, size, classes, (0.5,) * channels, (0.5,) * channels)


def ssba(target=0, ratio=0.1, mode="all2one", channels=1, size=16, **options) -> SSBA:
    return build_attack(AttackConfig(name="ssba", target=target, mode=mode, poison_ratio=ratio, options=options),
                        info(channels, size))


@pytest.fixture(scope="module")
def digits():
    train, test, _ = load_dataset(DataConfig(name="digits", image_size=16))
    return train.subset(torch.arange(600)), test


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    train, _ = digits
    attack = ssba(**TINY)
    attack.prepare(train, seed=0, cache_dir=tmp_path_factory.mktemp("ssba"), key="digits")
    return attack


def test_needs_prepare():
    with pytest.raises(RuntimeError, match="prepare"):
        ssba().poison_trainset(ImageSet(torch.zeros(10, 1, 16, 16, dtype=torch.uint8), torch.arange(10)), seed=0)


def test_trigger_is_sample_specific(trained, digits):
    _, test = digits
    x = to_float(test.x[:2])
    r = trained.trigger(x) - x
    assert (r[0] - r[1]).abs().max() > 4 / 255            # two images, two different residuals
    assert r.abs().amax(dim=(1, 2, 3)).min() > 2 / 255      # and each image does get one
    same = torch.stack([x[0], x[0]])
    torch.testing.assert_close(trained.trigger(same)[0], trained.trigger(same)[1])   # deterministic


def test_invisible_and_decodable_on_held_out_uint8_images(trained, digits):
    _, test = digits                                         # never seen by the encoder
    poisoned = trained.apply(test.x)
    assert poisoned.dtype == torch.uint8
    assert float(psnr(to_float(poisoned), to_float(test.x)).mean()) >= 27.0
    bits = trained.decode(poisoned)
    assert float((bits == trained.secret).float().mean()) >= 0.95
    assert trained.bit_accuracy(poisoned) >= 0.95
    # the clean images do not carry the secret: the decoder reads it from the residual
    assert trained.bit_accuracy(test.x) < 0.8
    # the encoder's own held-out split says the same
    s = trained.stats
    assert s["psnr"] >= 27.0 and s["bit_acc"] >= 0.95 and s["steps"] >= TINY["steps"]


def test_secret_comes_from_the_seed():
    a, b, c = SSBA.make_secret(16, 0), SSBA.make_secret(16, 0), SSBA.make_secret(16, 1)
    assert torch.equal(a, b) and not torch.equal(a, c) and set(a.tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("mode", ["all2one", "all2all"])
def test_poisoning_relabels_a_share_of_the_dataset(trained, digits, mode):
    train, test = digits
    attack = ssba(target=2, mode=mode, **TINY)
    attack.encoder, attack.decoder, attack.secret = trained.encoder, trained.decoder, trained.secret
    p = attack.poison_trainset(train, seed=3)
    idx = p.poison_index
    assert len(idx) == round(0.1 * len(train))
    want = torch.full_like(train.y[idx], 2) if mode == "all2one" else (train.y[idx] + 1) % 10
    assert torch.equal(p.data.y[idx], want) and (want != train.y[idx]).all()
    assert torch.equal(p.data.x[idx], attack.apply(train.x[idx]))
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(p.data.x[rest], train.x[rest]) and torch.equal(p.data.y[rest], train.y[rest])
    assert torch.equal(p.original_y, train.y)
    bd = attack.poison_testset(test)
    keep = attack.target_of(test.y) != test.y
    assert torch.equal(bd.x, attack.apply(test.x[keep])) and torch.equal(bd.y_true, test.y[keep])


def test_cache_is_reused_and_rebuilt_when_an_option_changes(digits, tmp_path, monkeypatch):
    train = digits[0].subset(torch.arange(64))
    calls = []
    real = SSBA.train_networks

    def counting(self, *args, **kwargs):
        calls.append(self.opts)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(SSBA, "train_networks", counting)

    a = ssba(**TOY)
    a.prepare(train, seed=0, cache_dir=tmp_path, key="k")
    files = list(tmp_path.glob("ssba-*.safetensors"))
    assert len(calls) == 1 and a.trained and len(files) == 1
    b = ssba(**TOY)
    t = time.perf_counter()
    b.prepare(train, seed=0, cache_dir=tmp_path, key="k")
    assert len(calls) == 1 and not b.trained and time.perf_counter() - t < 2.0   # read back, not retrained
    assert torch.equal(a.apply(train.x), b.apply(train.x)) and torch.equal(a.secret, b.secret)
    assert b.stats == a.stats and b.history == a.history
    ssba(**(TOY | {"image_weight": 3.0})).prepare(train, seed=0, cache_dir=tmp_path, key="k")   # an option
    assert len(calls) == 2
    ssba(**TOY).prepare(train, seed=1, cache_dir=tmp_path, key="k")                            # the seed
    ssba(**TOY).prepare(train, seed=0, cache_dir=tmp_path, key="other data")                   # the key
    ssba(**TOY).prepare(digits[0].subset(torch.arange(64, 128)), seed=0, cache_dir=tmp_path, key="k")
    assert len(calls) == 5 and len(list(tmp_path.glob("ssba-*.safetensors"))) == 5
    # the target and the poisoning ratio do not touch the encoder
    ssba(target=3, ratio=0.2, **TOY).prepare(train, seed=0, cache_dir=tmp_path, key="k")
    assert len(calls) == 5


@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32), (3, 64)])
def test_networks_fit_the_image_shapes(channels, size):
    enc, dec = StegaEncoder(channels, size, bits=16, width=4), StegaDecoder(channels, size, bits=16, width=4)
    x, secret = torch.rand(2, channels, size, size), torch.randint(0, 2, (2, 16)).float()
    assert enc(x, secret).shape == x.shape and dec(x).shape == (2, 16)
    bounded = StegaEncoder(channels, size, bits=16, width=4, max_residual=8.0)
    assert bounded(x, secret).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.parametrize("options, key", [
    ({"bits": 0}, "bits"), ({"bits": 300}, "bits"), ({"width": 0}, "width"), ({"steps": 0}, "steps"),
    ({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"), ({"secret_weight": 0}, "secret_weight"),
    ({"image_weight": -1}, "image_weight"), ({"noise": -1}, "noise"), ({"max_residual": -1}, "max_residual"),
    ({"max_residual": 300}, "max_residual"), ({"secret_only_steps": -1}, "secret_only_steps"),
    ({"ramp_steps": -1}, "ramp_steps"), ({"holdout": 0.0}, "holdout"), ({"holdout": 1.0}, "holdout"),
    ({"steps": 100, "secret_only_steps": 100}, "secret_only_steps"), ({"bits": 1.5}, "bits"),
    ({"secret": 3}, "secret"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=rf"attack\.options\.{key}\b"):
        ssba(**options)
