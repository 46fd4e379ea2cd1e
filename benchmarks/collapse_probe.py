"""Why FT-SAM collapses some models without BatchNorm (issue 11, notebook 13): two looks at a
family's backdoored models, measured on the defender's clean images only.

    python -m benchmarks.collapse_probe --params params/robust/digits_simple_cnn.yaml --seed 3 survey
    python -m benchmarks.collapse_probe --params params/robust/digits_simple_cnn.yaml --seed 3 trace --variant 4

``survey``: per variant of the family (cached models; a missing one is trained), before any update:
the share of each ReLU layer's units active on the clean images and the norm of each layer's
weights. ``trace``: the first ``--updates`` FT-SAM updates of one variant with the params file's
step (plus ``--defense-overrides``), batches drawn without augmentation from a generator seeded by
the run's seed: the loss at w, the norm of the gradient at w + eps before clipping, and the loss
on the clean images after the update. Prints a line each."""
from __future__ import annotations

import argparse
import copy
import json


def _setting(params: str, seed: int, n: int):
    from ftsam.config import load_config
    from ftsam.data import load_dataset
    from ftsam.robustness import variant_family
    cfg = load_config(params)
    _, _, info = load_dataset(cfg.data)
    return cfg, variant_family(info, seed=seed, n=n)


def _clean_images(run, dcfg):
    from ftsam.experiment import defender_clean_index
    data = run.clean_train.subset(defender_clean_index(run.clean_train, dcfg, run.cfg.seed))
    return data.x.float().div_(255.0), data.y


def _relu_activity(model):
    """Forward hooks on every ReLU: after a forward pass, ``share[i]`` is layer i's active share."""
    import torch
    share: dict[int, float] = {}
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    for i, r in enumerate(relus):
        r.register_forward_hook(lambda m, inp, out, i=i: share.__setitem__(i, (out > 0).float().mean().item()))
    return share, len(relus)


def survey(params: str, seed: int, n: int = 20) -> list[dict]:
    import torch

    from ftsam.experiment import train_backdoor
    cfg, family = _setting(params, seed, n)
    out = []
    for v in family:
        run = train_backdoor(cfg.with_overrides(v.overrides), progress=False)
        if not run.metrics["asr"] >= 80.0:
            continue
        x, y = _clean_images(run, run.cfg.defense)
        model = copy.deepcopy(run.model).eval()
        share, k = _relu_activity(model)
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(x), y).item()
        out.append({"label": v.label, "clean_loss": loss, "active": [share[i] for i in range(k)],
                    "weight_norms": [p.norm().item() for name, p in model.named_parameters() if name.endswith("weight")]})
    return out


def trace(params: str, seed: int, variant: int, updates: int = 16, n: int = 20,
          defense_overrides: dict | None = None) -> list[dict]:
    import torch

    from ftsam.defenses.ft_sam import sam_step
    from ftsam.experiment import defense_overrides as dov
    from ftsam.experiment import train_backdoor
    cfg, family = _setting(params, seed, n)
    run = train_backdoor(cfg.with_overrides(family[variant].overrides), progress=False)
    dcfg = run.cfg.with_overrides(dov("ft_sam", defense_overrides or {})).defense
    x, y = _clean_images(run, dcfg)
    model = copy.deepcopy(run.model).train()
    step = sam_step(model, dcfg.train, dcfg.ft_sam)
    g = torch.Generator().manual_seed(run.cfg.seed)
    bs, seen = dcfg.train.batch_size, {}

    def before_update():     # the step's gradient at w + eps is in .grad: its norm, then the params' clip
        seen["grad"] = torch.nn.utils.clip_grad_norm_(model.parameters(), dcfg.train.max_grad_norm or float("inf")).item()
    rows = []
    for it in range(updates):
        idx = torch.randperm(len(y), generator=g)[:bs]
        loss = step(x[idx], y[idx], before_update)
        with torch.no_grad():
            model.eval()
            after = torch.nn.functional.cross_entropy(model(x), y).item()
            model.train()
        rows.append({"update": it, "loss_w": loss.item(), "grad_at_w_eps": seen["grad"], "clean_loss_after": after})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True)
    ap.add_argument("--seed", type=int, required=True, help="seed of the variant family")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("survey")
    t = sub.add_parser("trace")
    t.add_argument("--variant", type=int, required=True)
    t.add_argument("--updates", type=int, default=16)
    t.add_argument("--defense-overrides", default="{}")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    rows = survey(args.params, args.seed, args.n) if args.what == "survey" else \
        trace(args.params, args.seed, args.variant, args.updates, args.n, json.loads(args.defense_overrides))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
