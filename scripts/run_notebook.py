"""Executes a notebook and writes the executed copy (outputs and figures inline).

    python scripts/run_notebook.py docs/why_vae_generative.ipynb runs/notebook/why_vae_generative.ipynb

Prints one JSON line: the notebook, where the executed copy went, and the seconds it took.
"""

import argparse
import json
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebook")
    p.add_argument("out")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = p.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    try:
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3").execute()
    except CellExecutionError as e:
        nbformat.write(nb, out)
        print(f"run_notebook: a cell failed (executed copy with the error in {out}): {str(e).splitlines()[-1]}",
              file=sys.stderr)
        return 1
    nbformat.write(nb, out)
    print(json.dumps({"notebook": args.notebook, "out": str(out), "seconds": round(time.perf_counter() - t, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
