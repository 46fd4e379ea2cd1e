"""The one training loop, for attack training and for every fine-tuning defense. Its unit is
the *step* (forward, backward and update for one batch): :func:`sgd_step` here, FT-SAM's
two-pass step in :mod:`ftsam.defenses.ft_sam`, each defense's own where it lives.

Data stay uint8 tensors on the device; each batch is converted, augmented as a whole
(random crop with padding, horizontal flip), optionally poisoned on the fly, and fed to the
model. Every random choice comes from a generator seeded by (seed, epoch), so a run is
reproducible and a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ftsam.config import TrainConfig
from ftsam.data import ImageSet

BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class TrainableHook(Protocol):
    """The trainable parts behind a ``batch_hook`` (an attack's trigger generator), which
    ``fit`` trains together with the model.

    - ``extra_loss()``: a term added to the loss of the batch the hook returned last (``None``: none).
    - ``after_step(lr_factor)``: runs after the model's optimizer step; steps the hook's own
      optimizers and clears their gradients. ``lr_factor`` is the model's current learning rate
      over ``cfg.lr``, for optimizers that follow the model's schedule.
    - ``state_tensors()`` / ``load_state_tensors(tensors)``: the hook's state, saved in and
      restored from the checkpoint."""

    def extra_loss(self) -> torch.Tensor | None: ...

    def after_step(self, lr_factor: float) -> None: ...

    def state_tensors(self) -> dict[str, torch.Tensor]: ...

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


GLOBAL_STREAM = 1 << 40   # offsets the global random state's per-epoch seed from the generator's


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def augment(x: torch.Tensor, padding: int, hflip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of a whole batch, any dtype.

    Crop and flip are one gather (each output pixel picks its source pixel), so the batch is
    copied once; ``fit`` runs it on the uint8 batch, before the conversion to float. The
    random draws are dy, dx (with padding), then the flips (with ``hflip``)."""
    n, c, h, w = x.shape
    if not padding and not hflip:
        return x.contiguous()
    rows = torch.arange(h, device=x.device).expand(n, h)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if padding:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
        rows, cols = rows + dy[:, None], cols + dx[:, None]                 # [n, h], [n, w] in the padded image
        x = F.pad(x, (padding,) * 4)
    if hflip:
        flip = torch.rand(n, generator=g, device=x.device) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    src = (rows[:, :, None] * x.shape[3] + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, -1).gather(2, src).reshape(n, c, h, w)
    if padding and c == 1:
        # Same memory, channels_last strides: what the earlier per-pixel-indexing crop returned
        # for one channel. Torch then runs the convolutions channels_last (on CPU ~8% faster
        # for the offline default, and not bitwise equal to NCHW), so it is kept as it was.
        out = out.view(n, h, w, 1).permute(0, 3, 1, 2)
    return out


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(model: nn.Module, x_u8: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu") -> torch.Tensor:
    """Predicted labels for uint8 images, in eval mode (the model's mode is restored)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x_u8), batch_size):
        xb = x_u8[i:i + batch_size].to(device, non_blocking=True).float().div_(255.0)
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            out.append(model(xb).argmax(1))
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.empty(0, dtype=torch.long)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)   # one row per evaluation: epoch, metrics, loss


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, epoch: int, it: int, iters_per_epoch: int) -> float:
    """The learning rate of update ``it`` of ``epoch``: the schedule's, times the linear warmup's
    factor (update k of the first ``warmup_epochs`` epochs' n updates: k / n, k = 1..n)."""
    step = epoch * iters_per_epoch + it
    warm = min(1.0, (step + 1) / (cfg.warmup_epochs * iters_per_epoch)) if cfg.warmup_epochs else 1.0
    if cfg.schedule == "constant":
        return warm * cfg.lr
    if cfg.schedule == "cosine":        # stepped per epoch, T_max = epochs
        return warm * 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
    # cosine_per_iter: the authors' quirk (T_max in iterations)
    return warm * 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.cosine_t_max))


# ---- steps: forward, backward and update for one batch ----------------------------------
Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def classification_loss(label_smoothing: float = 0.0) -> Loss:
    """Cross-entropy of ``model(x)`` against ``y`` (under bf16 autocast on CUDA)."""
    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with autocast(xb.device):
            return F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
    return loss


class Step(Protocol):
    """What :func:`fit` runs on every batch: forward, backward and the update of ``optimizer``
    (whose learning rate ``fit`` sets from the schedule before each call). ``before_update``, when
    given, is called once the gradients the update will use are in ``.grad``. Returns the loss
    of the batch at the current weights. A step with state of its own (beyond the optimizer's)
    also has ``state_tensors()`` and ``load_state_tensors(tensors)``, kept in the checkpoint."""
    optimizer: torch.optim.Optimizer

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor,
                 before_update: Callable[[], None] | None = None) -> torch.Tensor: ...


@dataclass
class SGDStep:
    """The plain step: ``loss(model, x, y).backward()``, then the optimizer's update."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Loss

    def __call__(self, xb, yb, before_update=None):
        loss = self.loss(self.model, xb, yb)
        loss.backward()
        if before_update is not None:
            before_update()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def sgd_step(model: nn.Module, cfg: TrainConfig, loss: Loss | None = None,
             optimizer: torch.optim.Optimizer | None = None) -> SGDStep:
    """A plain step with ``cfg``'s optimizer (SGD, momentum, weight decay) and, by default,
    cross-entropy with ``cfg.label_smoothing``."""
    return SGDStep(model, optimizer or make_optimizer(model, cfg), loss or classification_loss(cfg.label_smoothing))


def _before_update(model: nn.Module, max_grad_norm: float, on_update, epoch: int, it: int):
    """What a step calls once the update's gradients are in ``.grad``: clip them to
    ``max_grad_norm`` (when set), then show them to ``on_update``; None when there is nothing to do."""
    if not max_grad_norm and on_update is None:
        return None

    def before_update():
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if on_update is not None:
            on_update(epoch, it, model)
    return before_update


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu"):
    """Torch's global random state seeded with ``seed`` inside the block and restored after it:
    the draws of dropout and of library code that takes no generator come from the run's seed."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        yield


def fit(model: nn.Module, data: ImageSet, cfg: TrainConfig, step: Step | None = None, *, seed: int,
        device: str | torch.device = "cpu", batch_hook: BatchHook | None = None,
        evaluate: Callable[[nn.Module], dict] | None = None, checkpoint: str | Path | None = None,
        on_update: Callable[[int, int, nn.Module], None] | None = None,
        trainable: TrainableHook | None = None,
        desc: str = "train", progress: bool | None = None) -> FitResult:
    """Train ``model`` on ``data`` for ``cfg.epochs`` epochs, running ``step`` on every batch
    (default: :func:`sgd_step` with ``cfg``'s settings; FT-SAM passes its two-pass step).

    ``batch_hook`` poisons batches on the fly. ``evaluate(model)`` is called every
    ``cfg.eval_every`` epochs and after the last; its dict goes into the history.
    ``on_update(epoch, iteration, model)`` sees the gradients the optimizer is about to use (for
    FT-SAM: those at w + eps), after ``cfg.max_grad_norm``'s clipping. With ``checkpoint``, the
    state (model, the step's optimizer and any state of the step) is saved after each epoch
    (atomically) and a run finds and resumes it.
    ``trainable`` (see :class:`TrainableHook`) is trained alongside the model with the default
    step (the batches ``batch_hook`` returns may keep a graph to it; its loss term is added to
    the model's); its state is part of the checkpoint. ``progress=None`` shows a tqdm bar only
    in a terminal."""
    from ftsam.checkpoint import load_train_state, save_train_state
    if trainable is not None and step is not None:
        raise ValueError("fit: a trainable batch hook is trained with fit's own SGD step; pass no step "
                         "(a two-pass step such as SAM's would backpropagate through the hook's graph again)")
    device = torch.device(device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x_all, y_all = data.x.to(device), data.y.to(device)
    n = len(data)
    drop_last = cfg.drop_last and n > cfg.batch_size and n % cfg.batch_size < max(2, cfg.batch_size // 4)
    iters = n // cfg.batch_size if drop_last else math.ceil(n / cfg.batch_size)
    if step is None:
        loss = classification_loss(cfg.label_smoothing)
        if trainable is not None:
            def loss(m, xb, yb, _ce=loss):   # the hook's term (e.g. Input-aware's diversity loss)
                out = _ce(m, xb, yb)
                extra = trainable.extra_loss()
                return out if extra is None else out + extra
        step = sgd_step(model, cfg, loss)
    opt = step.optimizer
    result, start = FitResult(), 0
    if checkpoint is not None and Path(checkpoint).is_file():
        start, result.history = load_train_state(
            checkpoint, model, opt, trainable.load_state_tensors if trainable is not None else None,
            getattr(step, "load_state_tensors", None))

    bar = tqdm(range(start, cfg.epochs), desc=desc, initial=start, total=cfg.epochs,
               disable=None if progress is None else not progress, leave=False)
    # Dropout and any other draw without a generator: the global state, forked for this fit and
    # reseeded from (seed, epoch) every epoch, so a resumed run draws what an uninterrupted one did.
    with seeded(seed, device):
        for epoch in bar:
            torch.manual_seed(seed * 100_003 + epoch + GLOBAL_STREAM)
            model.train()
            g = epoch_generator(seed, epoch, device)
            order = torch.randperm(n, generator=g, device=device)
            total = torch.zeros((), device=device)
            for it in range(iters):
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, epoch, it, iters)
                idx = order[it * cfg.batch_size:(it + 1) * cfg.batch_size]
                xb = augment(x_all[idx], cfg.crop_padding, cfg.hflip, g).float().div_(255.0)
                yb = y_all[idx]
                if batch_hook is not None:
                    xb, yb = batch_hook(xb, yb, g)
                if device.type == "cuda":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                loss = step(xb, yb, _before_update(model, cfg.max_grad_norm, on_update, epoch, it))
                if trainable is not None:
                    trainable.after_step(opt.param_groups[0]["lr"] / cfg.lr if cfg.lr else 1.0)
                total += loss.detach()
            row = {"epoch": epoch + 1, "loss": float(total) / max(1, iters)}
            if evaluate is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                row.update(evaluate(model))
                bar.set_postfix({k: round(v, 2) for k, v in row.items() if isinstance(v, float)})
            result.history.append(row)
            if checkpoint is not None:
                save_train_state(checkpoint, model, opt, epoch + 1, result.history,
                                 trainable.state_tensors() if trainable is not None else None,
                                 step.state_tensors() if hasattr(step, "state_tensors") else None)
    bar.close()
    model.eval()
    return result
