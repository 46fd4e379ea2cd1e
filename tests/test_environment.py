"""environment.yml (conda) and pyproject.toml (pip) describe the same environment."""
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pip_section(env: dict) -> list[str]:
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return dep["pip"]
    raise AssertionError("environment.yml has no pip section")


def test_same_packages_and_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda_pip = [d for d in _pip_section(env) if not d.startswith("-e")]
    assert sorted(map(_name, project)) == sorted(map(_name, conda_pip))
    assert sorted(project) == sorted(conda_pip), "versions pinned differently"


def test_users_packages_are_named():
    names = {_name(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    for pkg in ("torch", "torchvision", "jupyterlab", "papermill", "matplotlib", "scikit-learn", "grad-cam", "nbval"):
        assert pkg in names, pkg
