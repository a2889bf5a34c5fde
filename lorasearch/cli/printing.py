"""What the commands print: spaces, configs and search summaries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from ..runs import front_summary, knee_summary, reference_configs
from .app import console

if TYPE_CHECKING:
    from ..network.supernet import SuperNetwork
    from ..results.run import SearchResult
    from ..runs import BudgetPick
    from ..space import Group, SearchSpace


def print_space(space: SearchSpace, file: Path) -> None:
    """A space's name, adapter, groups, choices and size."""
    console.print(f"[bold]{escape(space.name)}[/bold] (Mode {space.mode}) from {escape(str(file))}")
    if space.description:
        console.print(escape(space.description))
    a = space.adapter
    if a.rank:
        console.print(f"adapter: rank {a.rank}, alpha {a.effective_alpha:g} (scale {a.effective_alpha / a.rank:g} for every sub-rank)")
    if space.per_layer:
        layers = f" x {space.num_layers} layers" if space.num_layers else ""
        console.print(f"per layer: {space.per_layer}{layers}")
    table = Table(show_edge=False)
    for col in ("group", "kind", "modules", "choices", "share", "genes"):
        table.add_column(col)
    expanded = space.per_layer is None or space.num_layers is not None
    genes: dict[str, int] = {}
    if expanded:
        for g in space.genes:
            genes[g.group] = genes.get(g.group, 0) + 1
    for g in space.groups:
        table.add_row(g.name, g.kind, _modules_text(g), " ".join(map(str, g.choices)), g.share, str(genes.get(g.name, "?")))
    console.print(table)
    if expanded:
        size = space.size()
        console.print(f"size: {size:.3e} configs over {len(space.genes)} genes" if size > 10**6 else f"size: {size} configs")


def _modules_text(group: Group) -> str:
    if group.kind == "rank":
        return ", ".join(group.modules)
    if group.kind == "heads":
        return f"{group.attention}.{{q,k,v,o}}_proj"
    if group.kind == "depth":
        blocks = f"blocks {', '.join(map(str, group.layers))}" if group.layers is not None else "every block"
        return f"{blocks} ({'kept or not, per block' if group.share == 'layer' else 'least important dropped first'})"
    if group.channels:
        return f"{group.channels} channels"
    return ", ".join([f"{m} (out)" for m in group.channels_out] + [f"{m} (in)" for m in group.channels_in])


def print_configs(space: SearchSpace, net: SuperNetwork | None) -> None:
    """The max, heuristic and min configs (with parameter counts when a network is loaded)."""
    table = Table(show_edge=False)
    table.add_column("config")
    table.add_column("choices per group")
    if net is not None:
        table.add_column("trainable params", justify="right")
        table.add_column("total params", justify="right")
    refs = reference_configs(space, net)
    depth = any(ref.skipped_blocks is not None for ref in refs)
    if depth:
        table.add_column("blocks skipped")
    for ref in refs:
        row = [ref.label, ref.summary]
        if ref.params is not None:
            row += [f"{ref.params.trainable:,}", f"{ref.params.total:,}"]
        if depth:
            row.append(", ".join(b.rpartition(".")[2] for b in ref.skipped_blocks or []) or "none")
        table.add_row(*row)
    console.print(table)


def print_search_summary(result: SearchResult) -> None:
    """The front, the reference configs, the noise notes and where the run lies."""
    console.print(f"\n[bold]Pareto front[/bold] ({len(result.pareto)} of {len(result.table)} evaluations)")
    print(front_summary(result).to_string(index=False))
    for label in ("max", "heuristic", "min"):
        row = result.reference(label)
        if row is not None:
            values = ", ".join(f"{s.name} {row[s.name]:.4g}" for s in result.specs)
            console.print(f"{label:>9}: {values}")
    for line in result.noise_notes():
        console.print(f"noise: {line}")
    steps = result.distinct_steps() if "accuracy" in result.pareto else []
    if len(result.pareto) > 1 and steps:
        console.print(f"distinct: {len(steps)} of {len(result.pareto)} front points stand apart (each more than "
                      f"2 standard errors above the last): evaluations {', '.join(map(str, steps))}", highlight=False)
    warning = result.noise_warning()
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    knee = knee_summary(result)
    if knee:
        console.print(knee, highlight=False)
    if result.out_dir is not None:
        console.print(f"run directory: {result.out_dir}")


def pick_lines(pick: BudgetPick) -> list[str]:
    """What `lorasearch pick` prints: the surrogate's trust, its pick (predicted) and the run's best (measured)."""
    def cost_text(value: float) -> str:
        return f"{value / 1e9:.4g} G{pick.cost}" if pick.cost.startswith("macs") else f"{pick.cost} {value:.6g}"

    def measured_text(entry: dict) -> str:
        if "measured" not in entry:
            return "not evaluated in the run"
        se = f" ± {entry['stderr']:.3f}" if entry.get("stderr") is not None else ""
        return f"{pick.objective} {entry['measured']:.4f}{se} measured (evaluation {entry['eval_id']})"

    rho = f"{pick.rho:.2f}" if pick.rho == pick.rho else "n/a"
    lines = [f"surrogate: held-out rank correlation {rho} over {pick.checks} configs"
             + ("" if pick.trusted else " (below its bar: treat the prediction with care)")]
    if pick.additive_cost_error > 1e-9:
        lines.append(f"note: {pick.cost} is the additive estimate, {pick.additive_cost_error:.2%} off on the min config")
    budget = cost_text(pick.at_most)
    if pick.predicted is None:
        lines.append(f"predicted: no config costs {budget} or less")
    else:
        p = pick.predicted
        lines.append(f"predicted best at <= {budget}: {pick.objective} {p['predicted']:.4f} predicted, "
                     f"{cost_text(p['cost'])}; {measured_text(p)}")
    if pick.measured is None:
        lines.append(f"measured: no evaluation of the run costs {budget} or less")
    else:
        m = pick.measured
        lines.append(f"measured best at <= {budget}: {measured_text(m)}, {cost_text(m['cost'])}; "
                     f"{m['predicted']:.4f} predicted")
    return lines
