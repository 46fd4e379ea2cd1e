"""Run every notebook headless with papermill: ``python -m ftsam.batch`` (what ``make figures`` calls).

Without ``--params`` the notebooks run on their defaults (the offline setting) and write their
figures to ``figures/``. With ``--params params/X.yaml`` they run on that file and write to
``figures/X/`` and ``results/X/``. Executed copies go to ``notebooks/executed/`` (or, with
``--inplace``, over the committed notebooks, which is how their reference outputs for nbval are
refreshed: a notebook is replaced only when its run succeeded; a failed run is left in
``notebooks/executed/`` instead). Each notebook gets only the parameters its ``parameters``
cell declares. A failing notebook is reported and the batch goes on; the exit code says
whether all passed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from ftsam.io import atomic_write_bytes

REPO = Path(__file__).resolve().parent.parent
VOLATILE_METADATA = ("papermill", "execution")


def strip_volatile(path: Path) -> None:
    """Drop papermill's timestamps and durations so a rerun changes nothing but real outputs."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        for key in VOLATILE_METADATA:
            cell.metadata.pop(key, None)
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    import papermill as pm
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", help="a params/*.yaml file (default: each notebook's own defaults)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ap.add_argument("--inplace", action="store_true", help="overwrite the committed notebooks with the run")
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/[0-9]*.ipynb)")
    args = ap.parse_args(argv)

    nb_dir = REPO / "notebooks"
    notebooks = [Path(p).resolve() for p in args.notebooks] or sorted(nb_dir.glob("[0-9]*.ipynb"))
    parameters: dict = {"device": args.device}
    tag = ""
    if args.params:
        params = Path(args.params).resolve()
        if not params.is_file():
            ap.error(f"--params: no such file: {args.params}")
        from ftsam.config import load_config
        load_config(params)  # fail early, with the key, on a bad file
        tag = params.stem
        parameters.update(params_file=str(params), figures_dir=str(REPO / "figures" / tag),
                          results_dir=str(REPO / "results" / tag), check=False)
    failed, t0 = [], time.time()
    for nb in notebooks:
        out_dir = nb.parent / "executed"
        out = nb if args.inplace else out_dir / (f"{nb.stem}-{tag}.ipynb" if tag else nb.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        print(f"[ftsam.batch] {nb.name} -> {_shown(out)}", flush=True)
        # only the parameters this notebook declares (notebook 00 has no results_dir, 08 no device)
        declared = pm.inspect_notebook(str(nb))
        given = {k: v for k, v in parameters.items() if k in declared} if (tag or args.device != "auto") else {}
        # the run goes to a temporary file; the target is (atomically) replaced only on success
        with tempfile.TemporaryDirectory(prefix="ftsam-batch-") as tmp_dir:
            tmp = Path(tmp_dir) / nb.name
            try:
                pm.execute_notebook(str(nb), str(tmp), parameters=given or None,
                                    cwd=str(nb.parent), kernel_name="python3", progress_bar=False, log_output=False)
                strip_volatile(tmp)
                atomic_write_bytes(out, tmp.read_bytes())
                print(f"[ftsam.batch]   ok in {time.time() - start:.0f} s", flush=True)
            except Exception as e:  # report and go on with the batch
                failed.append(nb.name)
                kept = ""
                if tmp.is_file() and tmp.stat().st_size:
                    failed_copy = out_dir / nb.name if args.inplace else out
                    atomic_write_bytes(failed_copy, tmp.read_bytes())
                    kept = f"; the failed run is in {_shown(failed_copy)}" + (
                        f", {nb.name} is unchanged" if args.inplace else "")
                print(f"[ftsam.batch]   FAILED after {time.time() - start:.0f} s: {type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}{kept}", flush=True)
    print(f"[ftsam.batch] {len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran in {time.time() - t0:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    sys.exit(main())
