"""SQFT's three pipelines and Shears from the command line on a tiny model: sparsify/quantize, then the
same train, search and export commands as a dense base, with sparsity and INT4 kept as promised."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import helpers
import pytest
import torch
import yaml
from helpers import run_cli
from transformers import AutoModelForCausalLM

from lorasearch.compress.quant import PREQUANT_FILE, load_quantized
from lorasearch.compress.sparsity import SPARSITY_FILE
from lorasearch.data import synthetic_task
from lorasearch.models.anatomy import decoder_linears
from lorasearch.models.loading import load_model
from lorasearch.network.supernet import ADAPTER_MODE_FILE

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

# progress bars of the earlier model loads come before the error line
cli_error = functools.partial(helpers.cli_error, last_line=True)

ROOT = Path(__file__).resolve().parents[1]
MODE_A = str(ROOT / "search_spaces" / "llama-shears.yaml")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    task = root / "task.json"
    task.write_text(json.dumps([r.to_dict() for r in synthetic_task(200)]))
    run_cli("sparsify", "--model", "tiny-llama", "--calibration", task, "--samples", "8", "--calibration-seq-len", "64",
            "--ratio", "0.5", "--out", root / "sparse")
    run_cli("quantize", "--model", root / "sparse", "--group-size", "32", "--out", root / "sparse-int4")
    return {"task": task, "sparse": root / "sparse", "int4": root / "sparse-int4"}


def zeros(model) -> dict[str, torch.Tensor]:
    return {n: m.weight == 0 for n, m in decoder_linears(model).items()}


def train_search(bases, tmp_path, base: str, mode: str) -> Path:
    run_cli("train", "--model", bases[base], "--space", MODE_A, "--out", tmp_path / "train", "--steps", "4",
            "--batch-size", "4", "--lr", "3e-3", "--adapter-mode", mode)
    run_cli("search", "--model", bases[base], "--adapter", tmp_path / "train" / "adapter",
            "--task", tmp_path / "train" / "validation.jsonl", "--limit", "8", "--budget", "4", "--population", "4",
            "--objectives", "accuracy,macs_effective", "--out", tmp_path / "search")
    return tmp_path / "search"


def test_sparsify_writes_a_sparse_base_and_report(bases):
    doc = json.loads((bases["sparse"] / SPARSITY_FILE).read_text())
    assert doc["sparsity"] == pytest.approx(0.5) and doc["samples"] == 8
    assert (bases["int4"] / SPARSITY_FILE).is_file()


def test_sqft_sparsepeft_pipeline_keeps_the_sparsity(bases, tmp_path):
    run = train_search(bases, tmp_path, "sparse", "sparse")
    run_cli("export", run, "--pick", "heuristic", "--format", "merged", "--out", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(bases["sparse"])
    want, have = zeros(base), zeros(merged)
    assert all(torch.equal(want[n], have[n]) for n in want)
    assert any(not torch.equal(merged.get_submodule(n).weight, base.get_submodule(n).weight) for n in want)


def test_sqft_qa_sparsepeft_pipeline_yields_a_sparse_int4_model(bases, tmp_path):
    run = train_search(bases, tmp_path, "int4", "qa")
    assert (bases["int4"] / PREQUANT_FILE).is_file()  # quantize kept W^p, and QA trained against it
    assert yaml.safe_load((tmp_path / "train" / "train_run.yaml").read_text())["qa_base"] == "float"
    assert json.loads((tmp_path / "train" / "adapter" / ADAPTER_MODE_FILE).read_text())["qa_base"] == "float"
    run_cli("export", run, "--pick", "heuristic", "--format", "merged", "--out", tmp_path / "merged")
    merged = load_quantized(tmp_path / "merged").model
    base = load_model(str(bases["int4"])).model  # read by lorasearch: no compressed-tensors needed
    for name, mask in zeros(base).items():
        layer = merged.get_submodule(name)
        assert torch.all(layer.weight[mask] == 0), name
        assert torch.equal(layer.quant_grid.dequantize(layer.quant_grid.quantize(layer.weight)), layer.weight), name


@pytest.mark.parametrize("base", ["sparse", "int4"])
def test_shears_and_int4_plus_adapter_pipelines_export_the_adapter(bases, tmp_path, capsys, base):
    """Shears (sparse + elastic adapters) and SQFT's INT4 + FP16 keep the adapter beside the compressed base."""
    run = train_search(bases, tmp_path, base, "dense")
    run_cli("export", run, "--pick", "heuristic", "--format", "peft", "--out", tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    if base == "int4":
        err = cli_error(capsys, "export", run, "--pick", "heuristic", "--format", "merged", "--out", tmp_path / "m")
        assert "INT4 base and a plain adapter" in err


@pytest.mark.parametrize("args, expected", [
    (["sparsify", "--model", "tiny-llama", "--method", "magnitude", "--ratio", "1.0", "--out", "x"], "[0, 1)"),
    (["sparsify", "--model", "tiny-llama", "--method", "magnitude", "--pattern", "3:5", "--out", "x"], "not a multiple of 5"),
    (["sparsify", "--model", "tiny-llama", "--out", "x"], "--calibration: missing"),
    (["quantize", "--model", "tiny-llama", "--group-size", "48", "--out", "x"], "not a multiple of 48"),
    (["eval", "--model", "tiny-llama", "--space", MODE_A, "--adapter-mode", "fancy"], "--adapter-mode 'fancy'"),
])
def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    assert expected in cli_error(capsys, *args)


def test_too_small_calibration_set_is_refused(capsys, bases, tmp_path):
    err = cli_error(capsys, "sparsify", "--model", "tiny-llama", "--calibration", bases["task"], "--samples", "4000",
                    "--calibration-seq-len", "512", "--out", tmp_path / "x")
    assert "calibration set too small" in err
