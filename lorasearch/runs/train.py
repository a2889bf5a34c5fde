"""A training run from plain settings: task files -> split -> tokenised examples -> `NLSTrainer`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from ..data import Record, load_records, subset, synthetic_task, train_val_split
from ..io import atomic_write_text
from ..space import space_fingerprint
from ..targets import encode_records
from ..train import NLSTrainer, TrainArgs
from .settings import NetworkSettings, build_network, settings_dict

VALIDATION_FILE = "validation.jsonl"


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
    log: Callable[[str], None] = print,
) -> NLSTrainer:
    """Build the super-network and data, claim ``out``, and return a trainer ready to ``train()``.

    Checks everything (space against model, data fields, output folder) before any training.
    The held-out records go to ``out/validation.jsonl`` for the search to score on.
    """
    records = load_training_records(tasks, max_records, args.seed, synthetic_records)
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
    trainer = NLSTrainer(net, examples, args, out, run_info=run_info)
    trainer.prepare(resume=resume, overwrite=overwrite)
    if val:
        atomic_write_text(Path(out) / VALIDATION_FILE, "".join(json.dumps(r.to_dict()) + "\n" for r in val))
    log(f"{len(examples)} training examples, {len(val)} held out; {net!r}")
    return trainer
