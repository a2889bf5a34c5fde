"""The README's Python API block runs as written after the tour: the tour's training leaves
``runs/nls/adapter`` (a Mode B super-adapter with its own space file) and ``runs/nls/validation.jsonl``,
and the block searches, plots, picks the knee and exports it.

The tour trains on SmolLM2 for minutes; here the same command trains on tiny-llama with its Mode B space
in seconds, and the block runs with ``"default"`` replaced by ``"tiny-llama"``, nothing else changed.
"""

from __future__ import annotations

import re

import pytest
from helpers import ROOT, TINY_SPACE, run_cli

README = ROOT / "README.md"


def python_api_block() -> str:
    text = README.read_text()
    start = text.index("## The Python API")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, "README: no python block after '## The Python API'"
    return block.group(1)


def test_the_block_uses_the_tours_outputs():
    block = python_api_block()
    assert '"runs/nls/adapter"' in block and '"runs/nls/validation.jsonl"' in block
    assert "llama-shears" not in block  # a rank-32 Mode A space does not fit the tour's Mode B adapter
    assert block.count('"default"') == 1


def test_the_readme_python_block_runs_after_the_tour(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli("train", "--model", "tiny-llama", "--space", TINY_SPACE, "--steps", "4", "--batch-size", "4",
            "--val-size", "24", "--max-length", "64", "--threads", "1", "--out", "runs/nls")  # the tour's step 2
    namespace: dict = {}
    exec(compile(python_api_block().replace('"default"', '"tiny-llama"'), str(README), "exec"), namespace)

    from lorasearch import load_pruned

    row, result = namespace["row"], namespace["result"]
    front = result.pareto
    assert len(result.table) == 16 and (tmp_path / "runs" / "api-pareto.png").is_file()
    assert int(row["eval_id"]) in set(front["eval_id"].astype(int))
    if len(front) > 2:  # the knee is an interior point of the front
        assert row["accuracy"] < front["accuracy"].max() and row["macs"] > front["macs"].min()
    model = load_pruned(tmp_path / "runs" / "api-knee")
    assert model.config.num_hidden_layers == 4


@pytest.mark.parametrize("name", ["export_pruned", "pick_config", "search_network", "SuperNetwork"])
def test_every_name_the_block_imports_is_exported_by_lorasearch(name):
    import lorasearch

    assert name in python_api_block() and name in lorasearch.__all__
