"""5. The GPU path. ``fit`` and ``predict`` differ on CUDA in three ways: the model and every
batch are channels_last, the forward runs under bf16 autocast, and the data sit on the device.
Without a GPU the first two are exercised on the CPU: ``fit`` (FT-SAM) and ``predict`` run
with ``ftsam.train.autocast`` swapped for CPU bf16 autocast and a channels_last model (the
convolutions then run channels_last as on the GPU), and are compared with the float32 run."""
from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.common import Section
from ftsam.config import load_config
from ftsam.data import clean_subset, load_dataset
from ftsam.defenses.ft_sam import sam_step
from ftsam.models import build_model


@contextmanager
def cpu_bf16_autocast():
    import ftsam.train as T
    saved = T.autocast
    T.autocast = lambda device: torch.autocast("cpu", dtype=torch.bfloat16)
    try:
        yield
    finally:
        T.autocast = saved


def run(quick: bool = False) -> Section:
    from ftsam.metrics import accuracy
    from ftsam.sam import SAM
    from ftsam.train import fit, predict, resolve_device
    sec = Section("5. GPU path")
    if torch.cuda.is_available():
        sec.add(f"A CUDA device is visible ({torch.cuda.get_device_name(0)}), but these benchmarks time the CPU; "
                "GPU timings are not part of this report.", "")
    else:
        sec.add("**Not measured: no GPU lent in this session** (torch sees no CUDA device). What can be checked "
                "on the CPU is below.", "")
    sec.add("On CUDA, `fit` and `predict` make the model and every batch channels_last, run the forward under "
            "bf16 autocast, and keep the data on the device. The first two are exercised here on the CPU: `fit` "
            "(FT-SAM) and `predict` run with `ftsam.train.autocast` swapped for CPU bf16 autocast on a "
            "channels_last model (its convolutions then run channels_last, as on the GPU), against float32.", "")
    try:
        resolve_device("cuda")
        cuda_msg = "returned a device"
    except RuntimeError as e:
        cuda_msg = f"raises RuntimeError: {e}"
    sec.add(f"- `resolve_device('cuda')` without a GPU {cuda_msg}")

    cfg = load_config("params/offline.yaml")
    train, test, info = load_dataset(cfg.data)
    idx = clean_subset(train, cfg.defense.clean_ratio, cfg.seed)
    clean = train.subset(idx)
    tcfg = dataclasses.replace(cfg.defense.train, epochs=2 if quick else 4)
    torch.manual_seed(0)
    base = build_model(cfg.model, info)
    fit(base, train, dataclasses.replace(cfg.attack_train, epochs=3), seed=0, progress=False)  # a model that classifies
    w0 = torch.cat([p.detach().flatten() for p in base.parameters()])
    runs = {}
    for name, cl, bf16 in (("float32, NCHW", False, False), ("bf16 autocast, channels_last", True, True)) * 2:
        m = copy.deepcopy(base)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        t = time.perf_counter()
        with cpu_bf16_autocast() if bf16 else _null():
            hist = fit(m, clean, tcfg, sam_step(m, tcfg, cfg.defense.ft_sam), seed=0, progress=False).history
            pred = predict(m, test.x.contiguous(memory_format=torch.channels_last) if cl else test.x)
        runs[name] = (m, hist, accuracy(pred, test.y), time.perf_counter() - t)     # the second (warm) run counts
    (m32, h32, acc32, t32), (m16, h16, acc16, t16) = runs.values()
    cl_ok = all(p.is_contiguous(memory_format=torch.channels_last) for p in m16.parameters() if p.ndim == 4)
    w16, w32 = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (m16, m32))
    drift = ((w16 - w32).norm() / (w32 - w0).norm()).item()
    finite = all(torch.isfinite(p).all() for p in m16.parameters())
    # SAM on a channels_last model keeps its T_w buffers channels_last (no layout conversion per step)
    sam = SAM(torch.optim.SGD(m16.parameters(), lr=0.0), m16, 1.0, eta=0.01)      # eta > 0: T_w has buffers
    for p in m16.parameters():
        p.grad = torch.ones_like(p)
    sam.ascent_step()
    sam.descent_step()
    scratch = getattr(sam, "_scratch", {})
    buf_ok = bool(scratch) and all(b.stride() == p.stride() for p in m16.parameters()
                                   for b in [scratch.get(id(p))] if b is not None)
    sec.add(f"- FT-SAM `fit` ({tcfg.epochs} epochs on the offline default's {len(clean)} clean images) and `predict` "
            f"ran under bf16 autocast with a channels_last model: weights finite: {finite}; conv weights still "
            f"channels_last after training: {cl_ok}; SAM's T_w buffers have the parameters' strides: {buf_ok}.",
            f"- Against the float32 run: final loss {h16[-1]['loss']:.4f} vs {h32[-1]['loss']:.4f}; test accuracy "
            f"{acc16:.1f}% vs {acc32:.1f}%; the two runs' weights differ by {100 * drift:.1f}% of how far "
            "float32 fine-tuning moved them (bf16 rounding in every forward).",
            f"- Time on this CPU (second run of each): {t16:.2f} s (bf16, channels_last) vs {t32:.2f} s (float32); "
            "not an estimate of GPU time.", "")
    recorded_gpu_runs(sec)
    return sec


GPU_RECORDS = Path(__file__).parent / "gpu"


def recorded_gpu_runs(sec: Section, folder: Path = GPU_RECORDS) -> None:
    """What a lent GPU measured, from the rows its session recorded in ``benchmarks/gpu/*.jsonl``
    (robustness-suite rows plus the GPU's name and torch; the scripts that wrote them lie beside
    them, and ``<name>.md`` says what the session saw). This machine cannot remeasure them, so
    they are shown as recorded, with their date."""
    import json
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        return
    sec.add("### Recorded on a lent GPU", "",
            "Rows of `python -m benchmarks.robustness_suite --device cuda`, as recorded in `benchmarks/gpu/` with the "
            "scripts that ran them. `attack` is the backdoored model's whole run (poisoning, training, evaluation), "
            "FT and FT-SAM the defenses' (training and evaluation; about 0 where a run came from the cache).", "")
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line]
        note = f.with_suffix(".md")
        if note.exists():
            sec.add(note.read_text().strip(), "")
        alone = [r for r in rows if r["measurement"] == "alone"]
        if alone:
            sec.add(f"One process alone on the GPU ({alone[0]['gpu']}, torch {alone[0]['gpu_torch']}, "
                    f"{alone[0]['date']}):", "")
            sec.table(["run", "variant", "config overrides", "attack s", "FT s", "FT-SAM s"],
                      [[r["run"], r.get("label", ""), f"`{r['overrides']}`", f"{r['attack_s']:.1f}", f"{r['FT s']:.1f}",
                        f"{r['FT-SAM s']:.1f}"] for r in alone])
            sec.add(*_epoch_times({r["run"]: r for r in alone}), "")
        shared = [r for r in rows if r["measurement"] != "alone"]
        if shared:
            sec.add(f"Processes sharing the GPU ({shared[0]['measurement']}, {shared[0]['date']}), the rows that finished:", "")
            sec.table(["run", "variant", "attack s", "FT s", "FT-SAM s"],
                      [[r["run"], r["label"], f"{r['attack_s']:.0f}", f"{r['FT s']:.0f}", f"{r['FT-SAM s']:.0f}"]
                       for r in shared])
            sec.add("")


def _epoch_times(by_run: dict[str, dict]) -> list[str]:
    """For each pair of runs ``<name>_e1`` / ``<name>_e3`` (1 and 3 epochs of attack training and of
    each defense): the time of one epoch of each, and, where the rows name their params file, one
    suite variant at that file's epochs."""
    from ftsam.config import load_config
    lines = []
    for name in sorted({k[:-3] for k in by_run if k.endswith(("_e1", "_e3"))}):
        a, b = by_run.get(f"{name}_e1"), by_run.get(f"{name}_e3")
        if a is None or b is None:
            continue
        attack, ft, sam = ((b[k] - a[k]) / 2 for k in ("attack_s", "FT s", "FT-SAM s"))
        line = (f"- {name}: one epoch of attack training {attack:.1f} s, of FT {ft:.2f} s and of FT-SAM {sam:.2f} s "
                "(from 3 epochs minus 1)")
        if "params" in a:
            cfg = load_config(a["params"])
            ea, ed = cfg.attack_train.epochs, cfg.defense.train.epochs
            variant = a["attack_s"] + a["FT s"] + a["FT-SAM s"] + (ea - 1) * attack + (ed - 1) * (ft + sam)
            line += (f"; so one suite variant at `{a['params']}`'s epochs ({ea} attack, {ed} defense) takes about "
                     f"{variant:.0f} s alone, and a 20-variant family about {20 * variant / 60:.0f} min per defender's setting")
        lines.append(line + ".")
    return lines


@contextmanager
def _null():
    yield
