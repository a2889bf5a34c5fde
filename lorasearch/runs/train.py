"""A training run from plain settings: task files -> split -> tokenised examples -> `NLSTrainer`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from ..data import Record, load_records, subset, synthetic_task, train_val_split
from ..fingerprints import model_fingerprint, records_fingerprint
from ..io import FolderLock, atomic_write_text
from ..space import space_fingerprint
from ..targets import encode_records
from ..train import NLSTrainer, TrainArgs
from .settings import NetworkSettings, build_network, settings_dict

VALIDATION_FILE = "validation.jsonl"


def load_training_records(tasks: Sequence[str], max_records: int | None, seed: int) -> list[Record]:
    """The records of every task file (a seeded subset of each), or the synthetic task."""
    if not tasks:
        return synthetic_task(400, seed=seed)
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
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> NLSTrainer:
    """Build the super-network and data, claim ``out``, and return a trainer ready to ``train()``.

    Checks everything (space against model, data fields, output folder) before any training.
    The held-out records go to ``out/validation.jsonl`` for the search to score on. ``out`` is
    locked from before the model loads until the training ends; a resume whose model, records or
    starting adapter changed is refused unless ``force``.
    """
    args.check()  # before the folder is made
    with FolderLock(out):  # the trainer takes the lock over in prepare()
        return _prepare(network, tasks, args, out, target, max_length, val_size, max_records, resume, overwrite,
                        force, log)


def _prepare(network: NetworkSettings, tasks: Sequence[str], args: TrainArgs, out: str | Path, target: str,
             max_length: int, val_size: float, max_records: int | None, resume: bool, overwrite: bool, force: bool,
             log: Callable[[str], None]) -> NLSTrainer:
    records = load_training_records(tasks, max_records, args.seed)
    train, val = train_val_split(records, val_size if val_size < 1 else int(val_size), args.seed) if val_size else (records, [])
    net = build_network(network)
    examples = encode_records(net.tokenizer, train, target, max_length)
    run_info = {
        "network": settings_dict(network),
        "space_fingerprint": space_fingerprint(net.space),
        "tasks": list(tasks),
        "max_records": max_records,
        "val_size": val_size,
        "target": target,
        "max_length": max_length,
    }
    fingerprints = {
        "model": model_fingerprint(network.model, network.gguf_file),
        "task": records_fingerprint(records),
        "adapter": net.fingerprint() if network.adapter else None,  # the adapter training starts from
    }
    trainer = NLSTrainer(net, examples, args, out, run_info=run_info)
    trainer.prepare(resume=resume, overwrite=overwrite, force=force, fingerprints=fingerprints)
    if val:
        atomic_write_text(Path(out) / VALIDATION_FILE, "".join(json.dumps(r.to_dict()) + "\n" for r in val))
    log(f"{len(examples)} training examples, {len(val)} held out; {net!r}")
    return trainer
