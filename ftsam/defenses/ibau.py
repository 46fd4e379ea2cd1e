"""i-BAU, implicit Backdoor Adversarial Unlearning (Zeng et al., ICLR 2022): unlearn the backdoor
by solving min_theta max_delta of the loss on clean images plus one universal perturbation
delta, with the hypergradient through the inner maximiser computed by the implicit function
theorem.

Per round, as the authors' code (``YiZeng623/I-BAU``, its CIFAR-10 notebook) runs it, with the
model in eval mode throughout (BatchNorm's running statistics and dropout fixed):

1. inner: delta = 0, then one pass over the defender's clean batches, each an SGD step
   (lr ``delta_lr`` 10) maximising CE(f(clip(x + delta)), f's own prediction) - 0.001 ||delta||^2;
   finally delta is projected into the L2 ball of radius ``norm_bound`` (10 on 3x32x32 images);
2. outer: for every clean batch, an Adam step (lr 1e-3, the authors' default) on the model with
   the hypergradient of L_o(theta) = CE(f(clip(x + delta*(theta))), y), delta added to
   ``perturbed_share`` of the batch (the authors' code: 1%, here at least one image); delta*(theta)
   is the fixed point of the gradient map Phi(delta, theta) = delta - 0.1 grad_delta L_i with
   L_i = -CE(f(clip(x_0 + delta)), y_0) + 0.001 ||delta||^2 on the first batch.

:func:`implicit_hypergradient` is the authors' fixed-point method (from Grazzi et al.'s
hypertorch): v = sum_k (d Phi/d delta)^T^k dL_o/d delta, K terms, and the hypergradient
dL_o/d theta + (d Phi/d theta)^T v.

Where this departs from BackdoorBench: its lr is 1e-4 and its delta is neither clipped nor
projected (the authors' ``defense.py`` leaves the projection commented out too; their notebook,
whose numbers the paper reports, applies both); it runs on normalised inputs (here delta lives in
[0, 1] pixel space; the model normalises); it hard-codes CUDA. The losses run in float32 (no
autocast: the map is differentiated twice). Each round's end is checkpointed under
``ctx.state_dir``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ftsam.checkpoint import load_train_state, save_train_state
from ftsam.config import ConfigError
from ftsam.defenses.base import Context, Defended, Defense, Given


def implicit_hypergradient(delta: torch.Tensor, params: Sequence[torch.Tensor],
                           outer_loss: Callable[[torch.Tensor], torch.Tensor],
                           inner_loss: Callable[[torch.Tensor], torch.Tensor],
                           inner_lr: float, K: int, tol: float = 1e-10) -> list[torch.Tensor]:
    """d/d theta of ``outer_loss(delta*(theta))`` at a fixed point ``delta`` of the gradient map
    Phi(delta) = delta - inner_lr * grad_delta inner_loss(delta) (both losses depend on ``params``,
    theta, through their closures).

    Implicit function theorem: d delta*/d theta = (I - d Phi/d delta)^-1 d Phi/d theta, so the
    hypergradient is dL_o/d theta + (d Phi/d theta)^T v with v = (I - d Phi/d delta)^-T dL_o/d delta,
    approximated by K fixed-point iterations v <- (d Phi/d delta)^T v + dL_o/d delta from v = 0 (a
    truncated Neumann series; stops early once v moves less than ``tol``)."""
    delta = delta.detach().requires_grad_(True)
    params = list(params)
    grads = torch.autograd.grad(outer_loss(delta), [delta, *params], allow_unused=True)
    g_delta = grads[0]
    direct = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], params)]
    inner_grad = torch.autograd.grad(inner_loss(delta), delta, create_graph=True)[0]
    mapped = delta - inner_lr * inner_grad                       # Phi(delta, theta), with its graph
    v = torch.zeros_like(delta)
    for _ in range(K):
        prev = v
        v = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)[0] + g_delta
        if float((v - prev).norm()) < tol:
            break
    through = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    return [d if t is None else d + t for d, t in zip(direct, through)]


def universal_perturbation(model: nn.Module, batches: list[torch.Tensor], opts: "IBAU.Options") -> torch.Tensor:
    """The round's delta: one pass of SGD steps raising the loss against the model's own
    predictions, then the projection into the L2 ball of radius ``norm_bound``."""
    delta = torch.zeros_like(batches[0][:1], requires_grad=True)
    opt = torch.optim.SGD([delta], lr=opts.delta_lr)
    for xb in batches:
        with torch.no_grad():
            own = model(xb).argmax(1)
        loss = -F.cross_entropy(model((xb + delta).clamp(0, 1)), own) + opts.delta_reg * delta.pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[delta])
        opt.step()
    delta = delta.detach()
    return delta * min(1.0, opts.norm_bound / max(float(delta.norm()), 1e-12))


class IBAU(Defense):
    name, title = "ibau", "i-BAU"
    needs = ("model", "clean")

    @dataclass(frozen=True)
    class Options:
        rounds: int = 5                 # n_rounds: each a new delta, then one pass of outer steps
        K: int = 5                      # fixed-point iterations of the hypergradient
        lr: float = 1e-3                # Adam on the model (authors; BackdoorBench 1e-4)
        batch_size: int = 100           # the authors' unlearning loader
        inner_lr: float = 0.1           # step of the fixed-point map Phi
        delta_lr: float = 10.0          # SGD on delta in the inner pass
        delta_reg: float = 0.001        # weight of ||delta||^2 in the inner losses
        norm_bound: float = 10.0        # L2 radius of delta, in [0, 1] pixel units (3x32x32 images)
        perturbed_share: float = 0.01   # share of each outer batch given delta (at least one image)

    @classmethod
    def check_options(cls, o):
        for key in ("rounds", "K", "batch_size"):
            if getattr(o, key) < 1:
                raise ConfigError(f"defense.ibau.{key} must be >= 1, got {getattr(o, key)!r}")
        for key in ("lr", "inner_lr", "delta_lr", "norm_bound"):
            if not getattr(o, key) > 0:
                raise ConfigError(f"defense.ibau.{key} must be > 0, got {getattr(o, key)!r}")
        if not o.delta_reg >= 0:
            raise ConfigError(f"defense.ibau.delta_reg must be >= 0, got {o.delta_reg!r}")
        if not 0 < o.perturbed_share <= 1:
            raise ConfigError(f"defense.ibau.perturbed_share must lie in (0, 1], got {o.perturbed_share!r}")

    def outer_step(self, model: nn.Module, opt: torch.optim.Optimizer, delta: torch.Tensor,
                   xb: torch.Tensor, yb: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                   g: torch.Generator) -> float:
        """One Adam step on the model with the implicit hypergradient; returns the outer loss."""
        o, params = self.opts, [p for p in model.parameters() if p.requires_grad]
        pick = torch.randperm(len(xb), generator=g)[:max(1, int(o.perturbed_share * len(xb)))]
        which = torch.zeros(len(xb), 1, 1, 1, device=xb.device)
        which[pick.to(xb.device)] = 1.0
        seen = []

        def outer(d):
            loss = F.cross_entropy(model((xb + which * d).clamp(0, 1)), yb)
            seen.append(float(loss.detach()))
            return loss

        def inner(d):
            return -F.cross_entropy(model((x0 + d).clamp(0, 1)), y0) + o.delta_reg * d.pow(2).sum()

        grads = implicit_hypergradient(delta, params, outer, inner, o.inner_lr, o.K)
        opt.zero_grad(set_to_none=True)
        for p, gr in zip(params, grads):
            p.grad = gr
        opt.step()
        return seen[0]

    def run(self, given: Given, ctx: Context) -> Defended:
        model, clean, o = given.model, given.clean, self.opts
        model.to(ctx.device).eval()                    # eval mode throughout, as the authors
        order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(ctx.seed))
        batches = [(clean.x[i].to(ctx.device).float().div(255), clean.y[i].to(ctx.device))
                   for i in order.split(o.batch_size)]  # a fixed split, as the authors' list of batches
        opt = torch.optim.Adam(model.parameters(), lr=o.lr)
        state = ctx.state_file("ibau_state")
        start, history, delta = 0, [], torch.zeros_like(batches[0][0][:1])
        if state is not None and state.is_file():
            def load_delta(t):
                nonlocal delta
                delta = t["delta"].to(ctx.device)
            start, history = load_train_state(state, model, opt, load_delta)
        bar = tqdm(range(start, o.rounds), desc=self.title, initial=start, total=o.rounds, leave=False,
                   disable=None if ctx.progress is None else not ctx.progress)
        for r in bar:
            model.eval()
            delta = universal_perturbation(model, [xb for xb, _ in batches], o)
            g = torch.Generator().manual_seed(ctx.seed * 100_003 + r)
            x0, y0 = batches[0]
            losses = [self.outer_step(model, opt, delta, xb, yb, x0, y0, g) for xb, yb in batches]
            row = {"epoch": r + 1, "loss": sum(losses) / len(losses), "delta_norm": float(delta.norm())}
            if ctx.evaluate is not None:
                row.update(ctx.evaluate(model))
            history.append(row)
            if state is not None:
                save_train_state(state, model, opt, r + 1, history, {"delta": delta})
        bar.close()
        model.eval()
        return Defended(model, history, {"delta": delta.cpu(), "rounds": [row["loss"] for row in history]})
