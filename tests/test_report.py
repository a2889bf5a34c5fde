"""Run data and reports: reading run directories back, the report's tables, bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from helpers import STDERR, synthetic_search  # noqa: E402

from lorasearch import LoraSearchError  # noqa: E402
from lorasearch.report.document import config_summary, front_table, write_report  # noqa: E402
from lorasearch.results import hypervolume_curve  # noqa: E402
from lorasearch.results.run import from_result, load_run, running_hypervolume  # noqa: E402
from lorasearch.search import Objective  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    params = Objective("params", "min", lambda c: 1e6 * (50 + c["attn.0"]), unit="params")
    synthetic_search(out, budget=40, metrics=[params])
    return out


# ---------------------------------------------------------------------------- run data
def test_load_run_reads_the_table_specs_settings_and_references(run_dir):
    run = load_run(run_dir)
    csv = pd.read_csv(run_dir / "results.csv")
    assert len(run.table) == len(csv) == 40 and run.name == "run" and run.strategy == "nsga2"
    assert [s.name for s in run.specs] == ["accuracy", "macs"] and run.spec("macs").unit == "MACs (unmerged)"
    assert run.settings["budget"] == 40 and run.info["task"] == "synthetic"
    assert set(run.references) == {"max", "heuristic", "min"}
    assert run.references["max"]["eval_id"] == 0


def test_a_missing_or_stale_results_csv_is_rebuilt_from_the_log(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    full = load_run(copy).table
    (copy / "results.csv").unlink()
    cols = ["eval_id", "accuracy", "macs", "generation", "source", "is_pareto"]
    pd.testing.assert_frame_equal(load_run(copy).table[cols], full[cols])
    pd.read_csv(run_dir / "results.csv").head(5).to_csv(copy / "results.csv", index=False)  # a run killed mid-way
    assert len(load_run(copy).table) == 40


def test_running_hypervolume_equals_hypervolume_curve(run_dir):
    run = load_run(run_dir)
    expected = hypervolume_curve(run.table, run.specs, by="eval_id")
    pd.testing.assert_frame_equal(running_hypervolume(run.table, run.specs), expected, check_dtype=False)


def test_a_folder_without_results_gets_one_clear_line(tmp_path):
    with pytest.raises(LoraSearchError, match=r"nowhere: no such run directory; fix: pass the --out folder"):
        load_run(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoraSearchError, match=r"empty: not a search run directory \(run.yaml is missing\); fix:"):
        write_report(empty)
    bounds = [{"name": "accuracy", "direction": "max", "best": 1.0, "worst": 0.0, "unit": ""}]
    (empty / "run.yaml").write_text(yaml.safe_dump({"run": {}, "search": {}}))
    with pytest.raises(LoraSearchError, match=r"run.yaml: bounds: missing .*fix: run or --resume the search"):
        load_run(empty)
    (empty / "run.yaml").write_text(yaml.safe_dump({"run": {}, "search": {}, "bounds": bounds}))
    (empty / "evaluations.jsonl").write_text("")
    with pytest.raises(LoraSearchError) as error:
        write_report(empty)
    message = str(error.value)
    assert "\n" not in message and str(empty) in message
    assert "no results (results.csv and evaluations.jsonl hold no evaluation)" in message and "fix:" in message


# ------------------------------------------------------------------------------ report
def test_the_report_tables_the_front_with_relative_columns(run_dir):
    path = write_report(run_dir)
    text = path.read_text()
    run = load_run(run_dir)
    front = front_table(run)
    assert len(front) == int(run.table["is_pareto"].sum())
    section = text.split("## Pareto front")[1].split("## Reference configs")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| eval")]
    assert len(rows) == len(front)

    heuristic, best = run.reference("heuristic"), run.reference("max")
    table = front_table(run, run.table[run.table["source"].isin(["max", "heuristic", "min"])])
    assert list(table["source"]) == ["min", "heuristic", "max"]  # cheapest first
    h = table[table["source"] == "heuristic"].iloc[0]
    assert h["accuracy vs heuristic"] == h["macs vs heuristic"] == "0.0%"
    expected = (heuristic["macs"] / best["macs"] - 1) * 100
    assert h["macs vs max"] == f"{expected:+.1f}%".replace("-", "−")
    assert h["GMACs (unmerged, 64 tokens)"] == f"{heuristic['macs'] / 1e9:,.4g}"
    assert h["accuracy (synthetic)"] == f"{heuristic['accuracy']:.3f} ± {STDERR:.3f}"
    # params is measured (a metric, not an objective) and shown too: 50 M + attn.0
    assert h["parameters (M)"] == "74" and h["params vs max"] == f"{(74 / 82 - 1) * 100:+.1f}%".replace("-", "−")
    if "heuristic" in set(front["source"]):
        assert front[front["source"] == "heuristic"].iloc[0].equals(h)


def test_the_report_holds_settings_noise_hypervolume_and_figures(run_dir):
    text = write_report(run_dir).read_text()
    assert "| search.budget | 40 |" in text and "| run.task | synthetic |" in text
    assert "| search.objectives | accuracy, macs |" in text
    assert "## Noise" in text and "within noise" in text  # every accuracy carries a stderr of 0.01
    final = load_run(run_dir).hypervolume_by_evaluation()["hypervolume"].iloc[-1]
    assert f"Final hypervolume **{final:.4f}**" in text
    for stem in ("pareto", "progression", "hypervolume"):
        assert f"(plots/{stem}.png)" in text and (run_dir / "plots" / f"{stem}.png").is_file()
    html = (run_dir / "report.html").read_text()
    assert "<table>" in html and 'src="plots/pareto.png"' in html


def test_the_report_names_the_knee(run_dir, tmp_path):
    from lorasearch.results.pick import pick_config

    run = load_run(run_dir)
    knee = pick_config(run.table, "knee", specs=run.specs)[0]
    text = write_report(run_dir, tmp_path / "r.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("**Knee**"))
    assert f"evaluation {int(knee['eval_id'])}" in line and f"accuracy {knee['accuracy']:.3f}" in line


def test_a_report_elsewhere_links_the_figures_relative_to_itself(run_dir, tmp_path):
    path = write_report(run_dir, out=tmp_path / "reports" / "nsga2.md", html=False)
    link = next(line for line in path.read_text().splitlines() if line.startswith("![Pareto front]"))
    target = link[link.index("(") + 1:-1]
    assert (path.parent / target).resolve() == (run_dir / "plots" / "pareto.png").resolve()


def test_in_memory_results_report_when_given_a_file(tmp_path):
    result = synthetic_search(budget=20)
    path = write_report(from_result(result), out=tmp_path / "report.md")
    assert path.is_file() and (tmp_path / "plots" / "pareto.svg").is_file()


@pytest.mark.parametrize("config, summary", [
    ({"attn.0": 32, "attn.1": 32, "up.0": 24, "up.1": 16}, "attn 32 · up 24/16 (mean 20)"),
    ({"attn.0.q_proj": 24, "attn.1.q_proj": 16, "attn.2.q_proj": 16, "mlp": 0.75}, "attn 24/16 (mean 18.7) · mlp 0.75"),
    (json.dumps({"w.0": 1.0, "w.1": 0.5}), "w 1/0.5 (mean 0.75)"),
])
def test_config_summary_names_each_group_once(config, summary):
    assert config_summary(config) == summary
