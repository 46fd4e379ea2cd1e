"""SSBA, the invisible sample-specific backdoor attack (Li, Li, Wu, Li, He & Lyu, ICCV 2021).

The trigger of each poisoned image is its own invisible residual: a StegaStamp-style
encoder (Tancik, Mildenhall & Ng, CVPR 2020) hides one fixed secret bit string in the image,
``x' = clip(x + encoder(x, secret))``. The encoder is trained first, on the attacker's clean
training images, together with a decoder that must read the bits back.

* **Encoder**: a small U-Net. The secret goes through a linear layer (ReLU) to a ``C x H x W``
  map that is concatenated with the image (both centred at 0, as StegaStamp does); stride-2
  convolutions go down to 4x4 (at most four levels: 2 on 16x16, 3 on 32x32, 4 on 64x64),
  nearest upsampling and skip connections come back up, and a 1x1 convolution gives the
  residual. With ``max_residual > 0`` it is bounded as ``max_residual/255 * tanh(.)``;
  with 0 (the default, as StegaStamp) only the image loss keeps it small.
* **Decoder**: stride-2 convolutions down to 4x4, then a linear layer (ReLU) and a linear
  layer to one logit per bit. StegaStamp's spatial transformer is left out: nothing here warps
  the images.
* **Training** (StegaStamp's recipe, BackdoorBox's weights): random secrets per image and step
  (so the decoder has to read the image, not remember one string); loss
  ``secret_weight * BCE + ramp * image_weight * mean(residual^2)`` where ``ramp`` is 0 for the
  first ``secret_only_steps`` and rises linearly to 1 over ``ramp_steps``; Adam. LPIPS and the
  critic of StegaStamp are left out (no pretrained AlexNet offline; BackdoorBox leaves the
  critic off by default), so ``image_weight`` is larger than BackdoorBox's 2.0 to land at the
  same image quality (PSNR ~27-30 dB). Between encoder and decoder the encoded image is
  quantised to uint8 (straight-through) and gets Gaussian noise of ``noise``/255, ramped like
  the image loss, so the secret survives saving the poisoned image.
* **Held out**: ``holdout`` of the training images are kept out of the encoder's training and
  measure it afterwards: PSNR of the uint8 poisoned image against the clean one, and the bit
  accuracy of the decoder on it for the fixed secret (``self.stats``).

The trained encoder and decoder are a generated resource, cached under ``cache_dir`` as
``ssba-<hash>.safetensors`` by a hash of (key, image shape, a sample of the training images,
seed, options, version), with their statistics in its metadata. ``prepare`` loads them when
present. The secret is drawn from the seed. The poisoned images are one encoder pass (no
further cache needed): ``poison_ratio`` of the whole training set, labels to the target
(all-to-one or all-to-all)."""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ftsam.attacks.base import Attack, to_float
from ftsam.config import ConfigError
from ftsam.io import save_tensors

VERSION = 1
LEARNED = 0.9   # running bit accuracy at which the image loss starts


def _levels(size: int) -> int:
    """Stride-2 levels from ``size`` down to 4x4 (at least one, at most four)."""
    return max(1, min(4, int(math.log2(max(size, 8) // 4))))


class StegaEncoder(nn.Module):
    """A small U-Net: (image, secret) -> residual, both images in [0, 1]."""

    def __init__(self, channels: int, size: int, bits: int, width: int, max_residual: float = 0.0):
        super().__init__()
        self.channels, self.size, self.max_residual = channels, size, max_residual
        self.secret_dense = nn.Linear(bits, channels * size * size)
        widths = [width * 2 ** min(i, 3) for i in range(_levels(size) + 1)]
        self.stem = nn.Conv2d(2 * channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.up = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in zip(widths, widths[1:]))
        self.merge = nn.ModuleList(nn.Conv2d(2 * a, a, 3, padding=1) for a in widths[1:-1])
        self.last = nn.Conv2d(2 * widths[0] + 2 * channels, widths[0], 3, padding=1)
        self.residual = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.secret_dense(secret - 0.5)).view(-1, self.channels, self.size, self.size)
        inputs = torch.cat([s.expand(len(x), -1, -1, -1), x - 0.5], 1)
        skips = [F.relu(self.stem(inputs))]
        for conv in self.down:
            skips.append(F.relu(conv(skips[-1])))
        h = skips.pop()
        for level in reversed(range(len(self.up))):
            h = F.relu(self.up[level](F.interpolate(h, scale_factor=2.0, mode="nearest")))
            skip = skips.pop()
            h = torch.cat([skip, h], 1)
            h = F.relu(self.merge[level - 1](h)) if level > 0 else F.relu(self.last(torch.cat([h, inputs], 1)))
        r = self.residual(h)
        return self.max_residual / 255.0 * torch.tanh(r) if self.max_residual > 0 else r


class StegaDecoder(nn.Module):
    """Image in [0, 1] -> one logit per secret bit."""

    def __init__(self, channels: int, size: int, bits: int, width: int):
        super().__init__()
        layers, c = [], channels
        for i in range(_levels(size)):
            w = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        side = size // 2 ** _levels(size)
        hidden = 8 * width * 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Linear(hidden, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x - 0.5))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two batches of float images in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


class SSBA(Attack):
    name, title = "ssba", "SSBA"

    @dataclass(frozen=True)
    class Options:
        bits: int = 16                 # length of the hidden secret
        width: int = 16                # channels of the first level of encoder and decoder
        steps: int = 1500              # encoder/decoder training steps
        batch_size: int = 32
        lr: float = 1e-3               # Adam
        secret_weight: float = 1.5     # BackdoorBox's weights (with LPIPS 1.5 beside the L2 term)
        image_weight: float = 10.0     # L2 of the residual; larger: more invisible, harder to decode
        secret_only_steps: int = 300   # no image loss at first (StegaStamp's no_im_loss_steps)
        ramp_steps: int = 600          # then image loss and noise rise linearly to full weight
        noise: float = 2.0             # std of the Gaussian noise after uint8 rounding, pixels out of 255
        max_residual: float = 0.0      # tanh bound on the residual, pixels out of 255; 0: unbounded
        holdout: float = 0.1           # share of the training images kept out to measure PSNR and bits

    @classmethod
    def check_options(cls, opts):
        positive = {"bits": opts.bits, "width": opts.width, "steps": opts.steps, "batch_size": opts.batch_size,
                    "lr": opts.lr, "secret_weight": opts.secret_weight}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"attack.options.{key} must be > 0, got {value}")
        for key in ("image_weight", "noise", "max_residual"):
            if getattr(opts, key) < 0:
                raise ConfigError(f"attack.options.{key} must be >= 0, got {getattr(opts, key)}")
        for key in ("secret_only_steps", "ramp_steps"):
            if getattr(opts, key) < 0:
                raise ConfigError(f"attack.options.{key} must be >= 0, got {getattr(opts, key)}")
        if opts.secret_only_steps >= opts.steps:
            raise ConfigError(f"attack.options.secret_only_steps ({opts.secret_only_steps}) must be less than "
                              f"attack.options.steps ({opts.steps}): the image loss would never start")
        if opts.bits > 256:
            raise ConfigError(f"attack.options.bits must be at most 256, got {opts.bits}")
        if opts.max_residual > 255:
            raise ConfigError(f"attack.options.max_residual must lie in [0, 255], got {opts.max_residual}")
        if not 0.0 < opts.holdout < 1.0:
            raise ConfigError(f"attack.options.holdout must lie in (0, 1), got {opts.holdout}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.encoder: StegaEncoder | None = None
        self.decoder: StegaDecoder | None = None
        self.secret: torch.Tensor | None = None    # float [bits] in {0, 1}
        self.stats: dict = {}                       # psnr, bit_acc, ... of the held-out images
        self.trained = False                        # whether the last prepare() trained (not loaded)
        self.history: list = []                     # running bit accuracy and PSNR while training

    # ---- networks --------------------------------------------------------------------------
    def build_networks(self) -> tuple[StegaEncoder, StegaDecoder]:
        c, s, o = self.info.channels, self.info.size, self.opts
        return StegaEncoder(c, s, o.bits, o.width, o.max_residual), StegaDecoder(c, s, o.bits, o.width)

    @staticmethod
    def make_secret(bits: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 7919)
        return torch.randint(0, 2, (bits,), generator=g).float()

    def _require(self):
        if self.encoder is None:
            raise RuntimeError("SSBA's encoder is built by prepare(...); call it first")

    @torch.no_grad()
    def residual(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The encoder's raw residual for float images in [0, 1] (before clipping)."""
        self._require()
        enc = self.encoder
        if next(enc.parameters()).device != x.device:
            enc.to(x.device)
        enc.eval()
        secret = self.secret.to(x.device)[None]
        out = [enc(x[i:i + batch_size].float(), secret) for i in range(0, len(x), batch_size)]
        return torch.cat(out).to(x.dtype) if out else torch.zeros_like(x)

    def trigger(self, x, y=None):
        return (x + self.residual(x)).clamp(0.0, 1.0)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The decoder's bits (0/1 float) for images, uint8 or float in [0, 1]."""
        self._require()
        dec = self.decoder
        x = to_float(x)
        if next(dec.parameters()).device != x.device:
            dec.to(x.device)
        dec.eval()
        out = [(dec(x[i:i + batch_size]) > 0).float() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.opts.bits, device=x.device)

    def bit_accuracy(self, x: torch.Tensor) -> float:
        """Share of the secret's bits the decoder reads from images ``x``."""
        bits = self.decode(x)
        return float((bits == self.secret.to(bits.device)).float().mean()) if len(bits) else float("nan")

    # ---- the generated resource --------------------------------------------------------------
    def resource_inputs(self, key: str, train, seed: int) -> dict:
        sample = train.x[:: max(1, len(train) // 512)].contiguous()
        return {"key": key, "seed": seed, "options": asdict(self.opts), "version": VERSION,
                "shape": list(train.x.shape), "data": hashlib.sha256(sample.numpy().tobytes()).hexdigest()}

    def split(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training, held-out) indices of the encoder's data."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729))
        k = min(max(1, int(round(self.opts.holdout * n))), n - 1) if n > 1 else 0
        return perm[k:].sort().values, perm[:k].sort().values

    def prepare(self, train, *, seed, cache_dir, key, device="cpu", clean_model=None):
        self.secret = self.make_secret(self.opts.bits, seed)
        self.encoder, self.decoder = self.build_networks()
        path = self.resource_path(cache_dir, self.resource_inputs(key, train, seed))
        t = self.load_resource(path)
        if t is not None:
            self.encoder.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("encoder.")})
            self.decoder.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("decoder.")})
            self.secret = t["secret"]
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            self.stats = json.loads(meta.get("stats", "{}"))
            self.history = json.loads(meta.get("history", "[]"))
            self.encoder.eval(), self.decoder.eval()
            self.trained = False
            return
        fit_idx, held_idx = self.split(len(train), seed)
        start = time.perf_counter()
        how = self.train_networks(train.x[fit_idx], seed=seed, device=device)
        self.stats = {"train_seconds": round(time.perf_counter() - start, 2)} | how | self.measure(train.x[held_idx])
        self.trained = True
        if path is not None:
            tensors = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
            tensors |= {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
            tensors["secret"] = self.secret
            save_tensors(path, tensors, metadata={"stats": json.dumps(self.stats),
                                                          "history": json.dumps(self.history)})

    def measure(self, x_u8: torch.Tensor) -> dict:
        """PSNR (dB) of the uint8 poisoned images against ``x_u8`` and the decoder's bit accuracy
        on them for the fixed secret; also on the clean images (should be ~chance)."""
        if not len(x_u8):
            return {}
        dev = next(self.encoder.parameters()).device
        x_u8 = x_u8.to(dev)
        poisoned = self.apply(x_u8)
        p = psnr(to_float(poisoned), to_float(x_u8))
        return {"psnr": round(float(p.mean()), 3), "psnr_min": round(float(p.min()), 3),
                "bit_acc": round(self.bit_accuracy(poisoned), 4),
                "bit_acc_clean": round(self.bit_accuracy(x_u8), 4),
                "linf": int((poisoned.int() - x_u8.int()).abs().max())}

    @torch.enable_grad()
    def train_networks(self, x_u8: torch.Tensor, *, seed: int, device="cpu") -> dict:
        """StegaStamp training on uint8 images ``x_u8`` with random secrets; returns how it went.

        Phase 1 trains on the secret loss alone, for at least ``secret_only_steps`` steps and
        until the running bit accuracy reaches ``LEARNED`` (for at most ``steps`` more), so that
        the image loss never arrives before the decoder reads anything: it would squeeze the
        residual to nothing and the secret would never be learned (the plateau StegaStamp's
        fixed ``no_im_loss_steps`` can fall into on a small data set). Phase 2 ramps the image
        loss and the noise in over ``ramp_steps``; it lasts ``steps - secret_only_steps``."""
        o, device = self.opts, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder, self.decoder = self.build_networks()
        enc, dec = self.encoder.to(device).train(), self.decoder.to(device).train()
        g = torch.Generator().manual_seed(seed + 1)
        gd = torch.Generator(device=device).manual_seed(seed + 2)
        data = x_u8.to(device)
        n = len(data)
        bs = min(o.batch_size, n)
        opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=o.lr)
        order, pos = torch.randperm(n, generator=g).to(device), 0
        acc, step, start, self.history = 0.5, 0, None, []
        while True:
            if start is None and step >= o.secret_only_steps and (acc >= LEARNED or step >= o.secret_only_steps + o.steps):
                start = step
            if start is not None and step >= start + o.steps - o.secret_only_steps:
                break
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g).to(device), 0
            x = to_float(data[order[pos:pos + bs]])
            pos += bs
            secret = torch.randint(0, 2, (bs, o.bits), generator=gd, device=device).float()
            ramp = 0.0 if start is None else min(1.0, (step - start + 1) / max(1, o.ramp_steps))
            encoded = (x + enc(x, secret)).clamp(0.0, 1.0)
            # what gets saved and read back: uint8 rounding (straight-through), then noise
            seen = encoded + (torch.round(encoded * 255.0) / 255.0 - encoded).detach()
            if o.noise > 0 and ramp > 0:
                seen = (seen + ramp * o.noise / 255.0 * torch.randn(seen.shape, generator=gd, device=device)).clamp(0, 1)
            logits = dec(seen)
            secret_loss = F.binary_cross_entropy_with_logits(logits, secret)
            image_loss = (encoded - x).pow(2).mean()
            loss = o.secret_weight * secret_loss + ramp * o.image_weight * image_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc = 0.9 * acc + 0.1 * float(((logits > 0).float() == secret).float().mean())
            if step % 50 == 0:
                self.history.append({"step": step, "bit_acc": round(acc, 4), "ramp": round(ramp, 3),
                                     "psnr": round(float(psnr(encoded.detach(), x).mean()), 2)})
            step += 1
        enc.eval(), dec.eval()
        return {"secret_only_steps": start, "steps": step, "train_bit_acc": round(acc, 4)}
