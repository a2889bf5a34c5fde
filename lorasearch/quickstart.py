"""The README's main job on the embedded default model, as far as the landed features go."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .cost import parameter_counts
from .errors import SpaceError
from .io import atomic_write_json
from .models import default_model_spec, smollm2_gguf
from .supernet import SuperNetwork

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def shipped_space(name: str) -> Path:
    """Path of a space file shipped in the repository's ``search_spaces/`` folder."""
    path = SPACES_DIR / name
    if not path.is_file():
        raise SpaceError(f"{path}: shipped space not found; fix: run from a clone of the repository or pass --space")
    return path


def run_quickstart(model: str = "default", out: Path = Path("runs/quickstart"), console: Console | None = None) -> Path:
    """Build the super-network of the default model and write its reference subnets to ``out``."""
    console = console or Console()
    spec = default_model_spec() if model == "default" else model
    is_smollm2 = smollm2_gguf() is not None and spec == str(smollm2_gguf())
    space_file = shipped_space("smollm2-135m.yaml" if is_smollm2 else "tiny-llama.yaml")
    console.print(f"model: {spec}\nspace: {space_file}")
    net = SuperNetwork.from_pretrained(spec, space_file)
    console.print(repr(net))
    out.mkdir(parents=True, exist_ok=True)
    net.space.save(out / "space.yaml")
    subnets = {}
    for label, config in (("max", net.space.max()), ("heuristic", net.space.heuristic()), ("min", net.space.min())):
        counts = parameter_counts(net, config)
        subnets[label] = {"config": config, "trainable_params": counts.trainable, "total_params": counts.total}
        console.print(f"{label:>9}: {counts.trainable:>12,} trainable / {counts.total:>12,} total parameters")
    atomic_write_json(out / "subnets.json", subnets)
    console.print(f"wrote {out / 'space.yaml'} and {out / 'subnets.json'}")
    console.print("not yet here: NLS training, search, Pareto plot and export land with the later issues")
    return out
