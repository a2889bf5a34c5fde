"""``lorasearch recover``: fine-tune the adapter of one subnet picked from a search, then export it.

The subnet comes from a search's run directory and a pick (``knee``, ``row N``,
``max-accuracy-under-macs X``, ...), the network from the run's recorded settings (the adapter's
channel permutation and block order included), and the training data from the training run that
wrote the adapter (``ADAPTER/../train_run.yaml``: the same task files, records per task, held-out
share and seed, so recovery trains on the records the super-adapter trained on and never on the
validation items the search scored), unless ``tasks`` says otherwise. Before and after training the
subnet is scored on those validation items with the search's own evaluator (two evaluations; skip
them with ``evaluate=False``): the pick was chosen on these items, so its score before is on the
lucky side and the change is, if anything, understated. Training is an `NLSTrainer`
run on that one config (`lorasearch.train.recovery`); its folder resumes like ``train``'s. ``out``
then holds::

    adapter/           the super-adapter with the subnet's part recovered (the rest unchanged)
    subnet.json        the recovered subnet (load it with --config in eval, cost, ...)
    export-FORMAT/     the recovered subnet exported (pruned for Mode B, peft for Mode A)
    recovery.json      the pick, the steps, the subnet's training loss at the start and the end, and
                       its score on the search's validation items before and after (``validation``)
    train_run.yaml, train_log.jsonl, checkpoint/   as for ``lorasearch train``
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..data import train_val_split
from ..errors import LoraSearchError
from ..evaluate.evaluators import EvalResult
from ..export.exporters import EXPORTERS, FORMATS, SUBNET_FILE, subnet_document
from ..fingerprints import model_fingerprint, records_fingerprint
from ..io import FolderLock, atomic_write_json, read_document, read_jsonl
from ..models.loading import resolved_model_spec
from ..network.supernet import SuperNetwork
from ..results.run import RUN_FILE
from ..space import Config, config_summary, space_fingerprint
from ..train.recovery import FrozenTeacher, SubnetSampler, check_recovery_args
from ..train.targets import encode_records
from ..train.trainer import NLSTrainer, TrainArgs
from .exporting import picked_subnet
from .searching import run_from_file
from .settings import RECORDED_IN, TaskSettings, build_evaluator, located_path, recorded_path, recorded_settings
from .training import load_training_records

RECOVERY_FILE = "recovery.json"
TRAIN_RUN_FILE = "train_run.yaml"
DATA_DEFAULTS = {"tasks": [], "max_records": None, "val_size": 0.1, "target": "text", "max_length": 256, "seed": 0}


@dataclass
class RecoveryData:
    """Where recovery's training records come from (the adapter's training run, or given)."""

    tasks: list[str]
    max_records: int | None
    val_size: float
    target: str
    max_length: int
    seed: int
    """The training run's seed: it drew the records per task and the held-out split."""
    source: str


@dataclass
class RecoveryResult:
    """What a finished recovery wrote."""

    out_dir: Path
    adapter_dir: Path
    export_dir: Path | None
    config: Config
    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    before: EvalResult | None = None
    """The subnet's score on the search's validation items before recovery (None: not scored, or resumed)."""
    after: EvalResult | None = None
    """... and after it (None: not scored)."""

    def validation_line(self) -> str | None:
        """The before and after scores in one line (None when the subnet was not scored)."""
        return describe_change(validation_change(self.before, self.after))


class Recovery:
    """A claimed recovery folder with its trainer; `run` trains and exports."""

    def __init__(self, trainer: NLSTrainer, config: Config, provenance: dict[str, Any], fmt: str | None,
                 row: pd.Series | None, validation: TaskSettings | None = None) -> None:
        self.trainer, self.config, self.provenance, self.row = trainer, config, provenance, row
        self.validation = validation
        self.fmt = fmt if fmt is not None else ("pruned" if trainer.net.space.mode == "B" else "peft")
        if self.fmt not in FORMATS:
            raise LoraSearchError(f"--format {self.fmt!r}: unknown; fix: use one of {', '.join(FORMATS)}")

    @property
    def net(self) -> SuperNetwork:
        return self.trainer.net

    def run(self, progress: bool = True) -> RecoveryResult:
        """Score the subnet, train its adapter, score it again, then write ``subnet.json``, the export and
        ``recovery.json``."""
        out = self.trainer.out_dir
        before = self.score() if self.validation is not None and self.trainer.step == 0 else None
        trained = self.trainer.train(progress=progress)
        after = self.score() if self.validation is not None else None
        losses = [r["loss"] for r in read_jsonl(out / "train_log.jsonl", repair=True)]
        provenance = {**self.provenance, "recovered": {"steps": trained.steps, "adapter": str(trained.adapter_dir),
                                                       "distill": self.trainer.args.distill}}
        atomic_write_json(out / SUBNET_FILE, subnet_document(self.net.space, self.config, net=self.net,
                                                             provenance=provenance))
        export_dir = None
        if self.fmt != "config":
            export_dir = out / f"export-{self.fmt}"
            if not export_dir.exists():
                EXPORTERS[self.fmt](self.net, self.config, export_dir, provenance)
        result = RecoveryResult(out, trained.adapter_dir, export_dir, self.config, trained.steps,
                                losses[0] if losses else float("nan"), trained.final_loss, trained.seconds,
                                before, after)
        atomic_write_json(out / RECOVERY_FILE, {
            **{k: v for k, v in provenance.items() if k != "recovered"}, "config": self.config,
            "summary": config_summary(self.config), "steps": trained.steps, "distill": self.trainer.args.distill,
            "distill_weight": self.trainer.args.distill_weight, "first_loss": result.first_loss,
            "final_loss": result.final_loss, "seconds": trained.seconds,
            "validation": validation_change(before, after),
            "export": str(export_dir) if export_dir else None})
        return result

    def score(self) -> EvalResult:
        """The subnet's score on the search's validation items, with the network as it is now (a fresh
        evaluator each time: an evaluator caches its results per config)."""
        return build_evaluator(self.net, self.validation)(self.config)


def validation_change(before: EvalResult | None, after: EvalResult | None) -> dict[str, Any] | None:
    """Before and after scores, and the paired difference with its standard error over the items."""
    if after is None:
        return None
    change: dict[str, Any] = {"metric": after.metric, "items": after.n, "after": after.score,
                              "before": before.score if before else None, "difference": None, "stderr": None}
    if before is not None:
        change["difference"] = after.score - before.score
        if len(before.item_scores) == len(after.item_scores) > 1:
            d = np.asarray(after.item_scores, dtype=float) - np.asarray(before.item_scores, dtype=float)
            change["stderr"] = float(d.std(ddof=1) / np.sqrt(d.size))
    return change


def describe_change(change: dict[str, Any] | None) -> str | None:
    """One line for the user: ``validation accuracy 0.433 -> 0.458 (+0.025 ± 0.018 paired, 120 items)``."""
    if change is None:
        return None
    if change["before"] is None:
        return f"validation {change['metric']} after recovery {change['after']:.3f} ({change['items']} items)"
    se = f" ± {change['stderr']:.3f} paired" if change["stderr"] is not None else ""
    return (f"validation {change['metric']} {change['before']:.3f} -> {change['after']:.3f} "
            f"({change['difference']:+.3f}{se}, {change['items']} items the search picked on)")


def recovery_data(adapter: str | Path | None, tasks: Sequence[str] = (), **given: Any) -> RecoveryData:
    """The training data of recovery: what the adapter's training run recorded, overridden by ``tasks``
    and the non-None values of ``given`` (``max_records``, ``val_size``, ``target``, ``max_length``, ``seed``)."""
    recorded: dict[str, Any] = {}
    source = "given"
    run_file = Path(adapter).parent / TRAIN_RUN_FILE if adapter else None
    if run_file is not None and run_file.is_file():
        document = read_document(run_file, what="training run file") or {}
        recorded = {k: document.get(k) for k in ("tasks", "max_records", "val_size", "target", "max_length")}
        if isinstance(recorded["tasks"], list):  # recorded relative to the training run's folder
            recorded["tasks"] = [located_path(t, run_file.parent, document.get(RECORDED_IN)) for t in recorded["tasks"]]
        recorded["seed"] = (document.get("args") or {}).get("seed", 0)
        source = str(run_file)
    elif not tasks:
        raise LoraSearchError(f"recover: the adapter {adapter} has no {TRAIN_RUN_FILE} beside it to take the training "
                              "records from; fix: pass --task (the training data, not the search's validation items)")
    values = {**DATA_DEFAULTS, **{k: v for k, v in recorded.items() if v is not None or k == "max_records"}}
    values.update({k: v for k, v in given.items() if v is not None})
    if tasks:
        values["tasks"] = [str(t) for t in tasks]
    return RecoveryData(list(values["tasks"]), values["max_records"], float(values["val_size"]), str(values["target"]),
                        int(values["max_length"]), int(values["seed"]), source)


def prepare_recovery(
    run_dir: str | Path,
    pick: str,
    args: TrainArgs,
    out: str | Path,
    *,
    tasks: Sequence[str] = (),
    max_records: int | None = None,
    val_size: float | None = None,
    target: str | None = None,
    max_length: int | None = None,
    fmt: str | None = None,
    model: str | None = None,
    adapter: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    evaluate: bool = True,
    log: Callable[[str], None] = print,
) -> Recovery:
    """Pick the subnet, load the network and the training records, and claim ``out``; ``run()`` does the rest.

    ``args`` are the training settings (steps, lr, batch size, ``distill``, ...); the sampler is the
    picked subnet, whatever ``args.sampler`` says. ``fmt`` is the export's format (default: pruned for
    Mode B spaces, peft for Mode A; ``config`` writes only subnet.json). ``evaluate`` scores the
    subnet before and after on the search's validation items with the search's evaluator.
    """
    args.check()
    check_recovery_args(args)
    if fmt is not None and fmt not in FORMATS:
        raise LoraSearchError(f"--format {fmt!r}: unknown; fix: use one of {', '.join(FORMATS)}")
    with FolderLock(out):  # the trainer takes the lock over in prepare()
        picked = picked_subnet(run_dir, pick, out, model=model, adapter=str(adapter) if adapter else None)
        net, config = picked.net, picked.config
        data = recovery_data(picked.settings.adapter, tasks, max_records=max_records, val_size=val_size,
                             target=target, max_length=max_length)
        records = load_training_records(data.tasks, data.max_records, data.seed)
        train, _ = train_val_split(records, data.val_size if data.val_size < 1 else int(data.val_size), data.seed) \
            if data.val_size else (records, [])
        examples = encode_records(net.tokenizer, train, data.target, data.max_length)
        run_info = {"network": recorded_settings(picked.settings, out), "space_fingerprint": space_fingerprint(net.space),
                    "recovery": {"run": recorded_path(str(run_dir), out), "pick": pick, "config": config,
                                 "data": dataclasses.asdict(data)}}
        trainer = NLSTrainer(net, examples, dataclasses.replace(args, reorder=False), out, run_info=run_info,
                             sampler=SubnetSampler(config), teacher=FrozenTeacher(net) if args.distill else None)
        fingerprints = {"model": model_fingerprint(resolved_model_spec(picked.settings.model), picked.settings.gguf_file),
                        "task": records_fingerprint(records), "adapter": net.fingerprint()}
        trainer.prepare(resume=resume, overwrite=overwrite, force=force, fingerprints=fingerprints)
    log(f"recovering {config_summary(config)} ({pick}) for {args.steps} steps on {len(examples)} training examples "
        f"from {data.source}" + (" with distillation from the max subnet" if args.distill else ""))
    validation = run_from_file(Path(run_dir) / RUN_FILE).task if evaluate else None
    return Recovery(trainer, config, picked.provenance, fmt, picked.row, validation)


def read_recovery(out: str | Path) -> dict[str, Any]:
    """A finished recovery's ``recovery.json``."""
    return json.loads((Path(out) / RECOVERY_FILE).read_text())
