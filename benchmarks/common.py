"""Shared by the benchmark scripts: where things are, what machine ran them, how results are written."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "llm-adapters"
RUNS = ROOT.parent / "lorasearch-runs"  # trained adapters and long runs live outside the repository
COMMONSENSE_TRAIN = ("ARC-Easy/train.json", "boolq/train.json", "openbookqa/train.json")
PACKAGES = ("lorasearch", "torch", "transformers", "peft", "pymoo", "optuna", "fvcore", "numpy", "pandas")


def environment() -> dict[str, Any]:
    """The command, machine, date and package versions of this run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    import torch

    from lorasearch.version import __version__  # the code that ran (an editable install's metadata can be stale)

    versions["lorasearch"] = __version__

    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
    }


def environment_markdown(env: dict[str, Any]) -> str:
    """The environment as a few markdown lines."""
    m = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    return (
        f"- command: `{env['command']}`\n- machine: {m['platform']}, {m['cpus']} CPUs "
        f"({m['torch_threads']} torch threads)\n- date: {env['date']}\n- versions: {versions}\n"
    )


def write_results(name: str, data: dict[str, Any], markdown: str, folder: Path | None = None) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md`` atomically (or into ``folder``)."""
    from lorasearch.io import atomic_write_json, atomic_write_text

    folder = Path(folder) if folder is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    atomic_write_json(json_path, json.loads(relative_paths(json.dumps(data, default=str))))
    atomic_write_text(md_path, relative_paths(markdown))
    return json_path, md_path


def relative_paths(text: str) -> str:
    """Paths of this machine written relative to the repository, so results read the same anywhere."""
    return text.replace(str(ROOT) + "/", "").replace(str(ROOT.parent) + "/", "../")


def train_on_commonsense(out: Path, space: str | Path, sampler: str, *, steps: int, lr: float, per_task: int,
                         batch_size: int = 8, target: str = "text") -> Path:
    """NLS (or, with the fixed sampler, plain LoRA) on the commonsense mix with 10 % held out.

    A finished run in ``out`` is reused and an interrupted one resumed. The reference's recipe: no
    importance reordering (`bench_modeb_ablation.py` measures what it changes).
    """
    import sys

    from lorasearch.runs import NetworkSettings, prepare_training
    from lorasearch.train.trainer import TrainArgs

    if (out / "adapter" / "adapter_config.json").is_file():
        print(f"reusing {out}")
        return out
    targs = TrainArgs(steps=steps, batch_size=batch_size, lr=lr, sampler=sampler, seed=0, checkpoint_every=25,
                      reorder=False)
    trainer = prepare_training(NetworkSettings(model="default", space=str(space), seed=0),
                               [str(DATA / t) for t in COMMONSENSE_TRAIN], targs, out, target=target,
                               max_length=256, val_size=0.1, max_records=per_task,
                               resume=(out / "checkpoint" / "state.json").is_file())
    result = trainer.train(progress=sys.stderr.isatty())
    print(f"{out.name}: {result.steps} steps in {result.seconds:.0f} s, last loss {result.final_loss:.4f}")
    return out
