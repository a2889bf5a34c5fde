"""What several test modules share: paths, the CLI runner and its error check, tiny-network
references, and the analytic surrogate search."""

from __future__ import annotations

import importlib.util

import copy
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.cli import main
from lorasearch.search import Measurement, Objective, SearchSettings, run_search

ROOT = Path(__file__).resolve().parents[1]
SPACES_DIR = ROOT / "search_spaces"
TINY_SPACE = SPACES_DIR / "tiny-llama.yaml"
SHEARS_SPACE = SPACES_DIR / "llama-shears.yaml"
DATA = ROOT.parent / "shared" / "data" / "llm-adapters"
# Parametrise a test over these to run it on a GPU too; the CUDA case skips without one.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
# Stock transformers loads INT4 folders with the compressed-tensors package (the deploy extra)
HAS_COMPRESSED_TENSORS = importlib.util.find_spec("compressed_tensors") is not None
needs_compressed_tensors = pytest.mark.skipif(not HAS_COMPRESSED_TENSORS, reason="compressed-tensors not installed "
                                              "(pip install -e '.[deploy]')")

# A Mode B space for the tiny models: ranks, MLP width and heads together.
MODE_B = {
    "name": "b",
    "adapter": {"rank": 8, "alpha": 16},
    "groups": {
        "attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"], "rank": [8, 4]},
        "mlp_rank": {"modules": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], "rank": [8, 4]},
        "mlp": {"width": [1.0, 0.75, 0.5], "channels": "mlp"},
        "heads": {"heads": [4, 2]},
    },
}


# ------------------------------------------------------------------------------------ the CLI
def run_cli(*args: object) -> None:
    """Run ``lorasearch ARGS`` in this process; it must succeed."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:  # typer exits 0 on success in some paths
        assert exc.code in (0, None), exc.code


def cli_error(capsys, *args: object, last_line: bool = False) -> str:
    """Run ``lorasearch ARGS``, expect exit code 2 and one ``error: ...`` line on stderr; return it.

    ``last_line`` keeps only the last line (progress bars of earlier model loads come first).
    """
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    if last_line:
        err = err.splitlines()[-1]
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def one_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message and message.strip() == message and message != ""


def assert_good_error(exc: pytest.ExceptionInfo, *parts: str) -> str:
    """The message is one line, names every part (file, field, ...) and carries a fix hint."""
    message = str(exc.value)
    assert one_line(message), f"not one line: {message!r}"
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert "fix" in message, f"no fix hint in {message!r}"
    return message


# ------------------------------------------------------------------------------- tiny networks
# Mode A spaces per family; Phi-3 fuses q/k/v and gate/up, so its space names the fused modules.
MODE_A_MODULES = {
    "llama": {"attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "mlp": ["mlp.up_proj", "mlp.down_proj"]},
    "mistral": {"attn": ["self_attn.q_proj", "self_attn.v_proj"], "mlp": ["mlp.gate_proj", "mlp.down_proj"]},
    "qwen2": {"attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "mlp": ["mlp.up_proj"]},
    "phi3": {"attn": ["self_attn.qkv_proj"], "mlp": ["mlp.gate_up_proj", "mlp.down_proj"]},
}


def mode_a_space(family: str, rank: int = 8, alpha: float = 16, share: str = "layer") -> SearchSpace:
    groups = {name: {"modules": mods, "rank": [rank, 6, 4, 2], "share": share} for name, mods in MODE_A_MODULES[family].items()}
    return SearchSpace.from_dict({"name": f"{family}-a", "adapter": {"rank": rank, "alpha": alpha}, "groups": groups})


def randomize_adapters(net: SuperNetwork, seed: int = 0, scale: float = 0.1) -> SuperNetwork:
    """Give every adapter non-zero weights (fresh ones start with B = 0, a no-op); returns ``net``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return net


def merged_smaller_copy(net, original: nn.Module) -> nn.Module:
    """A copy of ``original`` whose elastic linears are physically smaller ``nn.Linear`` layers
    holding the kept base weights plus the active adapter delta (the reference for Mode B)."""
    small = copy.deepcopy(original)
    for name, m in net.elastic.items():
        o, i = m.active_out, m.active_in
        layer = nn.Linear(i, o, bias=m.base_layer.bias is not None)
        with torch.no_grad():
            weight = m.base_layer.weight[:o, :i].clone()
            delta = m.active_delta_weight()
            layer.weight.copy_(weight + delta if delta is not None else weight)
            if layer.bias is not None:
                layer.bias.copy_(m.base_layer.bias[:o])
        small.set_submodule(name, layer)
    return small.eval()


# ---------------------------------------------------------------------------- synthetic search
def make_space(layers: int = 4, ranks=(32, 24, 16), widths=(1.0, 0.75, 0.5)) -> SearchSpace:
    return SearchSpace.from_dict({
        "name": "synthetic", "adapter": {"rank": ranks[0]}, "num_layers": layers,
        "groups": {"attn": {"modules": ["q_proj"], "rank": list(ranks)}, "mlp": {"width": list(widths)}},
    })


class Surrogate:
    """A seeded analytic accuracy that rises with rank and width, with diminishing returns."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.weights = np.random.default_rng(seed).uniform(0.2, 1.0, len(space.genes))
        self.upper = np.array([len(g.choices) - 1 for g in space.genes])
        self.calls = 0

    def accuracy(self, config) -> float:
        self.calls += 1
        keep = 1 - self.space.encode(config) / self.upper
        return float(0.25 + 0.5 * np.dot(self.weights, np.sqrt(keep)) / self.weights.sum())

    def macs(self, config) -> float:
        genes = self.space.encode(config)
        return float(np.dot(1 + self.weights, [len(g.choices) - i for g, i in zip(self.space.genes, genes)]))


def objectives(s: Surrogate) -> list[Objective]:
    return [Objective("accuracy", "max", s.accuracy, bounds=(1.0, 0.0)), Objective("macs", "min", s.macs)]


STDERR = 0.01
INFO = {"task": "synthetic", "deployment": "unmerged", "seq_len": 64}


def synthetic_search(out=None, strategy="nsga2", budget=40, seed=1, extra=(), **kwargs):
    """A search on the analytic surrogate, with GMAC-sized MACs and accuracies carrying a stderr."""
    space = make_space()
    s = Surrogate(space)
    accuracy, macs = objectives(s)
    accuracy.fn = lambda c, f=accuracy.fn: Measurement(f(c), STDERR)
    macs.fn, macs.unit = (lambda c, f=macs.fn: f(c) * 1e9), "MACs (unmerged)"
    extras = [e(s) for e in extra]
    settings = SearchSettings(strategy=strategy, budget=budget, population=8, seed=seed)
    return run_search(space, [accuracy, macs, *extras], settings, out_dir=out, run_info=INFO, **kwargs)


class ItemScores:
    """An item-wise accuracy on top of `Surrogate`: item i is right when its difficulty (plus a
    config-item noise) is below the config's true accuracy. Items keep one fixed order, a prefix is
    the start of the full score, and every item actually scored is counted and can be logged."""

    def __init__(self, space: SearchSpace, n_items: int = 60, seed: int = 0, noise: float = 0.15,
                 log: str | None = None) -> None:
        self.truth = Surrogate(space, seed)
        self.space, self.n_items, self.noise, self.log = space, n_items, noise, log
        self.difficulty = np.random.default_rng([seed, 1]).uniform(0, 1, n_items)
        self.scored: dict[tuple, list[float]] = {}
        self.restored: dict[tuple, int] = {}
        self.forwards = 0
        self.proxied: dict[tuple, list[float]] = {}
        self.proxy_noise, self.proxy_calls = 0.02, 0

    def _item(self, key: tuple, i: int, p: float) -> float:
        eps = np.random.default_rng([*key, i, 7]).normal(0, self.noise)
        return 1.0 if self.difficulty[i] + eps < p else 0.0

    def score_items(self, config, stop: int | None = None):
        from lorasearch.search import Measurement

        stop = self.n_items if stop is None else stop
        key = tuple(int(g) for g in self.space.encode(config))
        done = self.scored.setdefault(key, [])
        new = range(len(done), stop)
        if len(new):
            p = self.truth.accuracy(config)
            done += [self._item(key, i, p) for i in new]
            self.forwards += len(new)
            if self.log:
                with open(self.log, "a") as f:
                    f.writelines(f"{list(key)}:{i}\n" for i in new)
        items = tuple(done[:stop])
        mean = sum(items) / stop
        scored = len(new) + self.restored.pop(key, 0)  # restored items count as this evaluation's
        return Measurement(mean, float(np.sqrt(mean * (1 - mean) / stop)), stop, items, scored)

    def restore(self, config, values) -> None:
        key = tuple(int(g) for g in self.space.encode(config))
        done = self.scored.setdefault(key, [])
        self.restored[key] = self.restored.get(key, 0) + max(len(values) - len(done), 0)
        done += list(values[len(done):])

    def proxy(self, config, stop: int):
        """A continuous per-item score (the config's accuracy less the item's difficulty, plus noise of
        ``proxy_noise``), scored apart from the 0/1 items and counted in ``forwards`` like them."""
        from lorasearch.search import Measurement

        key = tuple(int(g) for g in self.space.encode(config))
        done = self.proxied.setdefault(key, [])
        new = range(len(done), stop)
        if len(new):
            p = self.truth.accuracy(config)
            done += [p - self.difficulty[i] + np.random.default_rng([*key, i, 9]).normal(0, self.proxy_noise)
                     for i in new]
            self.forwards += len(new)
            self.proxy_calls += 1
        values = tuple(done[:stop])
        return Measurement(sum(values) / stop, n=stop, items=values, scored=len(new))

    def objectives(self, proxy: bool = False) -> list[Objective]:
        accuracy = Objective("accuracy", "max", self.score_items, bounds=(1.0, 0.0), expensive=True,
                             partial=self.score_items, n_items=self.n_items, restore=self.restore,
                             proxy=self.proxy if proxy else None)
        return [accuracy, Objective("macs", "min", self.truth.macs)]


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``path`` has ``count`` lines; fail if ``proc`` exits or the time runs out first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {count} lines (child rc {proc.poll()})")


def kill_at_lines(proc: subprocess.Popen, path: Path, count: int, timeout: float = 120) -> None:
    """``kill -9`` the child once ``path`` (its append-only log) has ``count`` lines."""
    wait_for_lines(path, count, proc, timeout)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
