"""The main job, end to end on a tiny model: a real front, and last lines that say what to do next."""

from __future__ import annotations

import io
import json

import pytest
import torch
import yaml
from helpers import run_cli
from rich.console import Console
from safetensors.torch import load_file

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
    # the knee is an interior front point whenever the front has one, and the summary says how much cheaper
    exported = json.loads((out / "exports" / "pruned" / "subnet.json").read_text())
    knee = run.table.set_index("eval_id").loc[exported["provenance"]["eval_id"]]
    assert len(run.pareto) >= 3 and knee["macs"] > run.pareto["macs"].min()
    assert knee["accuracy"] < run.pareto["accuracy"].max()
    assert "fewer MACs than the max config" in last[0]


def test_the_quickstart_run_exports_again_from_the_command_line(tmp_path):
    """The search reused the trained network: the run's adapter fingerprint must be the saved adapter's."""
    out = run_quickstart("tiny-llama", tmp_path / "qs", console=Console(file=io.StringIO()))
    run_cli("export", out / "search", "--pick", "knee", "--format", "pruned", "--out", tmp_path / "again")
    first, again = (json.loads((p / "subnet.json").read_text()) for p in (out / "exports" / "pruned", tmp_path / "again"))
    assert first["config"] == again["config"]
    x, y = (load_file(str(p / "model.safetensors")) for p in (out / "exports" / "pruned", tmp_path / "again"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    recorded = yaml.safe_load((out / "search" / "run.yaml").read_text())["run"]
    assert recorded["network"]["model"] == "tiny-llama" and recorded["network"]["adapter"] == "../train/adapter"


def test_the_quickstart_refuses_a_folder_it_did_not_make(tmp_path):
    from lorasearch.errors import LoraSearchError

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(LoraSearchError, match="was not made by the quickstart"):
        run_quickstart("tiny-llama", tmp_path, console=Console(file=io.StringIO()))
    assert (tmp_path / "mine.txt").read_text() == "keep me"
