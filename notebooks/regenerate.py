"""Re-execute the notebooks headless and save them with their outputs, plus the README figures.

Usage (from the repository root)::

    python notebooks/regenerate.py            # every notebook in notebooks/
    python notebooks/regenerate.py 01 02      # notebooks whose name starts with 01 or 02
    python notebooks/regenerate.py --check    # re-execute, save nothing, exit 1 if any is stale

Notebook 03 records real runs (about three minutes); with ``--check`` only the shape of its outputs is
compared, because its numbers are measurements.

Each notebook runs in a fresh kernel of this interpreter (see ``oobleck.viz.execute``). After a
successful run it is written back in place, and the PNG of its cell tagged ``readme-figure`` is
written to ``docs/images/<notebook stem>.png``. Run it after changing code a notebook shows, then
commit the notebooks and images: ``tests/notebooks/test_notebooks.py`` fails on stale outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

from oobleck.viz.execute import comparable_outputs, execute_notebook, is_measured, output_shape, readme_figure

NOTEBOOKS = Path(__file__).resolve().parent
IMAGES = NOTEBOOKS.parent / "docs" / "images"


def main(argv: list[str] | None = None) -> int:
    """Regenerate (or with ``--check`` only verify) the selected notebooks; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--check", action="store_true", help="fail on stale outputs instead of saving")
    parser.add_argument("--timeout-s", type=float, default=600, help="per-cell limit (default: 600 s)")
    args = parser.parse_args(argv)
    paths = sorted(
        path
        for path in NOTEBOOKS.glob("*.ipynb")
        if not args.prefixes or any(path.name.startswith(prefix) for prefix in args.prefixes)
    )
    if not paths:
        print(f"no notebook matches {args.prefixes} in {NOTEBOOKS}", file=sys.stderr)
        return 2
    stale = []
    for path in paths:
        started = time.perf_counter()
        executed = execute_notebook(path, timeout_s=args.timeout_s)
        elapsed = time.perf_counter() - started
        if args.check:
            committed = nbformat.read(path, as_version=4)
            # NOTE: a notebook that measures real runs prints new numbers every time; only its shape counts.
            reduce = output_shape if is_measured(committed) else list
            if reduce(comparable_outputs(committed)) != reduce(comparable_outputs(executed)):
                stale.append(path.name)
            print(f"{path.name}: executed in {elapsed:.1f} s")
            continue
        nbformat.write(executed, path)
        figure = readme_figure(executed)
        if figure is not None:
            IMAGES.mkdir(parents=True, exist_ok=True)
            (IMAGES / f"{path.stem}.png").write_bytes(figure)
        print(f"{path.name}: executed in {elapsed:.1f} s, {path.stat().st_size / 1024:.0f} KB")
    if stale:
        print(f"stale outputs: {', '.join(stale)}; run python notebooks/regenerate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
