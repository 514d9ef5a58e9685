"""Every notebook runs under the ci profile and its final checks pass (papermill, kernel python3)."""

import pytest

from l2o_lib.runner import find_notebooks, run_notebook

NOTEBOOKS = find_notebooks()


def test_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS][:1] == ["00_quickstart"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_under_ci_profile(path):
    result = run_notebook(path, profile="ci")
    assert result.ok, f"{path.name} failed:\n{result.error}"
