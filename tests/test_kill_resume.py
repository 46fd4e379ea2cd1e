"""A training run killed with SIGKILL after an epoch and started again ends bitwise where an
uninterrupted run ends, for every kind of model and attack whose training draws random numbers
of its own: PreAct-ResNet18, VGG19-BN (dropout), WaNet (on-the-fly warps and noise samples) and
Input-aware (a generator trained with the victim)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ftsam.config import from_dict
from ftsam.experiment import train_backdoor

CASES = {
    "preactresnet18-badnets": ({"name": "preactresnet18", "width": 2}, {"name": "badnets"}),
    "vgg19_bn-badnets": ({"name": "vgg19_bn", "width": 4}, {"name": "badnets"}),
    "preactresnet18-wanet": ({"name": "preactresnet18", "width": 2}, {"name": "wanet"}),
    "preactresnet18-input_aware": ({"name": "preactresnet18", "width": 2},
                                   {"name": "input_aware", "options": {"channels": 4, "mask_epochs": 1}}),
}

# Runs in a child process: the same training, SIGKILLed right after the state of epoch 2 is on disk.
# The child uses the parent's thread count: a float reduction split over 1 thread and over 2
# differs in the last bits, and that is not what this test is about.
CHILD = """
import json, os, signal, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
import ftsam.checkpoint as ck
from ftsam.config import from_dict
from ftsam.experiment import train_backdoor
save = ck.save_train_state
def save_then_die(path, model, opt, epoch, *a, **kw):
    save(path, model, opt, epoch, *a, **kw)
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_train_state = save_then_die
train_backdoor(from_dict(json.loads(sys.argv[1])), cache_dir=sys.argv[2], device="cpu", progress=False)
"""


def config(model: dict, attack: dict) -> dict:
    return {"seed": 1, "data": {"name": "digits", "image_size": 16, "train_per_class": 16, "test_per_class": 4},
            "model": model, "attack": attack,
            "attack_train": {"epochs": 4, "batch_size": 32, "lr": 0.05, "crop_padding": 1}}


@pytest.mark.parametrize("case", list(CASES))
def test_sigkilled_run_resumes_bitwise(tmp_path, case):
    d = config(*CASES[case])
    killed = subprocess.run([sys.executable, "-c", CHILD, json.dumps(d), str(tmp_path / "killed"),
                             str(torch.get_num_threads())],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]           # it really died by SIGKILL
    states = list((tmp_path / "killed").glob("*/train_state.safetensors"))
    assert len(states) == 1                                          # ... leaving epoch 2's state behind
    resumed = train_backdoor(from_dict(d), cache_dir=tmp_path / "killed", device="cpu", progress=False)
    whole = train_backdoor(from_dict(d), cache_dir=tmp_path / "whole", device="cpu", progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == whole.history and resumed.metrics == whole.metrics
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for k, v in whole.attack.state_tensors().items():                # Input-aware's generator and optimizer
        assert torch.equal(v, resumed.attack.state_tensors()[k]), k
