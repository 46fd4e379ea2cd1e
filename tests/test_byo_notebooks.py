"""A dataset the user brings (an image folder) in a params file runs notebooks 01_attack and
02_defense through papermill unchanged (about a minute: two kernels, a tiny model)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from byo_helpers import image_folder

REPO = Path(__file__).resolve().parent.parent


def test_notebooks_01_and_02_run_on_an_image_folder(tmp_path, monkeypatch):
    import papermill as pm
    monkeypatch.setenv("PYTHONPATH", str(REPO))      # the kernels import this checkout's ftsam
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = image_folder(tmp_path / "my_images", 10, 5)
    params = tmp_path / "my_data.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"name": "folder", "root": str(data)},
        "model": {"width": 2},
        "attack_train": {"epochs": 2, "batch_size": 32},
        "defense": {"clean_ratio": 0.5, "train": {"epochs": 1, "batch_size": 32}}}))
    common = {"params_file": str(params), "attacks": ["badnets-a2o"], "device": "cpu", "check": False,
              "cache_dir": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figures"),
              "results_dir": str(tmp_path / "results")}
    for nb, extra in (("01_attack", {}), ("02_defense", {"defenses": ["ft", "ft_sam"]})):
        pm.execute_notebook(str(REPO / "notebooks" / f"{nb}.ipynb"), str(tmp_path / f"{nb}.ipynb"),
                            parameters=common | extra, cwd=str(REPO / "notebooks"), kernel_name="python3",
                            progress_bar=False)
    attack = json.loads((tmp_path / "results" / "01_attack.json").read_text())
    defense = json.loads((tmp_path / "results" / "02_defense.json").read_text())
    assert attack["BadNets-A2O"]["config"]["data"]["name"] == "folder"
    assert set(defense["BadNets-A2O"]) == {"backdoored", "ft", "ft_sam"}
    assert defense["BadNets-A2O"]["backdoored"] == attack["BadNets-A2O"]["metrics"]
    runs = [d.name for d in (tmp_path / "runs").iterdir() if d.name.startswith("folder-")]
    assert len(runs) == 1, runs                          # notebook 02 reused notebook 01's model
    assert list((tmp_path / "figures").glob("01_attack_samples*")) and list((tmp_path / "figures").glob("02_defense*"))
