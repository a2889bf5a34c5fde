"""Looking at spaces and finished runs from settings: ``lorasearch space show/import``, ``plot`` and
``report``, as data the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..cost import ParameterCounts, parameter_counts
from ..formats import import_space
from ..io import refuse_existing
from ..network.supernet import SuperNetwork
from ..report.document import summary_table, write_report
from ..report.figures import comparison_figure, plot_run, save_figure
from ..errors import LoraSearchError
from ..results.pick import pick_config, pick_summary
from ..results.run import SearchResult
from ..space import Config, SearchSpace, config_summary
from .settings import NetworkSettings, build_network


@dataclass
class ReferenceConfig:
    """One of a space's reference configs (max, heuristic, min), with its parameters when a model is known."""

    label: str
    config: Config
    summary: str
    params: ParameterCounts | None
    skipped_blocks: list[str] | None = None
    """The decoder blocks the config skips (None without a network or without depth genes)."""


def load_space(file: str | Path, network: NetworkSettings | None = None,
               num_layers: int | None = None) -> tuple[SearchSpace, SuperNetwork | None]:
    """A space file, checked against the model of ``network`` when it names one (else expanded over
    ``num_layers`` when given); returns the space and the network built for it (or None)."""
    space = SearchSpace.load(file)
    if network is not None and network.model is not None:
        net = build_network(network, space=space, with_tokenizer=False)
        return net.space, net
    if num_layers is not None:
        space = space.with_num_layers(num_layers)
    return space, None


def reference_configs(space: SearchSpace, net: SuperNetwork | None = None) -> list[ReferenceConfig]:
    """The max, heuristic and min configs, with parameter counts when ``net`` is given."""
    configs = (("max", space.max()), ("heuristic", space.heuristic()), ("min", space.min()))
    return [ReferenceConfig(label, config, config_summary(config), parameter_counts(net, config) if net else None,
                            net.skipped_blocks(config) if net is not None and net.blocks else None)
            for label, config in configs]


def import_space_file(file: str | Path, out: str | Path | None = None, *, name: str | None = None,
                      alpha: float | None = None) -> SearchSpace:
    """Convert a reference space file (SQFT or NNCF JSON); write it to ``out`` when given (never over a file)."""
    space = import_space(file, name=name, alpha=alpha)
    if out is not None:
        refuse_existing(out)
        space.save(out)
    return space


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> list[Path]:
    """One run's figures (default ``RUN_DIR/plots``), or a comparison of several (default ``comparison/``)."""
    if len(run_dirs) == 1:
        return plot_run(run_dirs[0], out)
    return save_figure(comparison_figure([str(d) for d in run_dirs]), Path(out or "comparison") / "comparison")


def report_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a run's markdown and HTML report; return the markdown's path."""
    return write_report(run_dir, out)


def front_summary(result: SearchResult) -> pd.DataFrame:
    """The front as the search summary prints it."""
    return summary_table(result)


def knee_summary(result: SearchResult) -> str | None:
    """What ``export --pick knee`` would take from the run, in one line (None when there is no knee)."""
    try:
        row, _ = pick_config(result.table, "knee", specs=result.specs)
    except LoraSearchError:
        return None
    return pick_summary(row, "knee", result.specs)
