"""A search's report: ``report.md`` (and ``report.html``) beside the run's files.

The report holds the run's settings, the Pareto front as a table (each config summarised per
group, costs in readable units, accuracy with its standard error, and every number also
relative to the max config and to the heuristic config), the noise notes, the hypervolume over
its fixed reference point, and the figures of `lorasearch.report.figures`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..errors import LoraSearchError
from ..io import atomic_write_text
from ..results.pick import pick_config, pick_summary
from ..results.run import SearchResult, as_run
from ..space import config_summary
from .figures import RunLike, default_axes, hypervolume_info, objective_axis, plot_run

FIGURES = {  # file stem -> caption
    "pareto": "Pareto front",
    "progression": "Search progression",
    "hypervolume": "Hypervolume",
}
RELATIVE_TO = ("max", "heuristic")


def write_report(run_dir: RunLike, out: str | Path | None = None, *, plots: bool = True, html: bool = True) -> Path:
    """Write a markdown report of a run (and ``report.html`` beside it); return the markdown's path.

    Args:
        run_dir: a run directory (or a `SearchResult` / `SearchResult` that has one, or pass ``out``).
        out: the report file (default ``RUN_DIR/report.md``).
        plots: draw the figures first (into ``RUN_DIR/plots``, or ``plots/`` beside ``out``);
            with False, existing figures are linked.
        html: also write the report as HTML (same name, ``.html``).
    """
    run = as_run(run_dir)
    out = Path(out) if out is not None else run.beside("report.md")
    plot_dir = (run.path or out.parent) / "plots"
    if plots:
        plot_run(run, plot_dir)
    text = report_markdown(run, figures=_figure_links(plot_dir, out.parent))
    atomic_write_text(out, text)
    if html:
        _write_html(text, out.with_suffix(".html"), run.name)
    return out


def report_markdown(run: SearchResult, figures: Mapping[str, str] | None = None) -> str:
    """The report as markdown; ``figures`` maps captions to image links."""
    sections = [
        f"# Search report: {run.name}",
        _summary(run),
        "## Pareto front",
        _front_intro(run),
        markdown_table(front_table(run)),
        _knee_line(run),
        "## Reference configs",
        markdown_table(front_table(run, run.table[run.table["source"].isin(RELATIVE_TO + ("min",))])),
        "## Noise",
        _noise_section(run),
        "## Hypervolume",
        _hypervolume_section(run),
        "## Settings",
        markdown_table(settings_table(run)),
    ]
    if figures:
        sections += ["## Figures", *(f"![{caption}]({link})" for caption, link in figures.items())]
    return "\n\n".join(sections) + "\n"


# -------------------------------------------------------------------------------- tables
def front_table(run: SearchResult, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """The front (or ``rows``) as display strings, cheapest first: eval id, source, config
    summary, then per objective (and ``params`` when measured) its value and its change in
    percent against the max and the heuristic config."""
    rows = run.pareto if rows is None else rows
    x, _ = default_axes(run)
    rows = rows.sort_values([x, "eval_id"])
    references = {source: run.reference(source) for source in RELATIVE_TO}
    columns: dict[str, list[str]] = {
        "eval": [str(int(v)) for v in rows["eval_id"]],
        "source": list(rows["source"].astype(str)),
        "config": [config_summary(c) for c in rows["config"]],
    }
    for name in report_columns(run):
        axis = objective_axis(run, name)
        columns[axis.label] = [_value(row, name, axis.scale) for _, row in rows.iterrows()]
        for source, ref in references.items():
            base = ref[name] if ref is not None else None
            columns[f"{name} vs {source}"] = [_relative(value, base) for value in rows[name]]
    return pd.DataFrame(columns)


def summary_table(run: SearchResult) -> pd.DataFrame:
    """The front as the CLI prints it: eval id, objectives (± standard error), source, config summary."""
    front = run.pareto.sort_values(run.specs[-1].name)
    rows = []
    for _, row in front.iterrows():
        entry: dict[str, Any] = {"eval": int(row["eval_id"])}
        for spec in run.specs:
            value = row[spec.name]
            if spec.unit.startswith("MACs"):
                entry[f"G{spec.name}"] = f"{value / 1e9:.4f}"
            elif f"{spec.name}_stderr" in row and pd.notna(row[f"{spec.name}_stderr"]):
                entry[spec.name] = f"{value:.4f} ± {row[f'{spec.name}_stderr']:.4f}"
            else:
                entry[spec.name] = f"{value:.4g}"
        entry["source"] = row["source"]
        entry["config"] = config_summary(row["config"])
        rows.append(entry)
    return pd.DataFrame(rows)


def report_columns(run: SearchResult) -> list[str]:
    """The measured columns a report shows: costs (min objectives), params if measured, scores."""
    costs = [s.name for s in run.specs if s.direction == "min"]
    scores = [s.name for s in run.specs if s.direction == "max"]
    extra = ["params"] if "params" in run.table and "params" not in costs + scores else []
    return costs + extra + scores


def _value(row: pd.Series, name: str, scale: float) -> str:
    value = float(row[name]) / scale
    text = _significant(value)
    stderr = row.get(f"{name}_stderr")
    if stderr is not None and not _missing(stderr):
        text += f" ± {_significant(float(stderr) / scale)}"
    return text


def _significant(value: float) -> str:
    if _missing(value):
        return "–"
    if value != 0 and abs(value) < 1:
        return f"{value:.3f}" if abs(value) >= 0.001 else f"{value:.2e}"
    return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def _relative(value: Any, reference: Any) -> str:
    """``value`` against ``reference`` in percent, signed (a true minus sign)."""
    if reference is None or _missing(value) or _missing(reference) or float(reference) == 0:
        return "–"
    change = (float(value) / float(reference) - 1) * 100
    if abs(change) < 0.05:
        return "0.0%"
    return f"{change:+.1f}%".replace("-", "−")


def _missing(value: Any) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def settings_table(run: SearchResult) -> pd.DataFrame:
    """The run's settings (run.yaml's ``run`` and ``search`` sections) as setting / value rows."""
    flat = dict(_flatten(run.info, "run")) | dict(_flatten(run.settings, "search"))
    return pd.DataFrame({"setting": list(flat), "value": [_setting(v) for v in flat.values()]})


def _flatten(mapping: Mapping[str, Any], prefix: str) -> Iterable[tuple[str, Any]]:
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, name)
        else:
            yield name, value


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "(none)"
    if isinstance(value, Mapping):
        return "(none)"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table; numbers and percent columns right-aligned."""
    if frame.empty:
        return "(none)"
    header = "| " + " | ".join(_cell(c) for c in frame.columns) + " |"
    align = "|" + "|".join("---:" if _numeric(frame[c]) else "---" for c in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, align, *body])


def _numeric(column: pd.Series) -> bool:
    return all(str(v)[:1] in "0123456789+−-–" for v in column)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------ sections
def _summary(run: SearchResult) -> str:
    table = run.table
    n_gen = table["generation"].nunique() if "generation" in table else 0
    infeasible = len(table) - len(run.feasible)
    hv = hypervolume_info(run)
    stopped = int(table["partial"].fillna(False).astype(bool).sum()) if "partial" in table else 0
    parts = [
        f"**{run.strategy or 'search'}** over objectives {', '.join(f'{s.name} ({s.direction})' for s in run.specs)}",
        f"{len(table)} evaluations in {n_gen} generations" + (f", {infeasible} infeasible" if infeasible else "")
        + (f", {stopped} stopped early by racing" if stopped else ""),
        f"front of {len(run.pareto)} configs",
        f"hypervolume {hv.hypervolume[-1]:.4f}",
    ]
    if run.item_forwards:
        parts.append(f"{run.item_forwards:,} validation items scored")
    if "seconds" in table:
        parts.append(f"{float(table['seconds'].sum()):,.0f} s of evaluation")
    return " · ".join(parts) + "."


def _front_intro(run: SearchResult) -> str:
    warning = run.noise_warning() if "accuracy" in run.table else None
    if warning:
        return f"**Within noise:** {warning}. The table is shown for what it is; see the Noise section."
    missing = [s for s in RELATIVE_TO if run.reference(s) is None]
    note = (f" No evaluation is labelled {' or '.join(missing)} (a reference config that equals another one is "
            "evaluated once, under the first label), so those columns are empty.") if missing else ""
    return (
        "The non-dominated feasible evaluations, cheapest first. *vs max* and *vs heuristic* give each "
        "value's change in percent against the max config and the heuristic (midpoint) config." + note
    )


def _knee_line(run: SearchResult) -> str:
    """The knee, what ``export --pick knee`` takes (circled on the Pareto figure)."""
    try:
        row, _ = pick_config(run.table, "knee", specs=run.specs)
    except LoraSearchError:
        return "No knee: the run has fewer than two objectives or no feasible evaluation."
    return ("**Knee** (the front point, other than its ends, that keeps the largest share of the front's score range "
            "for the smallest share of its cost range; `lorasearch export RUN_DIR --pick knee` takes it, the Pareto "
            f"figure circles it): {pick_summary(row, 'knee', run.specs).removeprefix('--pick knee: ')}.")


def _noise_section(run: SearchResult) -> str:
    if "accuracy_stderr" not in run.table:
        return "No accuracy standard errors were recorded, so differences along the front are not checked against noise."
    warning = run.noise_warning()
    head = f"**Warning:** {warning}.\n\n" if warning else ""
    paired = "paired over the same items" if run.items_of("accuracy") else "unpaired"
    notes = run.noise_notes()
    if not notes:
        return head + f"Every pair of neighbouring front points differs in accuracy by more than 2 standard errors ({paired})."
    pairs = max(len(run.pareto) - 1, 1)
    steps = run.distinct_steps()
    resolved = (f"\n\nWhat the items do resolve: {len(steps)} of the {len(run.pareto)} front points stand apart, each "
                f"more than 2 standard errors above the last, from the least accurate up: evaluations "
                f"{', '.join(map(str, steps))}.") if len(steps) > 1 else ""
    return head + f"{len(notes)} of {pairs} neighbouring pairs on the front are within noise of each other ({paired}):\n\n" + "\n".join(
        f"- {note}" for note in notes
    ) + resolved


def _hypervolume_section(run: SearchResult) -> str:
    info = hypervolume_info(run)
    final = info.hypervolume[-1]
    lines = [f"Final hypervolume **{final:.4f}** after {info.evaluations[-1]} evaluations (normalised objectives; "
             f"{info.reference_point})."]
    if info.references_hypervolume:
        gain = _relative(final, info.references_hypervolume)
        lines.append(f"The max, heuristic and min configs alone reach {info.references_hypervolume:.4f}; "
                     f"the search adds {gain}.")
    if run.path is not None and (run.path / "hypervolume.csv").is_file():
        lines.append("Per generation: `hypervolume.csv`.")
    return " ".join(lines)


def _figure_links(plot_dir: Path, base: Path) -> dict[str, str]:
    links = {}
    for png in sorted(plot_dir.glob("*.png"), key=lambda p: (list(FIGURES).index(p.stem) if p.stem in FIGURES else 1, p.stem)):
        caption = FIGURES.get(png.stem, f"Pareto front over {png.stem.removeprefix('pareto_')}")
        links[caption] = Path(os.path.relpath(png, base)).as_posix()
    return links


def _write_html(markdown: str, path: Path, title: str) -> None:
    try:
        from markdown_it import MarkdownIt  # comes with rich
    except ImportError:
        return
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    atomic_write_text(path, HTML_PAGE.format(title=title, body=body))


HTML_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Search report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; }}
th {{ background: #f4f4f4; }}
img {{ max-width: 100%; display: block; margin: 1rem 0; }}
</style></head><body>
{body}
</body></html>
"""
