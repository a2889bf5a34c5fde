"""Figures of a search: the Pareto front, the search's progression, hypervolume and comparisons.

Every figure is computed first as plain data in plotted units (``pareto_info``,
``progression_info``, ``hypervolume_info`` and ``comparison_info`` return NamedTuples), then
drawn with matplotlib (``draw_*``); tests check the data, and the drawing holds no logic.
The ``*_figure`` functions do both and return a `matplotlib.figure.Figure` (no pyplot state, so
any backend works); `save_figure` writes PNG and SVG; `plot_run` writes a run's figures.

Cost axes are scaled to readable units (GMACs, M parameters, ms) and name the deployment the
MACs model (merged or unmerged), as the objective's unit in run.yaml says.
"""

from __future__ import annotations

import json
import math
from functools import wraps
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence, Union

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import LoraSearchError
from ..results.pick import pick_config
from ..results.run import SearchResult, as_run
from ..results.table import ObjectiveSpec, hypervolume, pareto_mask, to_minimisation

RunLike = Union[SearchResult, str, Path]

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
OKABE_ITO = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "green": "#009E73",
    "orange": "#E69F00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
RUN_COLOURS = ("blue", "vermillion", "green", "orange", "purple", "sky", "black")
FRONT_COLOUR = OKABE_ITO["blue"]
FADED = "#8c8c8c"
PICK_COLOUR = OKABE_ITO["purple"]
REFERENCE_STYLE = {  # source -> (marker, colour, size)
    "max": ("^", OKABE_ITO["vermillion"], 90),
    "heuristic": ("*", OKABE_ITO["green"], 190),
    "min": ("v", OKABE_ITO["orange"], 90),
}
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "svg.fonttype": "none",  # keep text as text in SVG
    "savefig.dpi": 150,
}
FORMATS = ("png", "svg")


# --------------------------------------------------------------------------------- data
class Axis(NamedTuple):
    """One plotted objective: its column, its label (with unit), and the divisor to plotted units."""

    name: str
    label: str
    scale: float
    direction: str


class Reference(NamedTuple):
    """A reference config (max, heuristic or min) at its plotted position."""

    source: str
    x: float
    y: float
    eval_id: int


class Picked(NamedTuple):
    """A picked subnet (the knee, or an export of the run) at its plotted position."""

    label: str
    x: float
    y: float
    eval_id: int


class ParetoInfo(NamedTuple):
    """What the Pareto figure draws, in plotted units.

    ``front`` is the non-dominated set over the two plotted objectives (feasible rows only),
    sorted by x; ``step`` the vertices of its attainment staircase; ``dominated`` the other
    feasible evaluations; ``heuristic_y`` the height of the heuristic's horizontal line;
    ``picked`` the subnets ``export --pick knee`` (and any earlier export of the run) takes away.
    """

    title: str
    x: Axis
    y: Axis
    dominated: np.ndarray
    infeasible: np.ndarray
    front: np.ndarray
    front_ids: np.ndarray
    front_xerr: np.ndarray | None
    front_yerr: np.ndarray | None
    step: np.ndarray
    references: list[Reference]
    heuristic_y: float | None
    picked: tuple[Picked, ...] = ()


class ProgressionInfo(NamedTuple):
    """What the progression figure draws: every evaluation coloured by its generation."""

    title: str
    x: Axis
    y: Axis
    points: np.ndarray
    generations: np.ndarray
    colours: dict[int, tuple[float, float, float, float]]
    step: np.ndarray


class HypervolumeInfo(NamedTuple):
    """What the hypervolume figure draws: the running hypervolume against evaluations or item forwards."""

    title: str
    evaluations: np.ndarray
    hypervolume: np.ndarray
    generation_ends: np.ndarray
    references_hypervolume: float | None
    reference_point: str
    x: np.ndarray
    """The x values: ``evaluations``, or the validation items scored so far."""
    x_label: str


class RunSeries(NamedTuple):
    """One run in a comparison: its front, its staircase and its hypervolume curve."""

    label: str
    colour: str
    front: np.ndarray
    step: np.ndarray
    dominated: np.ndarray
    evaluations: np.ndarray
    hypervolume: np.ndarray


class ComparisonInfo(NamedTuple):
    """What the comparison figure draws: one front and one hypervolume curve per run."""

    title: str
    x: Axis
    y: Axis
    series: list[RunSeries]
    references: list[Reference]
    heuristic_y: float | None
    reference_point: str


def objective_axis(run: SearchResult, name: str, values: Iterable[float] | None = None) -> Axis:
    """The axis of objective ``name``: MACs in G/M/K MACs with their deployment, parameters in
    B/M/K, seconds in ms when small; ``values`` (default: the run's) choose the prefix."""
    spec = _spec_or_column(run, name)
    data = np.asarray(list(values) if values is not None else run.table[name], dtype=float)
    top = float(np.nanmax(np.abs(data))) if data.size else 0.0
    unit = spec.unit or ""
    if name.startswith("macs") or unit.startswith("MACs"):
        scale, prefix = _si_prefix(top, "GMK", floor=0.1)  # 0.38 GMACs rather than 380 MMACs
        return Axis(name, f"{prefix}MACs{_macs_note(run, name, unit)}", scale, spec.direction)
    if name == "params" or unit == "params":
        scale, prefix = _si_prefix(top, "BMK")
        return Axis(name, f"parameters ({prefix})" if prefix else "parameters", scale, spec.direction)
    if unit == "s" and 0 < top < 1:
        return Axis(name, f"{name} (ms)", 1e-3, spec.direction)
    task = run.info.get("task")
    detail = unit or (task if name == "accuracy" and isinstance(task, str) else "")
    return Axis(name, f"{name} ({detail})" if detail else name, 1.0, spec.direction)


def _spec_or_column(run: SearchResult, name: str) -> ObjectiveSpec:
    """The objective's spec, or a stand-in for a measured column that is no objective (e.g. params)."""
    if name in {s.name for s in run.specs} or name not in run.table:
        return run.spec(name)
    return ObjectiveSpec(name, "min", 0.0, 1.0, "params" if name == "params" else "")


def _si_prefix(top: float, letters: str, floor: float = 1.0) -> tuple[float, str]:
    """The largest of 1e9/1e6/1e3 (named by ``letters``) that leaves ``top`` at least ``floor``."""
    for letter, scale in zip(letters, (1e9, 1e6, 1e3)):
        if top >= floor * scale:
            return scale, letter
    return 1.0, ""


def _macs_note(run: SearchResult, name: str, unit: str) -> str:
    inside = unit[unit.find("(") + 1:unit.rfind(")")] if "(" in unit else ""
    deployment = inside or (name.removeprefix("macs_") if name != "macs" else run.info.get("deployment", ""))
    seq_len = run.info.get("seq_len")
    parts = [str(p) for p in (deployment, f"{seq_len} tokens" if seq_len else "") if p]
    return f" ({', '.join(parts)})" if parts else ""


def default_axes(run: SearchResult) -> tuple[str, str]:
    """The objectives a Pareto figure plots by default: (macs or the first cost, accuracy or the first score)."""
    names = [s.name for s in run.specs]
    costs = [s.name for s in run.specs if s.direction == "min"] or names
    scores = [s.name for s in run.specs if s.direction == "max"] or names[::-1]
    x = "macs" if "macs" in names else costs[0]
    y = "accuracy" if "accuracy" in names else next(n for n in scores if n != x)
    return x, y


def front_mask(table: pd.DataFrame, specs: Sequence[ObjectiveSpec]) -> np.ndarray:
    """True for the rows on the front over ``specs`` (all rows should be feasible)."""
    if table.empty:
        return np.zeros(0, dtype=bool)
    return pareto_mask(to_minimisation(table, specs))


def staircase(front: np.ndarray, x_direction: str) -> np.ndarray:
    """Vertices of the step line through a front sorted by x: the boundary of what it attains.

    With x minimised (a cost), a front point is the best on offer from its own x up to the next
    point's, so the line runs right, then up or down (``steps-post``); with x maximised it steps
    first, then runs right (``steps-pre``).
    """
    points = np.unique(front, axis=0) if len(front) else front.reshape(0, 2)
    points = points[np.lexsort((points[:, 1], points[:, 0]))]
    if len(points) < 2:
        return points
    vertices = [points[0]]
    for previous, point in zip(points[:-1], points[1:]):
        corner = (point[0], previous[1]) if x_direction == "min" else (previous[0], point[1])
        vertices += [np.array(corner), point]
    return np.array(vertices)


def _xy(table: pd.DataFrame, x: Axis, y: Axis) -> np.ndarray:
    if table.empty:
        return np.empty((0, 2))
    return np.column_stack([table[x.name].to_numpy(float) / x.scale, table[y.name].to_numpy(float) / y.scale])


def _stderr(table: pd.DataFrame, axis: Axis) -> np.ndarray | None:
    column = f"{axis.name}_stderr"
    if column not in table or table[column].isna().all():
        return None
    return table[column].to_numpy(float) / axis.scale


def _references(run: SearchResult, x: Axis, y: Axis) -> list[Reference]:
    return [
        Reference(source, float(row[x.name]) / x.scale, float(row[y.name]) / y.scale, int(row["eval_id"]))
        for source, row in run.references.items()
    ]


def _title(run: SearchResult, *parts: str) -> str:
    head = run.name if not run.strategy or run.strategy == run.name else f"{run.name} ({run.strategy})"
    return " · ".join([head, *parts])


def picked_subnets(run: SearchResult) -> dict[int, str]:
    """The subnets taken from a run, by eval_id: the knee (what the quickstart and ``export`` take by
    default) and every export found in ``RUN_DIR/exports/*/subnet.json``, labelled by its pick."""
    picks: dict[int, list[str]] = {}
    try:
        row, _ = pick_config(run.table, "knee", specs=run.specs)
        picks.setdefault(int(row["eval_id"]), []).append("knee")
    except LoraSearchError:
        pass  # fewer than two objectives, or no feasible evaluation: no knee to show
    for file in sorted(run.path.glob("exports/*/subnet.json")) if run.path is not None else []:
        try:
            provenance = json.loads(file.read_text()).get("provenance") or {}
        except (OSError, ValueError):
            continue
        if isinstance(provenance.get("eval_id"), int) and provenance.get("pick"):
            labels = picks.setdefault(provenance["eval_id"], [])
            if provenance["pick"] not in labels:
                labels.append(str(provenance["pick"]))
    return {eval_id: ", ".join(labels) for eval_id, labels in picks.items()}


def pareto_info(run: SearchResult, x: str | None = None, y: str | None = None) -> ParetoInfo:
    """The data of the Pareto figure of ``run`` over objectives ``x`` and ``y`` (see `default_axes`)."""
    x, y = _pick_axes(run, x, y)
    ax_x, ax_y = objective_axis(run, x), objective_axis(run, y)
    feasible = run.feasible
    on_front = front_mask(feasible, [run.spec(x), run.spec(y)])
    front = feasible[on_front].sort_values([x, y])
    references = _references(run, ax_x, ax_y)
    heuristic = next((r.y for r in references if r.source == "heuristic"), None)
    return ParetoInfo(
        title=_title(run, f"{len(run.table)} evaluations", f"front of {len(front)}"),
        x=ax_x,
        y=ax_y,
        dominated=_xy(feasible[~on_front], ax_x, ax_y),
        infeasible=_xy(run.table.drop(feasible.index), ax_x, ax_y),
        front=_xy(front, ax_x, ax_y),
        front_ids=front["eval_id"].to_numpy(int),
        front_xerr=_stderr(front, ax_x),
        front_yerr=_stderr(front, ax_y),
        step=staircase(_xy(front, ax_x, ax_y), ax_x.direction),
        references=references,
        heuristic_y=heuristic,
        picked=_picked(run, ax_x, ax_y),
    )


def _picked(run: SearchResult, x: Axis, y: Axis) -> tuple[Picked, ...]:
    rows = run.table.set_index(run.table["eval_id"].astype(int))
    return tuple(Picked(label, float(rows.at[eval_id, x.name]) / x.scale, float(rows.at[eval_id, y.name]) / y.scale,
                        eval_id)
                 for eval_id, label in picked_subnets(run).items() if eval_id in rows.index)


def _pick_axes(run: SearchResult, x: str | None, y: str | None) -> tuple[str, str]:
    default_x, default_y = default_axes(run)
    x, y = x or default_x, y or default_y
    run.spec(x), run.spec(y)  # unknown names raise here
    if x == y:
        raise LoraSearchError(f"{run.name}: x and y are both {x!r}; fix: plot two different objectives")
    return x, y


def generation_colours(generations: Iterable[int]) -> dict[int, tuple[float, float, float, float]]:
    """One colour per generation, early dark to late light (viridis: colour-blind safe, prints in grey)."""
    ordered = sorted({int(g) for g in generations})
    cmap = mpl.colormaps["viridis"]
    positions = np.linspace(0.0, 0.92, len(ordered)) if len(ordered) > 1 else [0.0]
    return {g: tuple(float(c) for c in cmap(p)) for g, p in zip(ordered, positions)}


def progression_info(run: SearchResult, x: str | None = None, y: str | None = None) -> ProgressionInfo:
    """The data of the progression figure: every evaluation, coloured by its generation."""
    x, y = _pick_axes(run, x, y)
    ax_x, ax_y = objective_axis(run, x), objective_axis(run, y)
    table = run.table.sort_values("eval_id")
    generations = table["generation"].to_numpy(int)
    front = run.feasible[front_mask(run.feasible, [run.spec(x), run.spec(y)])]
    n_gen = len(set(generations))
    return ProgressionInfo(
        title=_title(run, f"{len(table)} evaluations in {n_gen} generations"),
        x=ax_x,
        y=ax_y,
        points=_xy(table, ax_x, ax_y),
        generations=generations,
        colours=generation_colours(generations),
        step=staircase(_xy(front, ax_x, ax_y), ax_x.direction),
    )


def reference_point_text(run: SearchResult, specs: Sequence[ObjectiveSpec] | None = None) -> str:
    """The hypervolume's fixed reference point (each objective's ``worst`` bound), in plotted units."""
    parts = []
    for spec in specs or run.specs:
        axis = objective_axis(run, spec.name)
        head = axis.label.split(" (")[0]
        value = _number(spec.worst / axis.scale)
        if head.endswith("MACs"):
            parts.append(f"{value} {head}")
        else:  # the scaled unit, e.g. "M" of "parameters (M)" or "ms" of "latency (ms)"
            unit = axis.label[axis.label.find("(") + 1:-1] if axis.scale != 1 else ""
            parts.append(f"{spec.name} {value} {unit}".rstrip())
    return "reference point: " + ", ".join(parts)


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


HV_AXES = {"evaluations": "evaluations", "item_forwards": "validation items scored (item forwards)"}


def hypervolume_info(run: SearchResult, x: str = "evaluations") -> HypervolumeInfo:
    """The data of the hypervolume figure: the running hypervolume after each evaluation, against
    ``x``: ``evaluations`` or ``item_forwards`` (the search's cost in items scored)."""
    if x not in HV_AXES:
        raise LoraSearchError(f"hypervolume x axis {x!r}: unknown; fix: use one of {', '.join(HV_AXES)}")
    curve = run.hypervolume_by_evaluation()
    ends = _generation_ends(run.table, curve, x)
    references = list(run.references.values())
    ref_hv = hypervolume(to_minimisation(pd.DataFrame(references), run.specs)) if references else None
    final = curve["hypervolume"].iloc[-1]
    cost = f"{int(curve['item_forwards'].iloc[-1]):,} items scored" if x == "item_forwards" else f"{len(curve)} evaluations"
    return HypervolumeInfo(
        title=_title(run, f"hypervolume {final:.4f} after {cost}"),
        evaluations=curve["evaluations"].to_numpy(int),
        hypervolume=curve["hypervolume"].to_numpy(float),
        generation_ends=ends,
        references_hypervolume=ref_hv,
        reference_point=reference_point_text(run),
        x=curve[x].to_numpy(int),
        x_label=HV_AXES[x],
    )


def _generation_ends(table: pd.DataFrame, curve: pd.DataFrame, x: str = "evaluations") -> np.ndarray:
    """(x, hypervolume) at the last evaluation of each generation."""
    last_ids = table.groupby("generation")["eval_id"].max()
    at_end = curve[curve["eval_id"].isin(last_ids)]
    return at_end[[x, "hypervolume"]].to_numpy(float)


def comparison_info(
    runs: Sequence[SearchResult],
    labels: Sequence[str] | None = None,
    x: str | None = None,
    y: str | None = None,
    include_dominated: bool = False,
) -> ComparisonInfo:
    """The data of the comparison figure: each run's front and hypervolume curve.

    Hypervolumes use the first run's bounds for every run, so the curves share one reference
    point; the runs must have the same objectives.
    """
    if not runs:
        raise LoraSearchError("comparison: no runs given; fix: pass two or more run directories")
    first = runs[0]
    _check_same_objectives(runs)
    x, y = _pick_axes(first, x, y)
    labels = list(labels) if labels is not None else _labels(runs)
    every = pd.concat([r.table[[x, y]] for r in runs])
    ax_x, ax_y = objective_axis(first, x, every[x]), objective_axis(first, y, every[y])
    series = []
    for i, (run, label) in enumerate(zip(runs, labels)):
        feasible = run.feasible
        on_front = front_mask(feasible, [first.spec(x), first.spec(y)])
        front = _xy(feasible[on_front].sort_values([x, y]), ax_x, ax_y)
        curve = run.hypervolume_by_evaluation(first.specs)
        series.append(RunSeries(
            label=f"{label} (HV {curve['hypervolume'].iloc[-1]:.4f})",
            colour=OKABE_ITO[RUN_COLOURS[i % len(RUN_COLOURS)]],
            front=front,
            step=staircase(front, ax_x.direction),
            dominated=_xy(feasible[~on_front], ax_x, ax_y) if include_dominated else np.empty((0, 2)),
            evaluations=curve["evaluations"].to_numpy(int),
            hypervolume=curve["hypervolume"].to_numpy(float),
        ))
    references = _references(first, ax_x, ax_y)
    return ComparisonInfo(
        title=" vs ".join(labels),
        x=ax_x,
        y=ax_y,
        series=series,
        references=references,
        heuristic_y=next((r.y for r in references if r.source == "heuristic"), None),
        reference_point=reference_point_text(first),
    )


def _check_same_objectives(runs: Sequence[SearchResult]) -> None:
    names = [s.name for s in runs[0].specs]
    for run in runs[1:]:
        other = [s.name for s in run.specs]
        if sorted(other) != sorted(names):
            raise LoraSearchError(
                f"comparison: {run.name} has objectives {', '.join(other)} but {runs[0].name} has "
                f"{', '.join(names)}; fix: compare runs of the same objectives"
            )


def _labels(runs: Sequence[SearchResult]) -> list[str]:
    """Strategy names when they tell the runs apart, else folder names."""
    strategies = [r.strategy for r in runs]
    if all(strategies) and len(set(strategies)) == len(runs):
        return strategies
    return [r.name for r in runs]


# ------------------------------------------------------------------------------ drawing
def _new_figure(size: tuple[float, float], ncols: int = 1) -> tuple[Figure, list[Axes]]:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=size, layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _styled(draw):
    """Run a drawing function under the figures' rc style (fonts, grid, spines)."""

    @wraps(draw)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _draw_references(ax: Axes, references: Sequence[Reference], x: Axis, y: Axis, coloured: bool = True) -> None:
    for ref in references:
        marker, colour, size = REFERENCE_STYLE.get(ref.source, ("D", OKABE_ITO["black"], 70))
        ax.scatter([ref.x], [ref.y], marker=marker, s=size, color=colour if coloured else "white",
                   edgecolors="black", linewidths=0.9, zorder=6, gid=f"reference-{ref.source}")
        dx, dy = _label_offset(ref.source, x.direction, y.direction)
        ax.annotate(ref.source, (ref.x, ref.y), xytext=(dx, dy), textcoords="offset points",
                    ha="right" if dx < 0 else "left", va="bottom" if dy > 0 else "top",
                    fontsize=9, fontweight="bold", color="black", zorder=7, gid=f"label-{ref.source}",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def _label_offset(source: str, x_direction: str, y_direction: str) -> tuple[float, float]:
    """Text offset (points) of a reference's label: towards better x and y, the side of the front
    that no evaluation can occupy; the min config's label goes over it, the max config's beside it."""
    sx = -1 if x_direction == "min" else 1
    sy = 1 if y_direction == "max" else -1
    if source == "min":
        return -sx * 2, sy * 9
    if source == "max":
        return sx * 10, sy * 2
    return sx * 8, sy * 8


def _draw_heuristic_line(ax: Axes, y_value: float | None, axis: Axis, colour: str = REFERENCE_STYLE["heuristic"][1]) -> None:
    if y_value is None:
        return
    shown = _number(y_value)
    ax.axhline(y_value, ls="--", lw=1.1, color=colour, zorder=2,
               label=f"heuristic's {axis.name} ({shown})", gid="heuristic-line")


def _legend_below(fig: Figure, ax: Axes, ncols: int = 3, extra: Sequence[Line2D] = ()) -> None:
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = [*extra, *handles], [h.get_label() for h in extra] + labels
    if handles:
        if sum(len(label) for label in labels[:ncols]) > 24 * ncols:  # too wide for one row of ncols
            ncols -= 1
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(handles)), frameon=False)


@_styled
def draw_pareto(info: ParetoInfo, ax: Axes | None = None) -> Figure:
    """Draw a `ParetoInfo`: faded dominated points, the front as a step line with (error-barred)
    markers, the max/min/heuristic configs annotated, and the heuristic's horizontal line."""
    fig, ax = _figure_for(ax, (6.4, 4.9))
    if len(info.dominated):
        ax.scatter(*info.dominated.T, s=16, color=FADED, alpha=0.35, linewidths=0, zorder=1,
                   label=f"dominated ({len(info.dominated)})", gid="dominated")
    if len(info.infeasible):
        ax.scatter(*info.infeasible.T, s=18, marker="x", color=FADED, alpha=0.45, linewidths=0.8, zorder=1,
                   label=f"infeasible ({len(info.infeasible)})", gid="infeasible")
    ax.plot(*info.step.T, color=FRONT_COLOUR, lw=1.6, zorder=3, gid="front-step")
    bars = ax.errorbar(*info.front.T, xerr=info.front_xerr, yerr=info.front_yerr, fmt="o", ms=5, color=FRONT_COLOUR,
                       mec="white", mew=0.7, ecolor=FRONT_COLOUR, elinewidth=0.8, capsize=2, zorder=4,
                       label=f"Pareto front ({len(info.front)}" + (", ± 1 s.e.)" if info.front_yerr is not None else ")"))
    bars.lines[0].set_gid("front-points")
    _draw_heuristic_line(ax, info.heuristic_y, info.y)
    _draw_references(ax, info.references, info.x, info.y)
    _draw_picked(ax, info.picked)
    _finish_axes(ax, info.title, info.x.label, info.y.label)
    _legend_below(fig, ax)
    return fig


def _draw_picked(ax: Axes, picked: Sequence[Picked]) -> None:
    """A ring around each picked subnet, labelled with its pick and eval_id."""
    for i, pick in enumerate(picked):
        ax.scatter([pick.x], [pick.y], s=260, facecolors="none", edgecolors=PICK_COLOUR, linewidths=2.0, zorder=8,
                   label="picked (the knee; exports of the run)" if i == 0 else None, gid=f"picked-{pick.eval_id}")
        ax.annotate(f"{pick.label} (eval {pick.eval_id})", (pick.x, pick.y), xytext=(10, -14), textcoords="offset points",
                    fontsize=8.5, color=PICK_COLOUR, zorder=9, gid=f"label-picked-{pick.eval_id}",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


@_styled
def draw_progression(info: ProgressionInfo, ax: Axes | None = None) -> Figure:
    """Draw a `ProgressionInfo`: evaluations coloured by generation, a colour bar, the final front."""
    fig, ax = _figure_for(ax, (6.4, 4.6))
    order = sorted(info.colours)
    colours = [info.colours[int(g)] for g in info.generations]
    ax.scatter(*info.points.T, c=colours, s=22, edgecolors="white", linewidths=0.3, zorder=3, gid="evaluations")
    ax.plot(*info.step.T, color="black", lw=1.0, ls="-", alpha=0.7, zorder=2, label="final front", gid="front-step")
    cmap = ListedColormap([info.colours[g] for g in order])
    norm = BoundaryNorm(np.arange(len(order) + 1) - 0.5, len(order))
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02, aspect=30)
    bar.set_label("generation")
    ticks = _bar_ticks(len(order))
    bar.set_ticks(ticks, labels=[str(order[t]) for t in ticks])
    bar.minorticks_off()
    bar.outline.set_visible(False)
    _finish_axes(ax, info.title, info.x.label, info.y.label)
    ax.legend(loc="best", frameon=False)
    return fig


def _bar_ticks(n: int, most: int = 8) -> list[int]:
    step = max(1, math.ceil(n / most))
    return list(range(0, n, step))


@_styled
def draw_hypervolume(info: HypervolumeInfo, ax: Axes | None = None) -> Figure:
    """Draw a `HypervolumeInfo`: the running hypervolume, generation ends, the references' own."""
    fig, ax = _figure_for(ax, (6.4, 4.2))
    ax.step(info.x, info.hypervolume, where="post", color=FRONT_COLOUR, lw=1.8,
            label="hypervolume", gid="hypervolume")
    if len(info.generation_ends):
        ax.scatter(*info.generation_ends.T, s=18, color=FRONT_COLOUR, zorder=3, label="end of a generation",
                   gid="generation-ends")
    if info.references_hypervolume is not None:
        ax.axhline(info.references_hypervolume, ls=":", lw=1.2, color=REFERENCE_STYLE["heuristic"][1],
                   label=f"max + heuristic + min only ({info.references_hypervolume:.4f})", gid="references-hypervolume")
    _finish_axes(ax, info.title, info.x_label, "hypervolume (normalised)")
    ax.set_xlim(left=0)
    ax.text(0.99, 0.02, info.reference_point, transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
            color="#555555")
    ax.legend(loc="center right", frameon=False)
    return fig


@_styled
def draw_comparison(info: ComparisonInfo) -> Figure:
    """Draw a `ComparisonInfo`: fronts side by side with hypervolume curves on a shared reference point."""
    fig, (left, right) = _new_figure((11.5, 4.9), ncols=2)
    handles = []
    for s in info.series:
        if len(s.dominated):
            left.scatter(*s.dominated.T, s=10, color=s.colour, alpha=0.18, linewidths=0, zorder=1)
        left.plot(*s.step.T, color=s.colour, lw=1.6, zorder=3, gid=f"front-step-{s.label}")
        left.plot(*s.front.T, "o", ms=4.5, color=s.colour, mec="white", mew=0.6, zorder=4,
                  gid=f"front-points-{s.label}")
        right.step(s.evaluations, s.hypervolume, where="post", color=s.colour, lw=1.8, gid=f"hypervolume-{s.label}")
        handles.append(Line2D([], [], color=s.colour, lw=1.6, marker="o", ms=4.5, mec="white", label=s.label))
    # the runs take the palette's colours, so the references go neutral here
    _draw_heuristic_line(left, info.heuristic_y, info.y, colour="#444444")
    _draw_references(left, info.references, info.x, info.y, coloured=False)
    _finish_axes(left, "Pareto fronts", info.x.label, info.y.label)
    _finish_axes(right, "hypervolume", "evaluations", "hypervolume (normalised)")
    right.set_xlim(left=0)
    right.text(0.99, 0.02, info.reference_point, transform=right.transAxes, ha="right", va="bottom", fontsize=8,
               color="#555555")
    fig.suptitle(info.title, fontsize=12)
    _legend_below(fig, left, ncols=4, extra=handles)
    return fig


def _figure_for(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, (new,) = _new_figure(size)
    return fig, new


def _finish_axes(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.margins(0.06)


# ------------------------------------------------------------------------------ figures
def pareto_figure(run: RunLike, x: str | None = None, y: str | None = None, ax: Axes | None = None) -> Figure:
    """The Pareto front of a run (a `SearchResult`, a `SearchResult` or a run directory).

    Args:
        x, y: objective names; default ``macs`` (or the first cost) against ``accuracy``
            (or the first score). Any cost works as x: ``params``, ``latency``, ``macs_merged``.
        ax: draw into these axes instead of a new figure.
    """
    return draw_pareto(pareto_info(as_run(run), x, y), ax)


def progression_figure(run: RunLike, x: str | None = None, y: str | None = None, ax: Axes | None = None) -> Figure:
    """Every evaluation of a run coloured by generation, with the final front."""
    return draw_progression(progression_info(as_run(run), x, y), ax)


def hypervolume_figure(run: RunLike, ax: Axes | None = None, x: str = "evaluations") -> Figure:
    """The hypervolume of a run after each evaluation, over the run's fixed reference point, against
    ``evaluations`` or ``item_forwards``."""
    return draw_hypervolume(hypervolume_info(as_run(run), x), ax)


def comparison_figure(
    runs: Sequence[RunLike],
    labels: Sequence[str] | None = None,
    x: str | None = None,
    y: str | None = None,
    include_dominated: bool = False,
) -> Figure:
    """Several runs (e.g. NSGA-II, random, TPE) in one figure: fronts and hypervolume curves.

    ``labels`` default to the strategies when they differ, else the run folders' names.
    """
    return draw_comparison(comparison_info([as_run(r) for r in runs], labels, x, y, include_dominated))


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` (or the given formats); return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with mpl.rc_context(STYLE):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path, format=fmt)
            paths.append(path)
    return paths


def plot_run(run_dir: RunLike, out: str | Path | None = None) -> list[Path]:
    """Write a run's figures into ``out`` (default ``RUN_DIR/plots``): ``pareto`` (one more,
    ``pareto_<cost>``, per further cost objective), ``progression``, ``hypervolume`` and, when the
    run recorded its item forwards, ``hypervolume_items``, each as PNG and SVG. Returns the paths."""
    run = as_run(run_dir)
    out = Path(out) if out is not None else run.beside("plots")
    x, y = default_axes(run)
    paths = save_figure(pareto_figure(run, x, y), out / "pareto")
    for cost in (s.name for s in run.specs if s.direction == "min" and s.name not in (x, y)):
        paths += save_figure(pareto_figure(run, cost, y), out / f"pareto_{cost}")
    paths += save_figure(progression_figure(run, x, y), out / "progression")
    paths += save_figure(hypervolume_figure(run), out / "hypervolume")
    if run.item_forwards:
        paths += save_figure(hypervolume_figure(run, x="item_forwards"), out / "hypervolume_items")
    return paths
