"""The ``lorasearch`` command end to end on a tiny model, and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import cli_error, run_cli
from peft import PeftModel

from lorasearch import SuperNetwork
from lorasearch.models.loading import tiny_model

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces" / "tiny-llama.yaml")
MODE_A = str(ROOT / "search_spaces" / "llama-shears.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "train"
    run_cli("train", "--model", "tiny-llama", "--space", MODE_A, "--out", str(out), "--steps", "8",
            "--batch-size", "4", "--lr", "3e-3", "--checkpoint-every", "4")
    return out


def test_train_writes_an_adapter_that_peft_loads_and_a_super_network_activates(trained):
    adapter = trained / "adapter"
    peft_model = PeftModel.from_pretrained(tiny_model("llama"), adapter).eval()
    net = SuperNetwork(tiny_model("llama"), trained / "space.yaml", adapter=adapter)
    ids = torch.randint(3, 250, (1, 8))
    with torch.inference_mode():
        torch.testing.assert_close(net.model(ids).logits, peft_model(ids).logits, atol=1e-5, rtol=0)
        net.activate(net.space.min())
        assert not torch.allclose(net.model(ids).logits, peft_model(ids).logits)
    assert (trained / "validation.jsonl").read_text().count("\n") == 40  # 10 % of the 400 synthetic records
    assert len((trained / "train_log.jsonl").read_text().splitlines()) == 8


def test_search_plot_report_export_from_the_command_line(trained, tmp_path):
    run = tmp_path / "search"
    run_cli("search", "--model", "tiny-llama", "--adapter", str(trained / "adapter"),
            "--task", str(trained / "validation.jsonl"), "--limit", "12", "--budget", "12", "--population", "4",
            "--out", str(run))
    lines = (run / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 12
    run_cli("plot", str(run))
    assert (run / "plots" / "pareto.png").is_file() and (run / "plots" / "pareto.svg").is_file()
    run_cli("report", str(run))
    assert "Pareto front" in (run / "report.md").read_text()
    run_cli("export", str(run), "--pick", "heuristic", "--format", "config", "--out", str(tmp_path / "subnet"))
    subnet = json.loads((tmp_path / "subnet" / "subnet.json").read_text())
    assert subnet["config"] == SuperNetwork(tiny_model("llama"), trained / "space.yaml").space.heuristic()


def test_search_resume_from_the_run_directory_alone(trained, tmp_path):
    run = tmp_path / "search"
    common = ["--model", "tiny-llama", "--adapter", str(trained / "adapter"), "--task", str(trained / "validation.jsonl"),
              "--limit", "8", "--population", "4"]
    run_cli("search", *common, "--budget", "8", "--out", str(run))
    # A finished run resumed with the same settings evaluates nothing new.
    run_cli("search", "--resume", str(run))
    assert len((run / "evaluations.jsonl").read_text().splitlines()) == 8


def test_old_option_spellings_work_for_one_release_with_a_warning(trained, tmp_path, capsys):
    run_cli("cost", "--model", "tiny-llama", "--space", SPACE, "--config", "min", "--seq-len", "8", "--backend", "closed")
    assert "cost --backend is deprecated; use --counter" in capsys.readouterr().out
    first = tmp_path / "first"
    common = ["--model", "tiny-llama", "--adapter", str(trained / "adapter"), "--task", str(trained / "validation.jsonl"),
              "--limit", "8", "--population", "4", "--budget", "4"]
    run_cli("search", *common, "--out", first)
    run_cli("search", "--config", first / "run.yaml", "--out", tmp_path / "again")
    assert "search --config is deprecated; use --run-file" in capsys.readouterr().out
    assert len((tmp_path / "again" / "evaluations.jsonl").read_text().splitlines()) == 4


def test_shared_options_carry_their_help_in_every_command():
    from typer.main import get_command

    from lorasearch.cli import app

    group = get_command(app)
    for name in ("eval", "cost", "train", "search", "sparsify", "quantize"):
        options = {o: p for p in group.commands[name].params for o in p.opts}
        assert options["--model"].help.startswith("Model: a Hugging Face name"), name
        assert options["--trust-remote-code"].help == "Allow model code from the model's repository.", name
        assert "--gguf-file" in options and options["--gguf-file"].help, name


@pytest.mark.parametrize(
    "args, expected",
    [
        (["space", "show", "missing.yaml"], "missing.yaml: cannot read"),
        (["space", "show", SPACE, "--model", "tiny-phi3"], "self_attn.q_proj"),
        (["search", "--model", "tiny-llama", "--space", SPACE, "--objectives", "accuracy,speed", "--out", "x"], "unknown objective 'speed'"),
        (["search", "--model", "tiny-llama", "--space", SPACE, "--strategy", "annealing", "--out", "x"], "unknown 'annealing'"),
        (["search", "--model", "tiny-llama", "--space", SPACE, "--budget", "3", "--out", "x"], "below the population"),
        (["train", "--model", "tiny-llama", "--space", SPACE, "--out", "x", "--sampler", "greedy"], "unknown 'greedy'"),
        (["eval", "--model", "tiny-llama", "--space", SPACE, "--config", "medium"], "--config"),
        (["cost", "--model", "tiny-llama", "--space", SPACE, "--seq-len", "0"], "seq_len"),
        (["export", "nowhere", "--pick", "knee", "--format", "config", "--out", "x"], "nowhere"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(capsys, tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    assert expected in cli_error(capsys, *args)


def test_the_installed_command_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngroups: {a: {rank: [8, 16], modules: [q_proj]}}\nadapter: {rank: 8}\n")
    proc = subprocess.run([sys.executable, "-m", "lorasearch.cli", "space", "show", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "groups.a.rank" in proc.stderr and "descending" in proc.stderr


def test_without_a_terminal_search_prints_and_logs_a_line_per_evaluation(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "lorasearch.cli", "search", "--model", "tiny-llama", "--space", SPACE,
                           "--limit", "8", "--budget", "8", "--population", "4", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("evaluation ")]
    # numbered by eval_id, as results.csv numbers them; [k/N] counts the budget
    ids = pd.read_csv(out / "results.csv")["eval_id"].tolist()
    assert [line.split(":")[0] for line in lines] == [f"evaluation {i} [{i + 1}/8]" for i in sorted(ids)]
    assert "accuracy" in lines[0] and "GMACs" in lines[0] and "Gmacs" not in lines[0] and "(8 items)" in lines[0]
    logged = (out / "progress.log").read_text().splitlines()
    assert logged == lines


def test_threads_apply_to_the_command_and_are_restored_after_it():
    import lorasearch.runs.scoring as cost  # where the cost command builds its CostModel

    before, seen = torch.get_num_threads(), []

    class Spy(cost.CostModel):
        def __init__(self, *args, **kwargs):
            seen.append(torch.get_num_threads())
            super().__init__(*args, **kwargs)

    cost_model, cost.CostModel = cost.CostModel, Spy
    try:
        run_cli("cost", "--model", "tiny-llama", "--space", SPACE, "--seq-len", "8", "--threads", "3")
    finally:
        cost.CostModel = cost_model
    assert seen == [3] and torch.get_num_threads() == before


def test_without_a_terminal_no_line_is_wrapped(tmp_path):
    """A path longer than any terminal comes out on one line, so it can be copied from a log."""
    out = tmp_path / ("a-folder-name-long-enough-to-pass-eighty-columns-" * 3) / "space.yaml"
    out.parent.mkdir()
    source = Path(__file__).parent / "fixtures" / "reference" / "sqft_elastic_adapter_config.json"
    done = subprocess.run([sys.executable, "-m", "lorasearch.cli", "space", "import", str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {out} (" in done.stdout and len(done.stdout.strip().splitlines()) == 1


def test_version():
    done = subprocess.run([sys.executable, "-m", "lorasearch.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    from lorasearch import __version__

    assert done.returncode == 0 and done.stdout.strip() == f"lorasearch {__version__}"
