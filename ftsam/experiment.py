"""The experiment pipeline the notebooks call: train (or reuse) a backdoored model, then
defend it. Runs are cached under ``cache_dir`` by a hash of the config sections they depend
on and by a fingerprint of the dataset's files, so the defense notebook reuses the attack
notebook's model, and an interrupted run resumes from its last epoch. Each run directory is
locked while it is worked on (:func:`ftsam.io.run_lock`): a second process on the same run
waits, then reuses the result. A damaged cached file is reported and the run is built again."""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ftsam.attacks import Attack, PoisonedTestSet, PoisonedTrainSet, build_attack
from ftsam.config import Config, ConfigError, DefenseConfig, stable_hash
from ftsam.data import SUBSET_SEED, CacheWarning, DatasetInfo, ImageSet, clean_subset, load_dataset, per_class_indices
from ftsam.defenses import Context, Given, NotApplicableError, build_defense, defense_class
from ftsam.io import (DamagedFile, load_json, load_model, load_tensors, run_lock, save_json, save_model,
                      save_tensors)
from ftsam.metrics import accuracy, der, evaluate
from ftsam.models import build_model
from ftsam.train import fit, predict, resolve_device, seed_everything, seeded


@dataclass
class AttackRun:
    cfg: Config
    info: DatasetInfo
    attack: Attack
    model: nn.Module
    clean_train: ImageSet
    poisoned: PoisonedTrainSet
    test: ImageSet
    test_bd: PoisonedTestSet
    metrics: dict
    history: list
    run_dir: Path
    device: torch.device


@dataclass
class DefenseRun:
    name: str
    title: str
    metrics: dict                      # acc, asr, ra, der
    history: list                      # epoch 0 is the backdoored model
    clean_index: list
    model: nn.Module = field(repr=False)
    found: dict = field(default_factory=dict, repr=False)   # what the defense found (see Defended)


MODE_SUFFIX = {"a2o": "all2one", "a2a": "all2all"}


def last_evaluation(history: list[dict], evaluate, model: nn.Module) -> dict:
    """ACC/ASR/RA of the trained ``model``: those of ``fit``'s evaluation after its last epoch
    (same weights, so the same numbers), or ``evaluate(model)`` when the history has none."""
    last = history[-1] if history else {}
    keys = ("acc", "asr", "ra")
    return {k: last[k] for k in keys} if all(k in last for k in keys) else evaluate(model)


def with_attack(cfg: Config, spec: str) -> Config:
    """``cfg`` with the attack named by ``spec``: a name ("blended"), optionally with the
    target mapping ("badnets-a2a", "badnets-a2o"). Options in the params file are kept
    when they belong to the same attack, else the attack's defaults apply; then the params
    file's ``attack_settings[name]`` overrides (e.g. more epochs for WaNet) are applied."""
    name, _, suffix = spec.partition("-")
    if suffix and suffix not in MODE_SUFFIX:
        raise ConfigError(f"attack spec {spec!r}: unknown suffix {suffix!r}; valid: {', '.join(MODE_SUFFIX)}")
    mode = MODE_SUFFIX[suffix] if suffix else cfg.attack.mode
    options = cfg.attack.options if name == cfg.attack.name else {}
    overrides = {"attack.name": name, "attack.mode": mode, "attack.options": options}
    settings = cfg.settings_for(name)
    if suffix:      # the spec's mapping wins over a mode in attack_settings
        settings = {k: v for k, v in settings.items() if k != "attack.mode"}
    return cfg.with_overrides(overrides | settings)


def attack_label(cfg: Config) -> str:
    """The paper's name for an attack setting, e.g. "BadNets-A2O", "Blended"."""
    from ftsam.attacks import attack_class
    title = attack_class(cfg.attack.name).title
    return f"{title}-{'A2O' if cfg.attack.mode == 'all2one' else 'A2A'}" if cfg.attack.name == "badnets" else title


def attack_key(cfg: Config, info: DatasetInfo | None = None) -> str:
    digest = _config_digest(cfg, "seed", "data", "model", "attack", "attack_train")
    return f"{cfg.data.name}-{cfg.model.name}-{cfg.attack.name}-{digest}" + _content_key(cfg, info)


def clean_key(cfg: Config, info: DatasetInfo | None = None) -> str:
    digest = _config_digest(cfg, "seed", "data", "model", "attack_train")
    return f"{cfg.data.name}-{cfg.model.name}-clean-{digest}" + _content_key(cfg, info)


def _config_digest(cfg: Config, *sections: str) -> str:
    """:meth:`Config.digest` of ``sections``, leaving out where the data lies (``data.root``): the
    content key stands for the data, and a moved checkout keeps its runs."""
    d = {k: v for k, v in cfg.to_dict().items() if k in sections}
    d["data"] = {k: v for k, v in d["data"].items() if k != "root"}
    return stable_hash(d)


def _content_key(cfg: Config, info: DatasetInfo | None) -> str:
    """The dataset's :attr:`DatasetInfo.fingerprint` (the names, sizes and modification times of a
    built-in dataset's files; the content of one the user brings, ftsam.datasets_byo), so changed
    files never return an old model. Digits, read from inside scikit-learn, have none."""
    if info is not None and info.fingerprint:
        return f"-{info.fingerprint}"
    if info is None and cfg.data.name != "digits":
        raise ValueError(f"the cache key of dataset {cfg.data.name!r} needs its loaded DatasetInfo (content fingerprint)")
    return ""


def _rebuilding(e: DamagedFile) -> None:
    warnings.warn(f"damaged cache entry: {e}; training that run again", CacheWarning, stacklevel=3)


def _readable_state(path: Path) -> Path:
    """``path``, a run's training state, when it is absent or readable; an unreadable one (a
    truncated copy, a full disk) is reported and removed, so the run starts again."""
    if path.is_file():
        try:
            load_tensors(path)
        except DamagedFile as e:
            warnings.warn(f"{e}; starting that run again from its first epoch", CacheWarning, stacklevel=3)
            path.unlink()
    return path


def defender_clean_index(train: ImageSet, dcfg: DefenseConfig, seed: int) -> torch.Tensor:
    """The indices of the defender's clean subset of ``train``: ``dcfg.clean_ratio`` of it, drawn
    with the run's ``seed``, balanced per class where ``dcfg.clean_sampling`` says so. The one
    place that draws it: :func:`defend` and the benchmarks that measure what a defender is given."""
    return clean_subset(train, dcfg.clean_ratio, seed, balanced=dcfg.clean_sampling == "balanced")


def prepared_attack(cfg: Config, info: DatasetInfo, train: ImageSet, cache_dir: str | Path = "runs",
                    device="cpu", progress: bool | None = None) -> Attack:
    """``cfg``'s attack with what its trigger needs built (:meth:`Attack.prepare`: a UAP, an encoder,
    an optimised trigger; cached under ``cache_dir/resources``), from the clean model of ``cfg``
    (:func:`train_clean`) where it needs one."""
    attack = build_attack(cfg.attack, info)
    attack.prepare(train, seed=cfg.seed, cache_dir=Path(cache_dir) / "resources",
                   key=clean_key(cfg, info), device=device,
                   clean_model=lambda: train_clean(cfg, cache_dir, device, progress))
    return attack


def train_clean(cfg: Config, cache_dir: str | Path = "runs", device: str = "auto",
                progress: bool | None = None) -> nn.Module:
    """A model trained on the clean training set with the attack-training settings (what
    LF, Trojan and CLA build their triggers from), cached like a backdoored model."""
    device = resolve_device(str(device))
    train, test, info = load_dataset(cfg.data)
    run_dir = Path(cache_dir) / clean_key(cfg, info)
    model_file = run_dir / "model.safetensors"
    with run_lock(run_dir):
        seed_everything(cfg.seed)
        model = build_model(cfg.model, info)
        if model_file.is_file():
            try:
                return load_model(model_file, model).to(device).eval()
            except DamagedFile as e:
                _rebuilding(e)
                seed_everything(cfg.seed)
                model = build_model(cfg.model, info)
        state = _readable_state(run_dir / "train_state.safetensors")
        fitted = fit(model, train, cfg.attack_train, seed=cfg.seed, device=device, checkpoint=state,
                     evaluate=lambda m: {"acc": accuracy(predict(m, test.x, device=device), test.y)},
                     desc="clean model", progress=progress)
        save_model(model_file, model)
        save_json(run_dir / "result.json", {"config": cfg.to_dict(), "history": fitted.history})
        state.unlink(missing_ok=True)
    return model.eval()


def train_backdoor(cfg: Config, cache_dir: str | Path = "runs", device: str = "auto",
                   progress: bool | None = None, retrain: bool = False) -> AttackRun:
    """Poison the training set, train the victim model, and measure ACC/ASR/RA.

    A model trained with the same config before is loaded from ``cache_dir`` instead. An
    attack with trainable trigger networks (``attack.trainable``, e.g. Input-aware) is trained
    with the model; its state is saved as ``attack.safetensors`` beside the model, and its
    poisoned test set is made after training (or loading) from the trained networks."""
    device = resolve_device(device)
    train, test, info = load_dataset(cfg.data)
    attack = prepared_attack(cfg, info, train, cache_dir, device, progress)
    run_dir = Path(cache_dir) / attack_key(cfg, info)
    poisoned = attack.poison_trainset(train, cfg.seed)
    trainable = attack.trainable
    test_bd = None if trainable else attack.poison_testset(test)
    model_file, result_file = run_dir / "model.safetensors", run_dir / "result.json"
    attack_file = run_dir / "attack.safetensors"
    with run_lock(run_dir):   # a second process on this run waits here, then reuses the result
        seed_everything(cfg.seed)
        model = build_model(cfg.model, info)
        result = None
        if model_file.is_file() and result_file.is_file() and (not trainable or attack_file.is_file()) and not retrain:
            try:
                result = load_json(result_file)
                load_model(model_file, model)
                if trainable:
                    attack.load_state_tensors(load_tensors(attack_file))
                    test_bd = attack.poison_testset(test)
                model.to(device).eval()
            except DamagedFile as e:
                _rebuilding(e)
                result = None
                seed_everything(cfg.seed)
                model = build_model(cfg.model, info)
        if result is None:
            hook = attack.poison_batch if attack.on_the_fly else None
            state = _readable_state(run_dir / "train_state.safetensors")

            def ev(m):   # a trainable attack's test set changes as its networks train
                return evaluate(m, test, attack.poison_testset(test) if trainable else test_bd, device)
            fitted = fit(model, poisoned.data, cfg.attack_train, seed=cfg.seed, device=device, batch_hook=hook,
                         evaluate=ev,
                         checkpoint=state, trainable=attack if trainable else None,
                         desc=f"attack {cfg.attack.name}", progress=progress)
            if trainable:
                test_bd = attack.poison_testset(test)
                save_tensors(attack_file, attack.state_tensors())
            final = last_evaluation(fitted.history, lambda m: evaluate(m, test, test_bd, device), model)
            result = {"config": cfg.to_dict(), "metrics": fitted.history[-1] | final,
                      "history": fitted.history, "poison_index": poisoned.poison_index.tolist()}
            save_model(model_file, model)
            save_json(result_file, result)
            state.unlink(missing_ok=True)
    metrics = {k: result["metrics"][k] for k in ("acc", "asr", "ra")}
    return AttackRun(cfg, info, attack, model, train, poisoned, test, test_bd, metrics, result["history"],
                     run_dir, device)


def defense_overrides(defense: str, overrides: dict | None) -> dict:
    """``overrides`` of the defense section as dotted keys of the whole config: keys relative to
    ``defense.`` ("ft_sam.rho", "train.epochs", "clean_ratio"), or the bare name of one of the
    defense's own options ("rho" for ``defense.ft_sam.rho``)."""
    own = defense_class(defense).option_defaults()
    out = {}
    for key, value in (overrides or {}).items():
        head = key.split(".")[0]
        if head in own and head not in DefenseConfig.COMMON:
            key = f"{defense}.{key}"
        out[f"defense.{key}"] = value
    return out


def detection_scores(found: dict, poison_index: torch.Tensor, key: str | None) -> dict:
    """Precision and recall (%) of the training samples a defense flagged as poisoned
    (``found[key]``: indices into the poisoned training set, ``key`` being the defense's
    ``flags_samples``) against the attack's ``poison_index``; measured by the pipeline, never by
    the defense. ``None`` where undefined (nothing flagged; no poisoned sample, as for the attacks
    that poison on the fly); ``{}`` for a defense that flags no samples (``key`` None)."""
    if key is None:
        return {}
    if key not in found:
        raise KeyError(f"the defense declares its flagged samples in found[{key!r}], but found has {sorted(found)}")
    flagged = set(torch.as_tensor(found[key], dtype=torch.long).flatten().tolist())
    poisoned = set(torch.as_tensor(poison_index, dtype=torch.long).flatten().tolist())
    hits = len(flagged & poisoned)
    return {"precision": 100.0 * hits / len(flagged) if flagged else None,
            "recall": 100.0 * hits / len(poisoned) if poisoned else None}


def defend(run: AttackRun, defense: str, overrides: dict | None = None, progress: bool | None = None,
           rerun: bool = False, on_update=None) -> DefenseRun:
    """Apply ``defense`` (any of :data:`ftsam.defenses.REGISTRY`) to the backdoored run.

    The defense is given only what its threat model declares (:mod:`ftsam.defenses.base`): a copy
    of the backdoored model, the defender's clean subset, or the poisoned training set; never the
    test set or the trigger. The pipeline measures the result on the test set afterwards.
    ``overrides`` change the defense section for this call only (see :func:`defense_overrides`),
    e.g. ``{"rho": 4.0}`` or ``{"train.epochs": 10}``. ``on_update(epoch, iteration, model)``
    watches every update of a fine-tuning defense (see :func:`ftsam.train.fit`); a cached result
    is not reused then, since the updates must happen to be watched. Results are cached under the
    run's directory by the defense's own cache key, so changing one defense's options never
    reruns another."""
    cfg = run.cfg.with_overrides(defense_overrides(defense, overrides))
    dcfg: DefenseConfig = cfg.defense
    impl = build_defense(defense, dcfg)
    if "poisoned" in impl.needs and run.attack.on_the_fly:
        # WaNet and Input-aware draw their poisons batch by batch while the victim trains: the
        # training set the defender could be handed holds no poisoned image, so a defense that
        # inspects it (AC, ABL) would only train a clean model. A fixed snapshot of poisoned
        # images (as BackdoorBench saves) is not implemented.
        raise NotApplicableError(f"defense {defense!r} reads the poisoned training set, but attack "
                                 f"{run.cfg.attack.name!r} poisons inside the training loop, so that set holds no "
                                 f"poisoned image; {defense!r} applies to the attacks that poison the data")
    out_dir = run.run_dir / f"{defense}-{stable_hash(impl.cache_inputs(cfg))}"
    # the defender's clean subset, drawn only for a defense that is given one (AC and ABL are not)
    idx = defender_clean_index(run.clean_train, dcfg, cfg.seed) if "clean" in impl.needs \
        else torch.empty(0, dtype=torch.long)

    def new_model():
        return build_model(cfg.model, run.info).to(run.device)
    given = Given(defense, impl.needs, model=copy.deepcopy(run.model), clean=run.clean_train.subset(idx),
                  poisoned=run.poisoned.data, new_model=new_model, scratch_train=cfg.attack_train)
    result_file, model_file = out_dir / "result.json", out_dir / "model.safetensors"
    found_file = out_dir / "found.safetensors"

    def ev(m):
        return evaluate(m, run.test, run.test_bd, run.device)
    monitor = ev
    if dcfg.monitor_per_class:
        mon_test, mon_bd = monitor_subset(run.test, run.test_bd, dcfg.monitor_per_class)

        def monitor(m):
            return evaluate(m, mon_test, mon_bd, run.device)

    with run_lock(out_dir):   # a second process on this defense waits here, then reuses the result
        result = None
        if result_file.is_file() and model_file.is_file() and not rerun and on_update is None:
            try:
                result = load_json(result_file)
                found = result.get("found", {}) | (load_tensors(found_file) if found_file.is_file() else {})
                # a fresh model where the defense was not given the backdoored one (the Given would
                # refuse new_model to a defense that declares neither "model" nor "poisoned")
                model = impl.restore(copy.deepcopy(run.model) if "model" in impl.needs else new_model(), found)
                load_model(model_file, model)
            except DamagedFile as e:
                _rebuilding(e)
                result = None
        if result is None:
            for state in out_dir.glob("*state*.safetensors"):
                _readable_state(state)
            ctx = Context(seed=cfg.seed, device=run.device, state_dir=out_dir, progress=progress, evaluate=monitor,
                          on_update=on_update)
            with seeded(cfg.seed, run.device):
                out = impl.run(given, ctx)
            model, found = out.model, out.found
            if monitor is ev:
                final = last_evaluation(out.history, ev, model)
            else:   # the monitor saw a subset: the reported metrics (and the curve's last point) use all of it
                final = ev(model)
                if out.history and "asr" in out.history[-1]:
                    out.history[-1].update(final)
            final["der"] = der(run.metrics["acc"], run.metrics["asr"], final["acc"], final["asr"])
            history = [{"epoch": 0, **run.metrics}] + out.history
            tensors = {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}
            result = {"defense": defense, "config": cfg.to_dict()["defense"], "metrics": final, "history": history,
                      "clean_index": idx.tolist(), "found": {k: v for k, v in found.items() if k not in tensors}}
            if tensors:
                save_tensors(found_file, tensors)
            save_model(model_file, model)
            save_json(result_file, result)
            for state in out_dir.glob("*state*.safetensors"):
                state.unlink(missing_ok=True)
    model.eval()
    # The scores of flagged samples derive from ``found``, so they are computed here, not stored;
    # result files written before ``flags_samples`` existed stored them (a bogus pair for NC, whose
    # flagged classes were read as sample indices), hence those keys are dropped first.
    metrics = {k: v for k, v in result["metrics"].items() if k not in ("precision", "recall")} \
        | detection_scores(found, run.poisoned.poison_index, impl.flags_samples)
    return DefenseRun(defense, impl.title, metrics, result["history"], result["clean_index"], model, found)


def monitor_subset(test: ImageSet, test_bd: PoisonedTestSet, per_class: int) -> tuple[ImageSet, PoisonedTestSet]:
    """A fixed, class-balanced part of the test set and of its triggered copy (at most ``per_class``
    images of each true class), for the per-epoch curves of a defense: evaluating everything after
    every epoch would cost as much as the fine-tuning itself on the small settings."""
    g = lambda: torch.Generator().manual_seed(SUBSET_SEED)       # noqa: E731  the same draw every time
    keep = per_class_indices(test.y, per_class, g())
    keep_bd = per_class_indices(test_bd.y_true, per_class, g())
    return test.subset(keep), PoisonedTestSet(test_bd.x[keep_bd], test_bd.y_target[keep_bd], test_bd.y_true[keep_bd])


@dataclass
class AttackTable:
    """Every attack of a list on one setting: the backdoored runs, FT and FT-SAM against each,
    and the clean model's ACC they are measured against (what notebook 09 prints and checks)."""
    cfg: Config
    runs: dict                         # label -> AttackRun (its cfg: the attack with its attack_settings)
    results: dict                      # label -> {defense name: DefenseRun}
    clean_acc: float
    skipped: dict = field(default_factory=dict)   # label -> {defense name: why it does not apply}

    def status(self, implant_asr: float = 85.0, implant_acc_gap: float = 3.0,
               removed_asr: float = 10.0, removed_acc_loss: float = 5.0) -> dict:
        """Per attack: ``implanted`` (ASR >= implant_asr with ACC within implant_acc_gap points of
        the clean model) and ``removed`` (FT-SAM to ASR <= removed_asr losing at most
        removed_acc_loss points of the backdoored model's ACC): issue 3's bounds by default."""
        out = {}
        for label, run in self.runs.items():
            bd, sam = run.metrics, self.results[label]["ft_sam"].metrics
            out[label] = {"implanted": bd["asr"] >= implant_asr and self.clean_acc - bd["acc"] <= implant_acc_gap,
                          "removed": sam["asr"] <= removed_asr and bd["acc"] - sam["acc"] <= removed_acc_loss}
        return out

    def summary(self) -> dict:
        """The table's metrics as plain data (what notebook 09 writes to its results JSON)."""
        return {label: {"backdoored": run.metrics, "clean_acc": self.clean_acc,
                        **{name: r.metrics | {k: r.found[k] for k in defense_class(name).reported if k in r.found}
                           for name, r in self.results[label].items()}}
                for label, run in self.runs.items()}


def attack_table(cfg: Config, attacks: list[str], cache_dir: str | Path = "runs", device: str = "auto",
                 defenses: tuple[str, ...] = ("ft", "ft_sam")) -> AttackTable:
    """Train (or reuse) each attack of ``attacks`` on ``cfg`` with its ``attack_settings``, a
    clean model of the same setting, and apply each of ``defenses`` to every backdoored model."""
    configs = [with_attack(cfg, spec) for spec in attacks]
    runs = {attack_label(c): train_backdoor(c, cache_dir=cache_dir, device=device) for c in configs}
    clean_model = train_clean(cfg, cache_dir=cache_dir, device=device)
    any_run = next(iter(runs.values()))
    clean_acc = accuracy(predict(clean_model, any_run.test.x, device=any_run.device), any_run.test.y)
    results, skipped = {}, {}
    for label, run in runs.items():
        results[label] = {}
        for d in defenses:
            try:
                results[label][d] = defend(run, d)
            except NotApplicableError as e:
                skipped.setdefault(label, {})[d] = str(e)
    return AttackTable(cfg, runs, results, clean_acc, skipped)
