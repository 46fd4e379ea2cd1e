"""What the defender's clean images support on their own (issue 11): a fresh model of the params
file's architecture, trained from scratch with the defender's step (``defense.train``) on exactly
the clean subset a defense is given (:func:`ftsam.experiment.defender_clean_index`), measured on
the clean test set. A fine-tuning defense that must leave the backdoor's basin ends near this
number; notebook 13 and ``benchmarks/robustness_research.jsonl`` (rows ``defense: scratch``)
compare the defended models with it.

    python -m benchmarks.clean_baseline --params params/robust/fashion_mnist_small_simple_cnn.yaml
        [--epochs 120] [--clean-ratio 0.4]

Prints one JSON line: the params file, the number of clean images, the step and the accuracy."""
from __future__ import annotations

import argparse
import json


def clean_baseline(params: str, epochs: int | None = None, clean_ratio: float | None = None,
                   progress: bool | None = None) -> dict:
    import ftsam
    from ftsam.data import load_dataset
    from ftsam.experiment import defender_clean_index
    from ftsam.metrics import accuracy
    from ftsam.models import build_model
    from ftsam.train import fit, predict, seeded

    over = {}
    if epochs is not None:
        over["defense.train.epochs"] = epochs
    if clean_ratio is not None:
        over["defense.clean_ratio"] = clean_ratio
    cfg = ftsam.load_config(params, over or None)
    train, test, info = load_dataset(cfg.data)
    d = cfg.defense
    idx = defender_clean_index(train, d, cfg.seed)
    with seeded(cfg.seed):          # the initial weights are a draw of the run's seed too
        model = build_model(cfg.model, info)
    fit(model, train.subset(idx), d.train, seed=cfg.seed, desc="clean baseline", progress=progress)
    return {"params": params, "n_clean": len(idx), "clean_ratio": d.clean_ratio, "epochs": d.train.epochs,
            "lr": d.train.lr, "schedule": d.train.schedule, "acc": accuracy(predict(model, test.x), test.y)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True)
    ap.add_argument("--epochs", type=int, default=None, help="instead of defense.train.epochs")
    ap.add_argument("--clean-ratio", type=float, default=None, help="instead of defense.clean_ratio")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    print(json.dumps(clean_baseline(args.params, args.epochs, args.clean_ratio)))


if __name__ == "__main__":
    main()
