"""The ``ftsam`` command: purify end to end on an image folder of PNG files and a safetensors
model; attack/defend/list; bad input is a message and exit status 2, never a traceback or a
half-written file."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from byo_helpers import image_folder, write_pngs
from ftsam import experiment
from ftsam.cli import main
from ftsam.config import from_dict
from ftsam.data import load_dataset
from ftsam.io import CheckpointError, load_tensors, save_model
from ftsam.metrics import accuracy
from ftsam.train import predict
from ftsam.user_model import load_user_model

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory):
    """A PreAct-ResNet18 (width 4) with a BadNets backdoor, trained by ftsam on an image folder;
    saved as safetensors, with its triggered test images written as PNG files."""
    tmp = tmp_path_factory.mktemp("cli")
    data = image_folder(tmp / "data", 20, 5)
    cfg = from_dict({"data": {"name": "folder", "root": str(data)}, "model": {"width": 4},
                     "attack_train": {"epochs": 6, "batch_size": 32, "lr": 0.05, "crop_padding": 0, "hflip": False}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp / "runs", device="cpu", progress=False)
    save_model(tmp / "backdoored.safetensors", run.model)
    bd = run.test_bd
    write_pngs(tmp / "triggered", type(run.test)(bd.x, bd.y_true))
    return tmp, run


def _purify_args(tmp: Path, *more: str) -> list[str]:
    return ["purify", "--model", str(tmp / "backdoored.safetensors"), "--arch", "preactresnet18", "--width", "4",
            "--data", str(tmp / "data"), "--epochs", "3", "--batch-size", "32", "--rho", "5",
            "--option", "train.hflip=false", "--option", "train.crop_padding=1", *more]


def test_purify_end_to_end_from_the_command_line(backdoored, capsys):
    tmp, run = backdoored
    out, rep = tmp / "out" / "purified.safetensors", tmp / "out" / "report.json"
    assert main(_purify_args(tmp, "--triggered", str(tmp / "triggered"), "--target", "c0",
                             "--out", str(out), "--report", str(rep))) == 0
    printed = capsys.readouterr().out
    assert "FT-SAM on 200 clean images, 3 epochs" in printed and "ASR" in printed and f"wrote {out}" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["purified.safetensors", "report.json"]   # no temp files
    report = json.loads(rep.read_text())
    assert report["options"]["ft_sam"]["rho"] == 5.0 and report["options"]["train"]["hflip"] is False
    assert report["metrics"]["before"]["asr"] == pytest.approx(run.metrics["asr"])
    assert report["metrics"]["before"]["acc"] == pytest.approx(run.metrics["acc"])
    # the written model, loaded as a user would, has the ASR the report says on the triggered PNGs
    _, _, info = load_dataset(run.cfg.data)
    purified = load_user_model(out, "preactresnet18", info, width=4)
    bd = run.test_bd
    asr = accuracy(predict(purified, bd.x), bd.y_target)
    assert asr == pytest.approx(report["metrics"]["after"]["asr"])
    assert not torch.equal(load_tensors(out)["linear.weight"], run.model.linear.weight)


def test_a_failing_purify_writes_nothing(backdoored, capsys):
    tmp, _ = backdoored
    out = tmp / "never" / "purified.safetensors"
    assert main(_purify_args(tmp, "--option", "train.lr=-1", "--out", str(out))) == 2
    assert "defense.train.lr must be > 0" in capsys.readouterr().err
    assert not out.parent.exists()


def _torchscript(path: Path):
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))


@pytest.mark.parametrize("case, message", [
    ("torch_save", "is a PyTorch pickle"), ("pickle", "is a Python pickle"), ("torchscript", "is a TorchScript archive"),
    ("wrong_width", r"does not fit architecture 'preactresnet18'.*--width.*wrong shapes \(conv1.weight: file \(4, 1, 3, 3\), model \(8"),
    ("wrong_arch", "missing .*unexpected"), ("unknown_arch", "unknown architecture 'resnet1000'"),
    ("one_class", "found 1 class folder"), ("unreadable", "broken.png: not a readable image"),
    ("target", "--target 'c99' is neither")])
def test_bad_input_is_a_message_and_exit_2(backdoored, tmp_path, capsys, case, message):
    tmp, run = backdoored
    model, data, more = tmp / "backdoored.safetensors", tmp / "data", []
    arch = ["--arch", "preactresnet18", "--width", "4"]
    if case == "torch_save":
        model = tmp_path / "m.pt"
        torch.save(run.model.state_dict(), model)
    elif case == "pickle":
        model = tmp_path / "m.pkl"
        model.write_bytes(pickle.dumps({"a": 1}))
    elif case == "torchscript":
        model = tmp_path / "m.pt"
        _torchscript(model)
    elif case == "wrong_width":
        arch = ["--arch", "preactresnet18", "--width", "8"]
    elif case == "wrong_arch":
        arch = ["--arch", "vgg19_bn", "--width", "4"]
    elif case == "unknown_arch":
        arch = ["--arch", "resnet1000"]
    elif case == "one_class":
        data = tmp_path / "one"
        for split in ("train", "test"):
            (data / split / "only").mkdir(parents=True)
            for p in list((tmp / "data" / split / "c0").glob("*.png"))[:3]:
                (data / split / "only" / p.name).write_bytes(p.read_bytes())
    elif case == "unreadable":
        data = tmp_path / "bad"
        image_folder(data, 2, 1)
        (data / "train" / "c4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    elif case == "target":
        more = ["--triggered", str(tmp / "triggered"), "--target", "c99"]
    out = tmp_path / "out.safetensors"
    rc = main(["purify", "--model", str(model), *arch, "--data", str(data), "--epochs", "1", "--out", str(out), *more])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ftsam purify: error: ")
    import re
    assert re.search(message, err), err
    assert not out.exists()


def test_the_console_command_exits_2_without_a_traceback(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "m.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "ftsam", "purify", "--model", str(tmp_path / "m.pt"), "--arch", "resnet18",
                        "--data", str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 2 and "PyTorch pickle" in p.stderr and "Traceback" not in p.stderr


def test_help_is_something_a_user_can_follow(capsys):
    with pytest.raises(SystemExit) as e:
        main(["purify", "--help"])
    shown = capsys.readouterr().out
    assert e.value.code == 0 and "ImageFolder layout" in shown and "--triggered" in shown and "example:" in shown
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2 and "purify,attack,defend,figures,list" in capsys.readouterr().err.replace(" ", "")


def test_attack_defend_and_list_on_a_params_file(backdoored, tmp_path, capsys):
    tmp, _ = backdoored
    params = tmp_path / "mine.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"name": "folder", "root": str(tmp / "data")}, "model": {"width": 2},
        "attack_train": {"epochs": 1, "batch_size": 32},
        "defense": {"clean_ratio": 0.1, "train": {"epochs": 1, "batch_size": 32}}}))   # 2 clean images a class
    cache = ["--cache-dir", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(["attack", str(params), *cache, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"acc", "asr", "ra"}
    assert main(["defend", str(params), "--defense", "ft_sam", "--option", "rho=3", *cache, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"acc", "asr", "ra", "der"}
    assert main(["defend", str(params), "--defense", "nope", *cache]) == 2
    err = capsys.readouterr().err
    assert "unknown defense 'nope'; valid choices:" in err and "ft, ft_l2, ft_sam" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: folder, roots: x}\n")
    assert main(["attack", str(bad), *cache]) == 2
    assert "unknown key data.roots" in capsys.readouterr().err
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "folder, arrays" in listed and "ft_sam" in listed and "rho=2.0" in listed and "cifar10-preactresnet18" in listed
    assert "robust/digits_simple_cnn" in listed and "robust/digits_vgg19_bn" in listed


def test_a_torchvision_model_by_name_on_rgb_images(tmp_path, capsys):
    """--arch resnet18: torchvision's model with num_classes from the folder (3 classes here)."""
    import torchvision
    from ftsam.data import ImageSet
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 9), ("test", 3)):
        write_pngs(tmp_path / "rgb" / split, ImageSet(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                                                      torch.arange(n) % 3), names=["cat", "dog", "eel"])
    from safetensors.torch import save_file
    save_file(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), str(tmp_path / "r.safetensors"))
    out = tmp_path / "p.safetensors"
    assert main(["purify", "--model", str(tmp_path / "r.safetensors"), "--arch", "resnet18", "--data", str(tmp_path / "rgb"),
                 "--epochs", "1", "--batch-size", "9", "--out", str(out)]) == 0
    assert "before ACC" in capsys.readouterr().out and set(load_tensors(out)) == set(load_tensors(tmp_path / "r.safetensors"))


def test_figures_is_the_papermill_batch(monkeypatch):
    from ftsam import batch
    seen = []
    monkeypatch.setattr(batch, "main", lambda argv: seen.append(argv) or 0)
    assert main(["figures", "params/mine.yaml", "--device", "cpu"]) == 0 and main(["figures"]) == 0
    assert seen == [["--params", "params/mine.yaml", "--device", "cpu"], ["--device", "auto"]]


def test_an_architecture_given_as_module_callable(backdoored, tmp_path, capsys):
    from byo_helpers import small_cnn
    from safetensors.torch import save_file
    tmp, _ = backdoored
    save_file(small_cnn(10, 1).state_dict(), str(tmp_path / "cnn.safetensors"))
    args = ["purify", "--model", str(tmp_path / "cnn.safetensors"), "--data", str(tmp / "data"), "--epochs", "1",
            "--out", str(tmp_path / "p.safetensors")]
    assert main(args + ["--arch", "byo_helpers:small_cnn"]) == 0
    assert (tmp_path / "p.safetensors").is_file()
    assert main(args + ["--arch", "byo_helpers:not_a_model"]) == 2
    assert "returned a str, not an nn.Module" in capsys.readouterr().err
    assert main(args + ["--arch", "no_such_module_here:build"]) == 2
    assert "cannot import it" in capsys.readouterr().err


def test_without_a_test_folder_only_the_clean_data_accuracy_is_reported(backdoored, tmp_path, capsys):
    import shutil
    from byo_helpers import small_cnn
    from safetensors.torch import save_file
    tmp, _ = backdoored
    shutil.copytree(tmp / "data" / "train", tmp_path / "only_train" / "train")
    save_file(small_cnn(10, 1).state_dict(), str(tmp_path / "cnn.safetensors"))
    args = ["purify", "--model", str(tmp_path / "cnn.safetensors"), "--arch", "byo_helpers:small_cnn",
            "--data", str(tmp_path / "only_train"), "--epochs", "1", "--out", str(tmp_path / "p.safetensors")]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "CLEAN_DATA_ACC" in shown and "training accuracy, not a test" in shown
    assert main(args + ["--triggered", str(tmp / "triggered"), "--target", "0"]) == 2
    assert "test/ is missing" in capsys.readouterr().err


def test_a_safetensors_file_whose_header_length_starts_with_a_pickle_byte_loads(tmp_path):
    """A safetensors file begins with its header's length (8 bytes, little-endian); when that
    length's low byte is 0x80, the file's first byte is a pickle's. It is still safetensors."""
    from safetensors.torch import save_file

    from ftsam.user_model import refuse_pickles
    path = tmp_path / "m.safetensors"
    for pad in range(300):                      # metadata padding moves the header's length
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    refuse_pickles(path)                        # no error
    pkl = tmp_path / "m.pkl"
    pkl.write_bytes(pickle.dumps({"a": torch.zeros(2).tolist()}))
    with pytest.raises(CheckpointError, match="is a Python pickle"):
        refuse_pickles(pkl)
