"""Write and clean notebooks: ``python tools/nbtools.py strip notebooks/*.ipynb`` removes outputs
and execution counts (the repository keeps notebooks without outputs)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def build(cells: list[tuple[str, str]], *, parameters_index: int) -> nbformat.NotebookNode:
    """A notebook from ``(kind, source)`` pairs; cell ``parameters_index`` is tagged ``parameters``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source.strip()) if kind == "md" else nbformat.v4.new_code_cell(source.strip())
        if i == parameters_index:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    return nb


def strip(path: Path) -> None:
    """Remove outputs, execution counts and ids-churn metadata from a notebook in place."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, path)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "strip":
        sys.exit("usage: python tools/nbtools.py strip NOTEBOOK...")
    for p in sys.argv[2:]:
        strip(Path(p))
