"""The knee is a compromise: an interior point of the front whenever the front has one.

Every expected pick below is worked out by hand in the comments, from the rule in
`lorasearch.results.pick`: normalise each objective over the front (best 0, worst 1), leave out the
ends (best in some objective), take the smallest sum of what is left.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lorasearch.results.pick import knee_index, pick_config, reference_label


def table(points: list[tuple[int, float, float, str]]) -> pd.DataFrame:
    """A results table of (eval_id, accuracy, macs, source) rows, every row feasible."""
    return pd.DataFrame([
        {"eval_id": i, "config": json.dumps({"g": i}), "accuracy": acc, "macs": macs, "feasible": True, "source": src}
        for i, acc, macs, src in points
    ])


def knee_of(points: list[tuple[int, float, float, str]]) -> pd.Series:
    row, _ = pick_config(table(points), "knee")
    return row


def test_a_sagging_front_gives_its_least_sagging_interior_point_not_an_end():
    # accuracy 0.45..0.80 (range 0.35), MACs 40..100 (range 60); z = ((0.80 - acc) / 0.35, (macs - 40) / 60)
    #   eval 2: (0.20/0.35, 50/60) = (0.571, 0.833), sum 1.405
    #   eval 3: (0.30/0.35, 30/60) = (0.857, 0.500), sum 1.357  <- smallest: the knee
    # Both interior points lie beyond the line joining the ends (sum > 1); each end sums to exactly 1,
    # which is why a rule over all points handed back the max config (eval 0) on such a front.
    points = [(0, 0.80, 100, "max"), (1, 0.45, 40, "min"), (2, 0.60, 90, "nsga2"), (3, 0.50, 70, "nsga2")]
    row = knee_of(points)
    assert int(row["eval_id"]) == 3
    assert reference_label(row) is None


def test_a_bulging_front_gives_the_point_farthest_inside_the_line():
    #   eval 2: ((0.80 - 0.78) / 0.35, (60 - 40) / 60) = (0.057, 0.333), sum 0.390  <- the knee
    #   eval 3: ((0.80 - 0.70) / 0.35, (50 - 40) / 60) = (0.286, 0.167), sum 0.452
    points = [(0, 0.80, 100, "max"), (1, 0.45, 40, "min"), (2, 0.78, 60, "nsga2"), (3, 0.70, 50, "nsga2")]
    assert int(knee_of(points)["eval_id"]) == 2


def test_an_interior_point_on_the_line_is_still_preferred_to_the_ends():
    # eval 2 at half the accuracy range and half the MAC range: (0.5, 0.5), sum 1.0, as the ends
    points = [(0, 0.80, 100, "max"), (1, 0.40, 40, "min"), (2, 0.60, 70, "nsga2")]
    assert int(knee_of(points)["eval_id"]) == 2


def test_a_two_point_front_gives_the_first_end_and_says_which_reference_it_is():
    # both are ends, both sum to 1 and lie at distance 1 from the ideal point: the lowest eval_id wins
    points = [(0, 0.80, 100, "max"), (1, 0.45, 40, "min")]
    row = knee_of(points)
    assert int(row["eval_id"]) == 0 and reference_label(row) == "max"
    assert reference_label(knee_of([(5, 0.80, 100, "nsga2"), (7, 0.45, 40, "min+heuristic")][::-1])) is None


def test_a_one_point_front_gives_that_point():
    # eval 1 dominates eval 0 (more accurate and cheaper), so the front is eval 1 alone
    row = knee_of([(0, 0.50, 100, "max"), (1, 0.60, 80, "nsga2")])
    assert int(row["eval_id"]) == 1
    assert knee_index([[3.0, 4.0]]) == 0


def test_dominated_and_infeasible_points_never_become_the_knee():
    # eval 4 would be the knee (sum 0.39) but breaks a constraint; eval 5 is dominated by eval 2.
    # Left: eval 2 (0.571 + 0.833 = 1.405) and eval 3 (0.857 + 0.500 = 1.357) -> eval 3
    points = [(0, 0.80, 100, "max"), (1, 0.45, 40, "min"), (2, 0.60, 90, "nsga2"), (3, 0.50, 70, "nsga2"),
              (4, 0.78, 60, "nsga2"), (5, 0.55, 95, "nsga2")]
    frame = table(points)
    frame.loc[frame["eval_id"] == 4, "feasible"] = False
    row, _ = pick_config(frame, "knee")
    assert int(row["eval_id"]) == 3


def test_three_objectives_leave_out_every_point_best_in_one_of_them():
    # minimisation points (normalised already: each column spans 0..1):
    #   0: (0, 1, 1) best in the first   1: (1, 0, 1) best in the second   2: (1, 1, 0) best in the third
    #   3: (0.4, 0.4, 0.4) sum 1.2       4: (0.2, 0.7, 0.5) sum 1.4         -> 3
    points = [[0, 1, 1], [1, 0, 1], [1, 1, 0], [0.4, 0.4, 0.4], [0.2, 0.7, 0.5]]
    assert knee_index(points) == 3


@pytest.mark.parametrize("scale", [1.0, 1e9])
def test_the_knee_does_not_depend_on_the_units(scale):
    # the sagging front again, MACs in units or in billions: the same pick
    points = [(0, 0.80, 100 * scale, "max"), (1, 0.45, 40 * scale, "min"), (2, 0.60, 90 * scale, "nsga2"),
              (3, 0.50, 70 * scale, "nsga2")]
    assert int(knee_of(points)["eval_id"]) == 3
