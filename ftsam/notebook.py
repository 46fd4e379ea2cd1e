"""What every notebook calls right after its ``parameters`` cell: :func:`check_parameters`.

papermill sets a notebook's parameters by inserting a cell of assignments after the cell
tagged ``parameters``; it only logs a warning for a name the notebook does not have, and its
``-p`` option passes ``false`` as the string ``"false"`` (which Python takes as true). So a
typo (``-p defences '[ft]'``) would run the defaults and ``-p check false`` would keep the
checks on. :func:`check_parameters` finds both cells in the kernel's input history and
refuses unknown names, converts ``"false"``/``"true"`` for a boolean parameter, and refuses a
value of another type than the default's.

Paths: a notebook's own defaults (``../params/offline.yaml``, ``../runs``, ``../figures``)
are relative to the ``notebooks/`` folder, and the notebook always runs there, whatever
directory papermill or Jupyter was started from (so outputs land inside the project). A path
given as a parameter is relative to the directory papermill ran in, as on any command line.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from ftsam.config import ConfigError, project_root

INJECTED_MARK = "# Parameters"        # the first line of papermill's injected cell (python translator)
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
PATH_SUFFIXES = ("_file", "_dir")     # parameters that name files or folders


def check_parameters(namespace: dict, parameters_source: str | None = None,
                     injected_source: str | None = None, notebooks_dir: str | Path | None = None) -> list[str]:
    """Check the parameters papermill injected into ``namespace`` (a notebook's ``globals()``)
    against the notebook's ``parameters`` cell, fix their types where papermill's ``-p`` lost
    them, make injected relative paths absolute (from the directory papermill ran in), and
    move the kernel into ``notebooks_dir`` (default: the project's ``notebooks/``), where the
    notebook's own relative defaults point from. Returns the names that were injected.

    ``parameters_source`` / ``injected_source`` default to the two cells found in the kernel's
    input history (``In``); with no injected cell (Jupyter, nbval) only the folder is set."""
    if parameters_source is None:
        parameters_source, injected_source = _cells_from_history(namespace.get("In") or [])
    names: list[str] = []
    if parameters_source is not None and injected_source:
        defaults = _assignments(parameters_source)
        injected = _assignments(injected_source)
        unknown = [n for n in injected if n not in defaults]
        if unknown:
            raise ConfigError(
                f"unknown notebook parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"this notebook's parameters are: {', '.join(defaults)}")
        for name in injected:
            value = coerce_parameter(name, namespace.get(name), defaults[name])
            if name.endswith(PATH_SUFFIXES) and isinstance(value, str) and value and not Path(value).is_absolute():
                value = str(Path(value).expanduser().absolute())
            namespace[name] = value
        names = list(injected)
    target = Path(notebooks_dir) if notebooks_dir is not None else project_notebooks_dir()
    if target is not None and target.is_dir() and Path.cwd().resolve() != target.resolve():
        os.chdir(target)
    return names


def project_notebooks_dir() -> Path | None:
    """``notebooks/`` of the project the kernel runs in (found from the working directory),
    else of the project this package was installed from (an editable install)."""
    for start in (Path.cwd(), Path(__file__).resolve().parent.parent):
        root = project_root(start)
        if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir():
            return root / "notebooks"
    return None


_NO_DEFAULT = object()


def coerce_parameter(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``: a boolean from ``"false"`` / ``"true"`` (what
    ``papermill -p check false`` passes), a float from an int; anything else of another type
    than the default's raises :class:`ConfigError` naming the parameter."""
    if default is _NO_DEFAULT or default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in TRUE + FALSE:
            return str(value).strip().lower() in TRUE
        raise ConfigError(f"notebook parameter {name} must be true or false, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if type(value) is not type(default):
        hint = (f" (with papermill, give a list as YAML: -y '{name}: [a, b]')"
                if isinstance(default, list) else "")
        raise ConfigError(f"notebook parameter {name} must be a {type(default).__name__} like its default "
                          f"{default!r}, got {type(value).__name__} {value!r}{hint}")
    return value


def _assignments(source: str) -> dict[str, Any]:
    """``name = literal`` assignments of a cell, in order: name -> value (``_NO_DEFAULT`` when
    the value is not a literal)."""
    out: dict[str, Any] = {}
    for node in ast.parse(source).body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError):
                    out[t.id] = _NO_DEFAULT
    return out


def _cells_from_history(history: list[str]) -> tuple[str | None, str | None]:
    """The last cell papermill injected (and the parameters cell run just before it), from the
    kernel's input history."""
    for i in range(len(history) - 1, 0, -1):
        if history[i].lstrip().startswith(INJECTED_MARK):
            return history[i - 1], history[i]
    return None, None
