"""The ``ftsam`` command.

  ftsam purify --model M.safetensors --arch ARCH --data DIR [--defense ft_sam] [--out purified.safetensors]
  ftsam attack PARAMS [--attack SPEC]
  ftsam defend PARAMS --defense NAME [--attack SPEC]
  ftsam figures [PARAMS]
  ftsam list

Bad input (a params file with an unknown key, a model file that is a pickle or does not fit
the architecture, an unreadable image) ends with a one-line message and exit status 2, without
a traceback; files are written atomically, so a failure leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PURIFY_HELP = """\
Purify a model you trained yourself with FT-SAM (or another defense).

The data folder has the ImageFolder layout: DIR/train/<class>/*.png holds the clean images
you may fine-tune on (the defender's clean data), DIR/test/<class>/*.png a clean test set
(for ACC; without it only the accuracy on the clean data is reported). Classes are numbered in sorted order of their folder names: the model's output i
must be class i. Images are fed to the model as floats in [0, 1]; ftsam's architectures
normalize them with the training images' mean and std (or --mean/--std), any other model
must normalize them itself.

If you know the attack, --triggered TDIR (TDIR/<true class>/*.png: triggered test images)
with --target CLASS also measures the attack success rate (ASR) and robust accuracy (RA)
before and after.

example:
  ftsam purify --model backdoored.safetensors --arch resnet18 --data my_data \\
      --epochs 20 --out purified.safetensors
"""


def _value(text: str):
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _options(pairs: list[str]) -> dict:
    from ftsam.config import ConfigError
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE (e.g. ft_sam.eta=0.01, train.lr=0.02)")
        out[key.strip()] = _value(value.strip())
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ftsam", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="{purify,attack,defend,figures,list}")
    sub.required = True

    p = sub.add_parser("purify", help="purify a model you bring (safetensors + architecture) on your image folder",
                       description=PURIFY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the backdoored model's state dict, a .safetensors file (never a pickle)")
    p.add_argument("--arch", required=True,
                   help="its architecture: ftsam's (preactresnet18, vgg19_bn), a torchvision model name "
                        "(resnet18; 3-channel images), or module:callable returning the nn.Module")
    p.add_argument("--data", required=True, help="image folder: DIR/train/<class>/* (clean data), DIR/test/<class>/* (optional)")
    p.add_argument("--image-size", type=int, default=0, help="resize images to this size (default: as they are)")
    p.add_argument("--width", type=int, default=64, help="width of ftsam's architectures (default 64)")
    p.add_argument("--mean", type=float, nargs="+", help="normalization of ftsam's architectures (default: the data's)")
    p.add_argument("--std", type=float, nargs="+", help="(see --mean)")
    p.add_argument("--defense", default="ft_sam", help="which defense (default ft_sam; see: ftsam list)")
    p.add_argument("--settings", help="start from these settings: a name of params/paper/, params/robust/ or params/ "
                                      "(cifar10-preactresnet18, robust/digits_simple_cnn, offline; see: ftsam list) "
                                      "or a params file (default: the package's)")
    p.add_argument("--rho", type=float, help="FT-SAM's radius (defense.ft_sam.rho)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (defense.train.epochs)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (defense.train.lr)")
    p.add_argument("--batch-size", type=int, help="fine-tuning batch size (defense.train.batch_size)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any other setting of the defense section, repeatable (e.g. ft_sam.eta=0.01, train.hflip=false)")
    p.add_argument("--triggered", help="folder of triggered test images, TDIR/<true class>/* (to measure ASR)")
    p.add_argument("--target", help="the attack's target class (name or index), with --triggered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", default="purified.safetensors", help="where to write the purified state dict")
    p.add_argument("--report", help="also write the report (JSON) here (it is also in --out's metadata)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")

    def common(q, defense: bool):
        q.add_argument("params", help="a params file (params/*.yaml)")
        q.add_argument("--attack", help="attack spec, e.g. blended or badnets-a2a (default: the params file's)")
        if defense:
            q.add_argument("--defense", required=True, help="which defense (see: ftsam list)")
            q.add_argument("--option", action="append", metavar="KEY=VALUE",
                           help="change a setting of the defense section for this run, repeatable (e.g. rho=4)")
        q.add_argument("--cache-dir", default="runs", help="trained models are kept here (default ./runs)")
        q.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
        q.add_argument("--json", action="store_true", help="print the metrics as JSON")

    common(sub.add_parser("attack", help="train (or reuse) the backdoored model a params file describes; print ACC/ASR/RA"),
           defense=False)
    common(sub.add_parser("defend", help="apply a defense to that model; print ACC/ASR/RA/DER"), defense=True)
    f = sub.add_parser("figures", help="run every notebook headless with papermill (ftsam.batch)")
    f.add_argument("params", nargs="?", help="a params file (default: each notebook's own defaults)")
    f.add_argument("--device", default="auto")
    sub.add_parser("list", help="datasets, models, attacks and defenses with their options")
    return ap


def cmd_purify(args) -> int:
    import torch
    from ftsam.config import ConfigError
    from ftsam.data import DatasetInfo, ImageSet
    from ftsam.datasets_byo import _read_image, channel_stats, class_files, images_to_tensor, read_folder
    from ftsam.io import save_json
    from ftsam.purify import purify
    from ftsam.train import resolve_device
    from ftsam.user_model import load_user_model, refuse_pickles

    refuse_pickles(args.model)                 # before reading any images
    train, test, names = read_folder(args.data, args.image_size, need_test=False)
    mean, std = channel_stats(train)
    if args.mean or args.std:
        if not (args.mean and args.std and len(args.mean) == len(args.std) == train.x.shape[1]):
            raise ConfigError(f"--mean and --std need one value per channel ({train.x.shape[1]}) each")
        mean, std = tuple(args.mean), tuple(args.std)
    info = DatasetInfo("folder", train.x.shape[1], train.x.shape[-1], len(names), mean, std)
    model = load_user_model(args.model, args.arch, info, args.width).to(resolve_device(args.device))
    options = _options(args.option)
    for key in ("rho", "epochs", "lr", "batch_size"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    trigger = None
    if args.triggered or args.target is not None:
        if not (args.triggered and args.target is not None):
            raise ConfigError("--triggered and --target go together")
        if test is None:
            raise ConfigError(f"--triggered: ASR is measured beside a clean test set, and {args.data}/test/ is missing")
        target = names.index(args.target) if args.target in names else _int(args.target, len(names))
        files = class_files(Path(args.triggered), names)
        images = [_read_image(p) for p, _ in files]
        x = images_to_tensor(images, [p for p, _ in files], train.x.shape[1] == 1, args.image_size,
                             Path(args.triggered))
        y_true = torch.tensor([c for _, c in files])
        keep = y_true != target
        trigger = (x[keep], torch.full((int(keep.sum()),), target), y_true[keep])
        if x.shape[1:] != train.x.shape[1:]:
            raise ConfigError(f"--triggered: images are {tuple(x.shape[1:])}, the data's {tuple(train.x.shape[1:])}")
    out = purify(model, ImageSet(train.x, train.y), defense=args.defense, settings=args.settings, seed=args.seed,
                 test=test, poisoned_test=trigger, progress=args.progress or None, **options)
    out.save(args.out)
    if args.report:
        save_json(args.report, {k: v for k, v in out.report.items() if k != "found"})
    m = out.metrics
    print(f"{out.report['title']} on {out.report['clean']['images']} clean images, {len(out.history)} epochs, "
          f"{out.report['seconds']:.0f} s ({out.report['measured_on']})")
    for when in ("before", "after"):
        print(f"  {when:6s} " + "  ".join(f"{k.upper()} {v:.2f}" for k, v in m[when].items()))
    if "der" in m:
        print(f"  DER {m['der']:.2f}")
    print(f"wrote {args.out}")
    return 0


def _int(text: str, classes: int) -> int:
    from ftsam.config import ConfigError
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--target {text!r} is neither a class name of the data nor a class index") from None
    if not 0 <= value < classes:
        raise ConfigError(f"--target {value} is not a class index (0..{classes - 1})")
    return value


def _run(args):
    import ftsam
    from ftsam.experiment import train_backdoor, with_attack
    cfg = ftsam.load_config(args.params)
    if args.attack:
        cfg = with_attack(cfg, args.attack)
    return train_backdoor(cfg, cache_dir=args.cache_dir, device=args.device)


def _print_metrics(title: str, metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(f"{title}: " + "  ".join(f"{k.upper()} {v:.2f}" for k, v in metrics.items()))


def cmd_attack(args) -> int:
    run = _run(args)
    _print_metrics(f"{run.cfg.attack.name} on {run.cfg.data.name} ({run.run_dir})", run.metrics, args.json)
    return 0


def cmd_defend(args) -> int:
    from ftsam.defenses import defense_class
    from ftsam.experiment import defend
    defense_class(args.defense)                   # an unknown name fails before any training
    run = _run(args)
    result = defend(run, args.defense, _options(args.option))
    if not args.json:
        _print_metrics("backdoored", run.metrics, False)
    _print_metrics(result.title, result.metrics, args.json)
    return 0


def cmd_figures(args) -> int:
    from ftsam import batch
    return batch.main((["--params", args.params] if args.params else []) + ["--device", args.device])


def cmd_list(args) -> int:
    from ftsam.attacks import REGISTRY as ATTACKS
    from ftsam.config import MODELS
    from ftsam.datasets_byo import dataset_names
    from ftsam.defenses import describe
    from ftsam.purify import named_settings
    print("datasets (data.name): " + ", ".join(dataset_names()))
    print("models (model.name): " + ", ".join(MODELS) + "; ftsam purify --arch also takes torchvision names "
          "and module:callable")
    print("attacks (attack.name): " + ", ".join(ATTACKS))
    print("defenses (--defense), with their options (defense.<name>.<key>) and defaults:")
    for name, d in describe().items():
        opts = ", ".join(f"{k}={v!r}" for k, v in d["options"].items()) or "none"
        print(f"  {name:10s} {d['title']}: given {', '.join(d['given'])}; options: {opts}")
    print("settings (purify --settings): " + ", ".join(named_settings()))
    return 0


COMMANDS = {"purify": cmd_purify, "attack": cmd_attack, "defend": cmd_defend, "figures": cmd_figures, "list": cmd_list}


def _input_errors() -> tuple[type[BaseException], ...]:
    """What counts as bad input: a message and exit status 2, no traceback."""
    from ftsam import io
    from ftsam.config import ConfigError
    from ftsam.data import DatasetNotFound
    from ftsam.defenses import ThreatModelError
    return (ConfigError, io.CheckpointError, getattr(io, "DamagedFile", io.CheckpointError), DatasetNotFound,
            ThreatModelError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except _input_errors() as e:
        print(f"ftsam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ftsam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
