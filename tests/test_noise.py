"""Paired noise checks: a front whose extremes are within noise is said to be, in the CLI and the report."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ItemScores, make_space

from lorasearch.report.document import report_markdown
from lorasearch.results.noise import paired_difference
from lorasearch.search import SearchSettings, run_search


class Flat(ItemScores):
    """Every config has the same true accuracy: any front is noise."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.truth.accuracy = lambda config: 0.6


def test_the_paired_standard_error_is_that_of_the_per_item_differences():
    a, b = [1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 0, 1, 0, 1, 0, 0]
    mean, se = paired_difference(a, b)
    d = np.array(a) - np.array(b)
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(8))


def test_a_flat_space_is_flagged_as_noise(capsys):
    scores = Flat(make_space(), n_items=40)
    result = run_search(scores.space, scores.objectives(), SearchSettings(budget=16, population=8, seed=0))
    warning = result.noise_warning()
    assert warning is not None and "within noise" in warning and "(paired)" in warning and "40 items" in warning
    text = report_markdown(result)
    assert "**Within noise:**" in text and "**Warning:**" in text

    from lorasearch.cli.printing import print_search_summary

    print_search_summary(result)
    assert "warning: the front is within noise" in capsys.readouterr().out


def test_a_real_range_is_not_flagged():
    scores = ItemScores(make_space(), n_items=120, noise=0.1)
    result = run_search(scores.space, scores.objectives(), SearchSettings(budget=16, population=8, seed=0))
    assert result.noise_warning() is None
    assert result.items_of("accuracy")  # the per-item scores travel with the result


def test_a_run_read_back_keeps_its_item_scores(tmp_path):
    from lorasearch.results import load_run

    scores = Flat(make_space(), n_items=40)
    run_search(scores.space, scores.objectives(), SearchSettings(budget=16, population=8, seed=0),
               out_dir=tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert len(run.items_of("accuracy")) == 16 and run.noise_warning() is not None


def test_distinct_steps_keep_only_points_more_than_two_paired_errors_apart():
    import pandas as pd

    from lorasearch.results.noise import distinct_steps

    base = np.arange(400) / 400
    # item scores of four configs, each right on the items below its level: 2 and 3 differ on one item
    levels = {0: 0.3, 1: 0.5, 2: 0.7, 3: 0.7025}
    items = {k: [float(u < p) for u in base] for k, p in levels.items()}
    front = pd.DataFrame({"eval_id": list(levels), "accuracy": [float(np.mean(items[k])) for k in levels]})
    assert distinct_steps(front, items) == [0, 1, 2]
    assert distinct_steps(front.iloc[:0], items) == []


def test_the_report_and_summary_name_the_points_that_stand_apart(capsys):
    scores = ItemScores(make_space(), n_items=120, noise=0.1)
    result = run_search(scores.space, scores.objectives(), SearchSettings(budget=16, population=8, seed=0))
    steps = result.distinct_steps()
    assert steps and set(steps) <= set(result.pareto["eval_id"].astype(int))
    from lorasearch.cli.printing import print_search_summary

    print_search_summary(result)
    out = capsys.readouterr().out
    if len(result.pareto) > 1:
        assert f"evaluations {', '.join(map(str, steps))}" in out
    if result.noise_notes() and len(steps) > 1:
        assert "What the items do resolve" in report_markdown(result)


@pytest.mark.parametrize("max_right, min_right, words", [
    (5, 6, "is below the min config's by 0.100 ±"),   # max 0.5, min 0.6: a gap of -0.1
    (6, 5, "exceeds the min config's by 0.100 ±"),
])
def test_the_warning_says_below_rather_than_exceeds_by_a_negative_gap(max_right, min_right, words):
    import pandas as pd

    from lorasearch.results.noise import extremes_warning

    items = {0: [1.0] * max_right + [0.0] * (10 - max_right), 1: [1.0] * min_right + [0.0] * (10 - min_right)}
    items[1] = items[1][::-1]  # different items right, so the paired error is large
    rows = {label: pd.Series({"eval_id": i, "accuracy": sum(items[i]) / 10, "accuracy_items": 10})
            for label, i in (("max", 0), ("min", 1))}
    warning = extremes_warning(rows, items)
    assert warning is not None and words in warning and "by -" not in warning
