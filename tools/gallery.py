"""Re-export chosen quick-profile figures as small PNGs into figures/gallery/ (shown by the README).

Run after ``make demo``: ``.venv/bin/python tools/gallery.py [scale]``. Each figure is rebuilt
from its exported HTML, written by ``plots.save`` at ``scale`` and reduced to a 256-colour palette
(the plots use few colours), which keeps every PNG well under 300 KB.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import plotly.graph_objects as go
from PIL import Image

from l2o_lib import plots

CHOSEN = ["01_subspaces_variance_quick", "01_subspaces_trajectory_quick", "02_pbfgs_epochs_quick",
          "03_sl2o_test_accuracy_quick", "03_sl2o_transfer_quick", "04_mlrsnet_all_schedules_quick",
          "05_l3rs_speedup_vs_target_quick", "06_landscapes_contour_quick", "06_landscapes_surface_quick",
          "07_symbolic_pareto_quick", "07_symbolic_parity_quick", "07_symbolic_front_quick"]


def figure_from_html(path: Path) -> go.Figure:
    """The figure stored in a plotly HTML export (the data and layout of its ``Plotly.newPlot`` call)."""
    text = path.read_text()
    decoder = json.JSONDecoder()

    def next_json(i: int) -> tuple[object, int]:
        i = text.index(",", i) + 1
        while text[i].isspace():
            i += 1
        return decoder.raw_decode(text, i)

    data, end = next_json(text.index("Plotly.newPlot(") + len("Plotly.newPlot("))  # skips the div id
    layout, _ = next_json(end)
    return go.Figure(data=data, layout=layout)


def main(scale: float = 1.5) -> None:
    out = Path("figures/gallery")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in CHOSEN:
            paths = plots.save(figure_from_html(Path(f"figures/{name}.html")), name, directory=tmp, scale=scale)
            target = out / f"{name}.png"
            shutil.copyfile(paths["png"], target)
            image = Image.open(target).convert("RGB")
            image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
            print(f"{target}: {target.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.5)
