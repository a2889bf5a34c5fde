"""A training run from plain settings: task files -> split -> (importance reordering, block
importance) -> tokenised examples -> `NLSTrainer`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..compress.quant import GRID_ATTR
from ..data import Record, load_records, subset, synthetic_task, train_val_split
from ..errors import LoraSearchError, SpaceError
from ..fingerprints import model_fingerprint, records_fingerprint
from ..io import FolderLock, atomic_write_json, atomic_write_text, read_document
from ..models.loading import resolve_device, resolved_model_spec, training_dtype
from ..network.depth import BlockImportance
from ..network.permutation import ChannelPermutation
from ..network.supernet import SuperNetwork
from ..space import space_fingerprint
from ..train.block_importance import measure_block_importance, needs_block_order
from ..train.reorder import ReorderResult, network_unit_sets, reorder_network
from ..train.targets import encode_records
from ..train.trainer import NLSTrainer, TrainArgs
from .settings import NetworkSettings, build_network, kept_as_recorded, recorded_path, recorded_settings

VALIDATION_FILE = "validation.jsonl"
TRAIN_RUN_FILE = "train_run.yaml"
REORDER_FILE = "reorder.safetensors"  # the permutation this run applied before training (for --resume)
REORDER_REPORT = "reorder.json"
BLOCK_IMPORTANCE = "block_importance.json"  # the block order this run measured before training (for --resume)


def load_training_records(tasks: Sequence[str], max_records: int | None, seed: int,
                          synthetic_records: int = 400) -> list[Record]:
    """The records of every task file (a seeded subset of each), or ``synthetic_records`` of the synthetic task."""
    if not tasks:
        return synthetic_task(synthetic_records, seed=seed)
    records: list[Record] = []
    for task in tasks:
        records += subset(load_records(task), max_records, seed)
    return records


def prepare_training(
    network: NetworkSettings,
    tasks: Sequence[str],
    args: TrainArgs,
    out: str | Path,
    *,
    target: str = "text",
    max_length: int = 256,
    val_size: float = 0.1,
    max_records: int | None = None,
    synthetic_records: int = 400,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> NLSTrainer:
    """Build the super-network and data, claim ``out``, and return a trainer ready to ``train()``.

    Checks everything (space against model, data fields, output folder) before any training.
    The held-out records go to ``out/validation.jsonl`` for the search to score on. With
    ``args.reorder`` (default: on for Mode B spaces with dense adapters) the network's MLP channels and
    heads are sorted by importance on the training records first (`lorasearch.train.reorder`); a resumed
    run reapplies the permutation it saved instead of scoring again. A space that counts decoder
    blocks kept (depth) gets its block importance measured the same way, unless the starting adapter
    records one (`lorasearch.train.block_importance`). ``out`` is locked from before the
    model loads until the training ends; a resume whose model, records or starting adapter changed is
    refused unless ``force``, as is a starting adapter trained on another base model. ``--dtype auto``
    trains in bf16 on a GPU that supports it (`lorasearch.models.loading.training_dtype`); over an fp16
    base the loss is scaled (`lorasearch.train.trainer.loss_scaler`).
    """
    args.check()  # before the folder is made
    with FolderLock(out):  # the trainer takes the lock over in prepare()
        return _prepare(network, tasks, args, out, target, max_length, val_size, max_records, synthetic_records,
                        resume, overwrite, force, log)


def _prepare(network: NetworkSettings, tasks: Sequence[str], args: TrainArgs, out: str | Path, target: str,
             max_length: int, val_size: float, max_records: int | None, synthetic_records: int, resume: bool,
             overwrite: bool, force: bool, log: Callable[[str], None]) -> NLSTrainer:
    records = load_training_records(tasks, max_records, args.seed, synthetic_records)
    train, val = train_val_split(records, val_size if val_size < 1 else int(val_size), args.seed) if val_size else (records, [])
    dtype = training_dtype(network.dtype, resolve_device(network.device))
    net = build_network(dataclasses.replace(network, dtype=dtype), any_base=force)
    args = dataclasses.replace(args, reorder=reorder_wanted(args.reorder, net))
    examples = encode_records(net.tokenizer, train, target, max_length)
    run_info = {
        "network": _network_record(network, out),  # paths relative to the run folder, so it can move with them
        "space_fingerprint": space_fingerprint(net.space),
        "tasks": _tasks_record(tasks, out),
        "max_records": max_records,
        "val_size": val_size,
        "target": target,
        "max_length": max_length,
    }
    qa_base = (net.adapter_metadata or {}).get("qa_base")
    if qa_base is not None:  # QA-SparsePEFT: on W^p (float) or on the de-quantised base (its fallback)
        run_info["qa_base"] = qa_base
    trainer = NLSTrainer(net, examples, args, out, run_info=run_info)
    log(trainer.preflight().line())  # before anything long: one step of the largest batch on the device
    saved = Path(out) / REORDER_FILE
    reordered: ReorderResult | ChannelPermutation | None = None
    if args.reorder and resume and not overwrite and saved.is_file():
        reordered = ChannelPermutation.load(saved)
        net.permute(reordered, source=str(saved))
    elif args.reorder:
        reordered = reorder_network(net, train, samples=args.reorder_samples, seq_len=args.reorder_seq_len,
                                    batch_size=args.batch_size, seed=args.seed)
    measured = _block_order(net, train, args, Path(out) / BLOCK_IMPORTANCE, resume and not overwrite)
    fingerprints = {
        "model": model_fingerprint(resolved_model_spec(network.model), network.gguf_file),
        "task": records_fingerprint(records),
        "adapter": net.fingerprint() if network.adapter else None,  # the adapter training starts from
    }
    trainer.prepare(resume=resume, overwrite=overwrite, force=force, fingerprints=fingerprints)
    if val:
        atomic_write_text(Path(out) / VALIDATION_FILE, "".join(json.dumps(r.to_dict()) + "\n" for r in val))
    if isinstance(reordered, ReorderResult):
        reordered.permutation.save(saved)
        atomic_write_json(Path(out) / REORDER_REPORT, reordered.summary())
        log(reorder_line(reordered))
    if measured is not None:
        measured.save(Path(out) / BLOCK_IMPORTANCE)
        log(block_line(measured))
    log(f"{len(examples)} training examples, {len(val)} held out; {net!r}")
    if resume:
        log(resumed_line(trainer.step, args.steps))
    return trainer


def _block_order(net: SuperNetwork, train: list[Record], args: TrainArgs, saved: Path,
                 resume: bool) -> BlockImportance | None:
    """Give a depth-count space its block order: the starting adapter's, the one a resumed run saved, or a
    fresh measurement (returned, to be saved once the folder is claimed)."""
    if not needs_block_order(net) or net.block_importance is not None:
        return None
    if resume and saved.is_file():
        net.set_block_importance(BlockImportance.load(saved))
        return None
    importance = measure_block_importance(net, train, samples=args.reorder_samples, seq_len=args.reorder_seq_len,
                                          batch_size=args.batch_size, seed=args.seed)
    net.set_block_importance(importance)
    return importance


def block_line(importance: BlockImportance) -> str:
    """One line on the measured block order: the blocks dropped first and kept last."""
    order = importance.order
    return (f"block importance ({importance.info.get('metric', '?')}): least important first "
            f"{', '.join(map(str, order[::-1][:4]))}; most important {', '.join(map(str, order[:3]))}")
def resumed_line(step: int, steps: int) -> str:
    """What a resumed training starts from: the newest whole checkpoint's step, or the start."""
    if step == 0:
        return f"resumed: no checkpoint was saved yet, so training starts at step 0 of {steps}"
    if step >= steps:
        return f"resumed: the checkpoint holds the last step ({step} of {steps}); the super-adapter is written again"
    return f"resumed from the checkpoint at step {step} of {steps}; steps {step + 1}-{steps} are left"


def _network_record(network: NetworkSettings, out: str | Path) -> dict:
    """The network settings as train_run.yaml records them; a resumed run's paths as it spelled them."""
    return kept_as_recorded(recorded_settings(network, out), _stored(out).get("network"), out)


def _tasks_record(tasks: Sequence[str], out: str | Path) -> list[str]:
    """The task files as train_run.yaml records them; a resumed run's paths as it spelled them."""
    stored = _stored(out).get("tasks")
    record = [recorded_path(t, out) for t in tasks]
    if not isinstance(stored, list) or len(stored) != len(record):
        return record
    return [kept_as_recorded({"task": new}, {"task": old}, out)["task"] for new, old in zip(record, stored)]


def _stored(out: str | Path) -> Mapping:
    """The train_run.yaml already in ``out`` (empty when there is none)."""
    stored_file = Path(out) / TRAIN_RUN_FILE
    stored = read_document(stored_file, what="training run file") if stored_file.is_file() else None
    return stored if isinstance(stored, Mapping) else {}


def reorder_wanted(asked: bool | None, net: SuperNetwork) -> bool:
    """``--reorder`` resolved: the default is on for Mode B spaces with dense adapters on a float base.

    Raises `LoraSearchError` when reordering is asked for but cannot apply.
    """
    reason = None
    if net.space.mode != "B":
        reason = f"space {net.space.name!r} has no widths or heads (Mode A), so there is nothing to reorder"
    elif net.adapter_mode != "dense":
        reason = f"the {net.adapter_mode} adapter mode keeps masks or grids in the base's channel order"
    elif any(hasattr(getattr(m, "base_layer", m), GRID_ATTR) for m in net.elastic.values()):
        reason = "the base is quantized and its INT grid follows the original channel order"
    else:
        try:
            if not network_unit_sets(net):
                reason = "the space's widths and heads drive no MLP or attention projections"
        except SpaceError:
            if asked:
                raise
            reason = "the space's widths drive modules outside the MLP and attention projections"
    if asked and reason:
        raise LoraSearchError(f"--reorder: {reason}; fix: drop --reorder")
    return bool(reason is None if asked is None else asked)


def reorder_line(result: ReorderResult) -> str:
    """One line on what reordering did: how much of the score the smallest prefix keeps, before and after."""
    table = result.summary()["prefix_score_share"]
    parts = []
    for kind, shares in table.items():
        label = min(shares, key=lambda k: int(k.split("/")[0]) / int(k.split("/")[1]))
        share = shares[label]
        parts.append(f"{kind} prefix {label} keeps {100 * share['after']:.1f} % of the importance (was {100 * share['before']:.1f} %)")
    return f"reordered {len(result.sets)} MLP/attention unit sets by output energy: " + "; ".join(parts)
