"""The main job, end to end on a tiny model: a real front, and last lines that say what to do next."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from lorasearch.results import load_run
from lorasearch.runs.quickstart import run_quickstart

pytestmark = pytest.mark.slow


def test_the_quickstart_finds_a_front_of_several_points_and_says_how_to_load_the_knee(tmp_path):
    printed = io.StringIO()
    out = run_quickstart("tiny-llama", tmp_path / "qs", console=Console(file=printed, width=1000))
    run = load_run(out / "search")
    assert len(run.pareto) >= 3
    # a random-weight tiny model cannot beat noise; what matters is that the summary says which case it is
    said = printed.getvalue()
    assert ("front is within noise" in said) == (run.noise_warning() is not None)
    assert ("front points stand apart" in said) == (run.noise_warning() is None)
    assert run.pareto["macs"].max() / run.pareto["macs"].min() > 1.2  # Mode B: the costs span a real range
    last = said.strip().splitlines()[-3:]
    assert last[0].startswith("knee subnet: evaluation")
    assert "load_pruned(" in last[1]
    assert last[2].startswith("the whole front:")
    assert (out / "exports" / "pruned" / "config.json").is_file()
    assert (out / "search" / "report.md").is_file() and (out / "search" / "plots" / "pareto.png").is_file()


def test_the_quickstart_refuses_a_folder_it_did_not_make(tmp_path):
    from lorasearch.errors import LoraSearchError

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(LoraSearchError, match="was not made by the quickstart"):
        run_quickstart("tiny-llama", tmp_path, console=Console(file=io.StringIO()))
    assert (tmp_path / "mine.txt").read_text() == "keep me"
