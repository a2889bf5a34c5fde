"""Figures of a search: the data each figure draws, the artists that draw it, and the files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from helpers import STDERR, Surrogate, synthetic_search  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lorasearch import LoraSearchError  # noqa: E402
from lorasearch.report.figures import (  # noqa: E402
    comparison_figure,
    comparison_info,
    hypervolume_figure,
    hypervolume_info,
    pareto_figure,
    pareto_info,
    plot_run,
    progression_figure,
    progression_info,
    staircase,
)
from lorasearch.results import hypervolume_curve, pareto_mask, to_minimisation  # noqa: E402
from lorasearch.results.run import from_result, load_run  # noqa: E402
from lorasearch.search import Objective  # noqa: E402


def params_objective(s: Surrogate) -> Objective:
    return Objective("params", "min", lambda c: 1e6 * (50 + sum(v for k, v in c.items() if k.startswith("attn"))),
                     unit="params")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for strategy in ("nsga2", "random", "tpe"):
        synthetic_search(root / strategy, strategy=strategy)
    return root


@pytest.fixture(scope="module")
def run(run_dirs):
    return load_run(run_dirs / "nsga2")


def sorted_front(run, x="macs", y="accuracy"):
    front = run.pareto.sort_values([x, y])
    return np.column_stack([front[x] / 1e9, front[y]]), front


# ----------------------------------------------------------------------------- pareto data
def test_pareto_front_line_is_the_sorted_pareto_rows(run):
    info = pareto_info(run)
    expected, front = sorted_front(run)
    np.testing.assert_allclose(info.front, expected)
    assert list(info.front_ids) == list(front["eval_id"])
    assert len(info.dominated) == int((~run.table["is_pareto"]).sum())
    assert len(info.infeasible) == 0
    np.testing.assert_allclose(np.sort(info.dominated[:, 0]), np.sort(run.table.loc[~run.table["is_pareto"], "macs"] / 1e9))


def test_the_step_line_runs_through_every_front_point_right_then_up(run):
    info = pareto_info(run)
    step, front = info.step, np.unique(info.front, axis=0)
    np.testing.assert_allclose(step[::2], front)  # the points, in order of MACs
    np.testing.assert_allclose(step[1::2], np.column_stack([front[1:, 0], front[:-1, 1]]))  # the corners
    assert (np.diff(step[:, 0]) >= 0).all() and (np.diff(step[:, 1]) >= 0).all()


def test_staircase_steps_first_when_x_is_maximised():
    front = np.array([[0.5, 10.0], [0.7, 20.0]])  # x accuracy (max), y MACs (min)
    np.testing.assert_allclose(staircase(front, "max"), [[0.5, 10], [0.5, 20], [0.7, 20]])
    np.testing.assert_allclose(staircase(front, "min"), [[0.5, 10], [0.7, 10], [0.7, 20]])
    assert staircase(front[:1], "min").shape == (1, 2)


def test_reference_markers_and_the_heuristic_line_sit_on_their_rows(run):
    info = pareto_info(run)
    assert [r.source for r in info.references] == ["max", "heuristic", "min"]
    for ref in info.references:
        row = run.table[run.table["source"] == ref.source].iloc[0]
        assert (ref.x, ref.y, ref.eval_id) == pytest.approx((row["macs"] / 1e9, row["accuracy"], row["eval_id"]))
    assert info.heuristic_y == run.reference("heuristic")["accuracy"]


def test_axes_name_gmacs_with_the_deployment_and_error_bars_are_the_stderr(run):
    info = pareto_info(run)
    assert info.x.label == "GMACs (unmerged, 64 tokens)" and info.x.scale == 1e9
    assert info.y.label == "accuracy (synthetic)"
    np.testing.assert_allclose(info.front_yerr, np.full(len(info.front), STDERR))
    assert info.front_xerr is None


# -------------------------------------------------------------------------- pareto artists
def _by_gid(ax, gid):
    found = [a for a in [*ax.lines, *ax.collections, *ax.texts] if a.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def test_the_knee_and_the_exports_of_a_run_are_marked_on_its_pareto_figure(run_dirs, tmp_path):
    import json
    import shutil

    from lorasearch.results.pick import pick_config

    folder = tmp_path / "nsga2"
    shutil.copytree(run_dirs / "nsga2", folder)
    copy = load_run(folder)
    knee = int(pick_config(copy.table, "knee", specs=copy.specs)[0]["eval_id"])
    other = int(copy.table["eval_id"].iloc[-1]) if int(copy.table["eval_id"].iloc[-1]) != knee else 0
    export = folder / "exports" / "config-x"
    export.mkdir(parents=True)
    (export / "subnet.json").write_text(json.dumps({"provenance": {"eval_id": other, "pick": f"row {other}"}}))
    info = pareto_info(load_run(folder))
    assert {(p.eval_id, p.label) for p in info.picked} == {(knee, "knee"), (other, f"row {other}")}
    row = copy.table.set_index("eval_id").loc[knee]
    marked = next(p for p in info.picked if p.eval_id == knee)
    assert (marked.x, marked.y) == pytest.approx((row["macs"] / 1e9, row["accuracy"]))
    ax = pareto_figure(load_run(folder)).axes[0]
    np.testing.assert_allclose(_by_gid(ax, f"picked-{knee}").get_offsets(), [[marked.x, marked.y]])
    assert _by_gid(ax, f"label-picked-{knee}").get_text() == f"knee (eval {knee})"


def test_the_pareto_axes_draw_exactly_the_info(run):
    info = pareto_info(run)
    fig = pareto_figure(run)
    ax = fig.axes[0]
    np.testing.assert_allclose(np.column_stack(_by_gid(ax, "front-step").get_data()), info.step)
    np.testing.assert_allclose(np.column_stack(_by_gid(ax, "front-points").get_data()), info.front)
    dominated = _by_gid(ax, "dominated")
    assert isinstance(dominated, PathCollection)
    np.testing.assert_allclose(dominated.get_offsets(), info.dominated)
    assert dominated.get_alpha() < 0.5  # faded
    assert _by_gid(ax, "heuristic-line").get_ydata()[0] == pytest.approx(info.heuristic_y)
    for ref in info.references:
        np.testing.assert_allclose(_by_gid(ax, f"reference-{ref.source}").get_offsets(), [[ref.x, ref.y]])
        assert _by_gid(ax, f"label-{ref.source}").get_text() == ref.source
    assert ax.get_xlabel() == info.x.label and ax.get_ylabel() == info.y.label
    legend = fig.legends[0]
    assert legend.get_window_extent().y1 <= ax.get_window_extent().y0 + 1  # below the axes, off the points


def test_other_costs_work_as_the_x_axis(tmp_path):
    result = synthetic_search(tmp_path / "r", extra=[params_objective], budget=30)
    run = load_run(tmp_path / "r")
    info = pareto_info(run, x="params")
    assert info.x.label == "parameters (M)" and info.x.scale == 1e6
    feasible = run.table
    mask = pareto_mask(to_minimisation(feasible, [run.spec("params"), run.spec("accuracy")]))
    np.testing.assert_allclose(info.front[:, 0], np.sort(feasible.loc[mask, "params"] / 1e6))
    assert len(info.front) + len(info.dominated) == len(result.table)
    with pytest.raises(LoraSearchError, match="no objective 'latency'; fix: use one of accuracy, macs, params"):
        pareto_info(run, x="latency")
    paths = plot_run(run)
    assert {p.name for p in paths} >= {"pareto_params.png", "pareto_params.svg"}


def test_infeasible_points_are_drawn_apart_and_never_on_the_front(tmp_path):
    from lorasearch.search import parse_constraint

    result = synthetic_search(constraints=[parse_constraint("macs<=30e9")])
    run = from_result(result)
    info = pareto_info(run)
    infeasible = run.table[~run.table["feasible"]]
    assert len(info.infeasible) == len(infeasible) > 0
    assert (info.front[:, 0] <= 30).all()


# -------------------------------------------------------------------------- progression
def test_progression_colours_every_point_by_its_generation(run):
    info = progression_info(run)
    table = run.table.sort_values("eval_id")
    generations = sorted(table["generation"].unique())
    assert sorted(info.colours) == generations and len(set(info.colours.values())) == len(generations)
    np.testing.assert_allclose(info.points, np.column_stack([table["macs"] / 1e9, table["accuracy"]]))
    np.testing.assert_allclose(info.step, pareto_info(run).step)
    ax = progression_figure(run).axes[0]
    scatter = _by_gid(ax, "evaluations")
    colours = {tuple(np.round(c, 6)) for c in scatter.get_facecolors()}
    assert len(colours) == len(generations)
    np.testing.assert_allclose(scatter.get_facecolors()[0], info.colours[int(table["generation"].iloc[0])])


# -------------------------------------------------------------------------- hypervolume
def test_hypervolume_curve_is_hypervolume_curve_by_evaluation(run, run_dirs):
    info = hypervolume_info(run)
    expected = hypervolume_curve(run.table, run.specs, by="eval_id")
    np.testing.assert_array_equal(info.evaluations, expected["evaluations"])
    np.testing.assert_allclose(info.hypervolume, expected["hypervolume"], rtol=1e-12)
    per_generation = pd.read_csv(run_dirs / "nsga2" / "hypervolume.csv")
    np.testing.assert_allclose(info.generation_ends, per_generation[["evaluations", "hypervolume"]].to_numpy())
    assert 0 < info.references_hypervolume <= info.hypervolume[-1]
    assert "reference point: accuracy 0" in info.reference_point
    ax = hypervolume_figure(run).axes[0]
    line = _by_gid(ax, "hypervolume")
    np.testing.assert_allclose(line.get_ydata(), info.hypervolume)


# -------------------------------------------------------------------------- comparison
def test_comparison_draws_one_front_and_one_curve_per_run(run_dirs):
    runs = [load_run(run_dirs / s) for s in ("nsga2", "random", "tpe")]
    info = comparison_info(runs)
    assert [s.label.split(" ")[0] for s in info.series] == ["nsga2", "random", "tpe"]
    assert len({s.colour for s in info.series}) == 3
    for series, r in zip(info.series, runs):
        expected, _ = sorted_front(r)
        np.testing.assert_allclose(series.front, expected)
        np.testing.assert_allclose(series.hypervolume, r.hypervolume_by_evaluation(runs[0].specs)["hypervolume"])
    fig = comparison_figure([run_dirs / s for s in ("nsga2", "random", "tpe")])
    fronts, curves = fig.axes[0], fig.axes[1]
    assert len([line for line in fronts.lines if str(line.get_gid()).startswith("front-step-")]) == 3
    assert len([line for line in curves.lines if str(line.get_gid()).startswith("hypervolume-")]) == 3
    assert [t.get_text().split(" ")[0] for t in fig.legends[0].get_texts()[:3]] == ["nsga2", "random", "tpe"]


def test_comparison_refuses_runs_of_other_objectives(run, tmp_path):
    other = from_result(synthetic_search(extra=[params_objective], budget=20), name="three")
    with pytest.raises(LoraSearchError, match="comparison: three has objectives"):
        comparison_info([run, other])


# -------------------------------------------------------------------------------- files
def test_plot_run_writes_png_and_svg_of_each_figure(run_dirs, tmp_path):
    paths = plot_run(run_dirs / "nsga2", out=tmp_path / "plots")
    names = {p.name for p in paths}
    assert names == {f"{stem}.{ext}" for stem in ("pareto", "progression", "hypervolume") for ext in ("png", "svg")}
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in data[:2000]


def test_in_memory_results_plot_too(tmp_path):
    result = synthetic_search(budget=24)
    assert isinstance(pareto_figure(result), Figure)
    with pytest.raises(LoraSearchError, match="in-memory result has no run directory; fix: pass out"):
        plot_run(result)
    assert len(plot_run(result, out=tmp_path)) == 6
