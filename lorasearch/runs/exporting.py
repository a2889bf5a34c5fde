"""``lorasearch export``: pick a subnet from a search's run directory and export it.

The run is read by the one reader (`lorasearch.results.load_run`), the subnet picked by
`lorasearch.results.pick.pick_config`, and the network rebuilt by the one builder
(`lorasearch.runs.settings.build_network`) from the settings the run recorded, so every recorded
setting (dtype, adapter mode, ...) reaches the export.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from ..errors import ExportError
from ..export.exporters import EXPORTERS, FORMATS, require_mode_b
from ..fingerprints import changed_fingerprint
from ..io import refuse_existing
from ..network.supernet import SPACE_FILE_NAME, SuperNetwork
from ..results.pick import config_of, pick_config, pick_summary, registered_specs, row_objectives
from ..results.run import RUN_FILE, SearchResult, load_run
from ..space import Config, SearchSpace
from .settings import RECORDED_IN, NetworkSettings, build_network, located_settings, recorded_path, settings_from_dict

_LAYER_KEY = re.compile(r"^[^.]+\.(\d+)(?:\.|$)")


def load_results(run_dir: str | Path) -> SearchResult:
    """A search's results for exporting: ``results.csv`` with ``run.yaml`` when there is one (else the
    registered objectives found in the table)."""
    result = load_run(run_dir, need_run_file=False, error=ExportError)
    return result if result.specs else dataclasses.replace(result, specs=registered_specs(result.table))


def export_run(
    run_dir: str | Path,
    pick: str,
    fmt: str,
    out: str | Path | None = None,
    *,
    net: SuperNetwork | None = None,
    model: str | None = None,
    adapter: str | Path | None = None,
    space: SearchSpace | str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Pick a subnet from a search's run directory and export it; the whole of ``lorasearch export``.

    ``model``, ``adapter``, ``space``, ``device`` and ``dtype`` override the run's ``run.yaml`` entries
    (a run recorded on ``cuda:3`` exports on another machine with ``device="cpu"``; a device given
    here also drops the run's ``device_map``); ``net`` skips loading altogether. ``out`` defaults to
    ``RUN_DIR/exports/FORMAT-evalN``. ``force`` accepts a ``model`` other than the base the adapter was
    trained on (see `build_network`). ``log`` gets one line saying what was picked
    (`lorasearch.results.pick.pick_summary`). Merged and pruned models are built layer by layer in CPU
    memory (`lorasearch.export.exporters.merged_copy`), never as a second copy on the device.
    """
    if fmt not in FORMATS:
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ExportError(f"--format {fmt!r}: unknown; {hint}fix: use one of {', '.join(FORMATS)}")
    if out is not None:
        refuse_existing(out, ExportError)  # before loading a model
    run_dir = Path(run_dir)
    result = load_results(run_dir)
    settings = recorded_network(result, run_dir, model=model, adapter=adapter, space=space, device=device, dtype=dtype)
    space = net.space if net is not None else _space_of(settings, space, result, run_dir)
    if space is None:
        raise ExportError(f"{run_dir / RUN_FILE}: run.space is not recorded; fix: pass --space")
    if fmt == "pruned":
        require_mode_b(space)  # before loading the model
    if net is None and fmt != "config":
        if settings.model is None:
            raise ExportError(f"{run_dir / RUN_FILE}: run.model is not recorded; fix: pass --model")
        net = build_network(settings, space=space, any_base=force)
        if adapter is None:
            _refuse_a_changed_adapter(net, result, run_dir)
    target = net if net is not None else _expanded(space, result.table)
    row, config = pick_config(result.table, pick, target.space if net is not None else target, result.specs)
    if log is not None:
        log(pick_summary(row, pick, result.specs))
    out = Path(out) if out is not None else run_dir / "exports" / f"{fmt}-{_label(row, pick)}"
    provenance = export_provenance(out, run_dir, settings, space, row, pick, net)
    return EXPORTERS[fmt](target, config, out, provenance, objectives=row_objectives(row, result.specs))


@dataclass
class PickedSubnet:
    """A subnet picked from a search's run directory, with the network the run recorded."""

    net: SuperNetwork
    config: Config
    row: pd.Series | None
    settings: NetworkSettings
    provenance: dict[str, Any]


def picked_subnet(run_dir: str | Path, pick: str, out: str | Path, *, model: str | None = None,
                  adapter: str | Path | None = None) -> PickedSubnet:
    """Rebuild a search run's network (``model`` and ``adapter`` override ``run.yaml``'s) and pick one of its
    subnets, as `export_run` does; an adapter rewritten since the search is refused unless ``adapter`` is given.
    The provenance records its paths relative to ``out``, the folder the subnet's files go to."""
    run_dir = Path(run_dir)
    result = load_results(run_dir)
    settings = recorded_network(result, run_dir, model=model, adapter=adapter)
    space = _space_of(settings, None, result, run_dir)
    if space is None:
        raise ExportError(f"{run_dir / RUN_FILE}: run.space is not recorded; fix: pass the run of a lorasearch search")
    if settings.model is None:
        raise ExportError(f"{run_dir / RUN_FILE}: run.model is not recorded; fix: pass --model")
    net = build_network(settings, space=space)
    if adapter is None:
        _refuse_a_changed_adapter(net, result, run_dir)
    row, config = pick_config(result.table, pick, net.space, result.specs)
    return PickedSubnet(net, config, row, settings, export_provenance(Path(out), run_dir, settings, space, row, pick, net))


def _refuse_a_changed_adapter(net: SuperNetwork, result: SearchResult, run_dir: Path) -> None:
    """An adapter rewritten since the search would export configs it never scored."""
    changed = changed_fingerprint(result.fingerprints, {"adapter": net.fingerprint()})
    if changed:
        raise ExportError(f"{run_dir / RUN_FILE}: {changed[1]}, so its results do not describe this adapter; "
                          "fix: restore the adapter the search scored, or pass --adapter DIR to export from "
                          "another one on purpose")


def recorded_network(
    result: SearchResult,
    run_dir: Path,
    *,
    model: str | None = None,
    adapter: str | Path | None = None,
    space: SearchSpace | str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> NetworkSettings:
    """The network settings a run recorded (``run.network``; flat ``run.model`` etc. in hand-written
    files), with relative paths resolved against the run directory and the given overrides applied."""
    info = dict(result.info)
    recorded = dict(info.pop("network", None) or {})
    fields = {f.name for f in dataclasses.fields(NetworkSettings)}
    recorded.update({k: v for k, v in info.items() if k in fields and k not in recorded})
    overrides = {"model": model, "adapter": adapter, "space": space if not isinstance(space, SearchSpace) else None,
                 "device": device, "dtype": dtype}
    recorded.update({k: str(v) for k, v in overrides.items() if v is not None})
    if device is not None:
        recorded["device_map"] = None  # the model goes where it is told
    if isinstance(recorded.get("space"), Mapping):
        recorded.pop("space")  # a space stored inside run.yaml: read by _space_of
    given = {k for k, v in overrides.items() if v is not None}
    located = located_settings({k: v for k, v in recorded.items() if k not in given}, run_dir, info.get(RECORDED_IN))
    return settings_from_dict(NetworkSettings, {**recorded, **located}, f"{run_dir / RUN_FILE}: run.network")


def _space_of(settings: NetworkSettings, given: Any, result: SearchResult, run_dir: Path) -> SearchSpace | None:
    """The run's space: given, stored in run.yaml, the recorded file, or the adapter's own."""
    stored = (result.info.get("network") or {}).get("space", result.info.get("space"))
    if isinstance(given, SearchSpace):
        space = given
    elif isinstance(stored, Mapping) and given is None:
        space = SearchSpace.from_dict(stored, source=f"{run_dir / RUN_FILE}: run.space")
    elif settings.space:
        space = SearchSpace.load(settings.space)
    elif settings.adapter and (Path(settings.adapter) / SPACE_FILE_NAME).is_file():
        space = SearchSpace.load(Path(settings.adapter) / SPACE_FILE_NAME)
    else:
        return None
    return space


def _expanded(space: SearchSpace, table: pd.DataFrame) -> SearchSpace:
    """A per-layer space expanded over the layers the run's configs name (no model needed)."""
    if space.per_layer is None or space.num_layers is not None:
        return space
    layers = [int(m.group(1)) for key in config_of(table.iloc[0]) if (m := _LAYER_KEY.match(key))]
    return space.with_num_layers(max(layers) + 1) if layers else space


def export_provenance(out: Path, run_dir: Path, settings: NetworkSettings, space: SearchSpace, row: pd.Series | None,
                      pick: str, net: SuperNetwork | None) -> dict[str, Any]:
    """Where an export of a run comes from (``subnet.json``'s ``provenance``), its paths relative to ``out``."""
    return {
        "run": recorded_path(str(run_dir), out),
        "pick": pick,
        "eval_id": int(row["eval_id"]) if row is not None else None,
        "source": str(row["source"]) if row is not None and "source" in row.index else None,
        "model": recorded_path((net.model_spec if net is not None else None) or settings.model, out),
        "adapter": recorded_path(settings.adapter, out),
        "space": recorded_path(settings.space, out) if settings.space else space.name,
    }


def _label(row: pd.Series | None, pick: str) -> str:
    return f"eval{int(row['eval_id'])}" if row is not None else re.sub(r"[^A-Za-z0-9_.-]+", "-", pick)
