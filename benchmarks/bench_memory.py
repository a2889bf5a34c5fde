"""Peak resident memory of loading and evaluating a 1.1B bf16 checkpoint on the CPU, against its bytes.

A random model of TinyLlama-1.1B's shape (hidden 2048, 22 layers, MLP 5632, 32 heads over 4
key/value heads, vocabulary 32000) is saved once in bf16 with a byte-level tokenizer (no download),
then ``lorasearch eval`` loads and scores a few items in a fresh process, once with ``--dtype bf16``
(the checkpoint's dtype) and once with ``--dtype auto`` (fp32 on the CPU). The peak resident set of
each process is divided by the checkpoint's weight bytes. The target: at most 1.3x in bf16.

A second part (``--parts pruned``) measures reading a per-layer pruned export back: the same random
model with its MLP width alternating 5632 / 4096 per layer, written once by
`lorasearch.export.pruned.write_pruned_model` (the DeciLM layout, bf16), then loaded in a fresh
process by `load_pruned` (built on the meta device, weights read one tensor at a time) in the
checkpoint's dtype and in fp32, and, for comparison, by stock ``AutoModelForCausalLM.from_pretrained(
path, trust_remote_code=True, dtype=bfloat16)``. Each process also runs one forward pass. The target:
``load_pruned`` in the checkpoint's dtype at most 1.3x the folder's weight bytes.

    python benchmarks/bench_memory.py            # builds ../lorasearch-runs/tinyllama-1.1b-random once (2.2 GB)
    python benchmarks/bench_memory.py --parts pruned
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import RUNS, environment, environment_markdown, write_results

SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=RUNS / "tinyllama-1.1b-random")
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--dtypes", nargs="+", default=["bf16", "auto"])
    p.add_argument("--parts", nargs="+", choices=("eval", "pruned"), default=["eval", "pruned"])
    p.add_argument("--pruned", type=Path, default=RUNS / "tinyllama-1.1b-random-pruned",
                   help="the per-layer pruned folder (built once from --checkpoint)")
    return p.parse_args()


def build_checkpoint(folder: Path) -> None:
    """A random 1.1B Llama in bf16, saved with the byte tokenizer (built in a child process)."""
    code = (
        "import torch, sys\n"
        "from transformers import AutoModelForCausalLM\n"
        "from lorasearch.models.loading import byte_tokenizer, tiny_config\n"
        f"config = tiny_config('llama', **{SHAPE!r})\n"
        "model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)\n"
        "model.save_pretrained(sys.argv[1]); byte_tokenizer().save_pretrained(sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True)


def build_pruned(checkpoint: Path, folder: Path) -> None:
    """The checkpoint with its MLP width alternating 5632 / 4096 per layer, as a per-layer pruned export."""
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from lorasearch.export.pruned import write_pruned_model\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)\n"
        "for i, layer in enumerate(model.model.layers):\n"
        "    keep = 5632 if i % 2 == 0 else 4096\n"
        "    for name in ('gate_proj', 'up_proj'):\n"
        "        old = getattr(layer.mlp, name); new = nn.Linear(old.in_features, keep, bias=False, dtype=old.weight.dtype)\n"
        "        new.weight = nn.Parameter(old.weight[:keep].clone()); setattr(layer.mlp, name, new)\n"
        "    old = layer.mlp.down_proj; new = nn.Linear(keep, old.out_features, bias=False, dtype=old.weight.dtype)\n"
        "    new.weight = nn.Parameter(old.weight[:, :keep].clone()); layer.mlp.down_proj = new\n"
        "plan = write_pruned_model(sys.argv[2], model, AutoTokenizer.from_pretrained(sys.argv[1]))\n"
        "print(plan.layout)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(checkpoint), str(folder)], check=True)


LOADERS = {
    "load_pruned (as stored: bf16)": "from lorasearch import load_pruned; model = load_pruned(path)",
    "load_pruned (dtype fp32)": "from lorasearch import load_pruned; model = load_pruned(path, dtype='fp32')",
    "transformers from_pretrained (trust_remote_code, bf16)": (
        "from transformers import AutoModelForCausalLM; "
        "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.bfloat16)"),
}


def loader_command(load: str, folder: Path) -> list[str]:
    code = (f"import sys, torch\npath = sys.argv[1]\n{load}\n"
            "with torch.inference_mode():\n"
            "    out = model(torch.arange(3, 35)[None]).logits\n"
            "print(f'{type(model).__name__}, {next(model.parameters()).dtype}, logits {tuple(out.shape)}')\n")
    return [sys.executable, "-c", code, str(folder)]


def pruned_rows(args: argparse.Namespace) -> tuple[list[dict], int]:
    if not (args.pruned / "config.json").is_file():
        build_pruned(args.checkpoint, args.pruned)
    weights = sum(p.stat().st_size for p in args.pruned.glob("*.safetensors"))
    rows = []
    for name, load in LOADERS.items():
        peak, seconds, line = peak_of(loader_command(load, args.pruned))
        rows.append({"loader": name, "peak_bytes": peak, "ratio": peak / weights, "seconds": seconds, "result": line})
    return rows, weights


def pruned_markdown(rows: list[dict], weights: int, baseline: int) -> list[str]:
    md = ["", "## Loading a per-layer pruned export", "",
          f"The random 1.1B model with its MLP width alternating 5632 / 4096 per layer, written by "
          f"`write_pruned_model` (DeciLM layout, {weights / 1e9:.2f} GB of bf16 weights); each loader in a fresh "
          f"process, then one forward pass of 32 tokens. The interpreter alone holds {baseline / 1e9:.2f} GB.", "",
          "| loader | peak resident | / folder's weight bytes | wall s | result |", "|---|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['loader']} | {r['peak_bytes'] / 1e9:.2f} GB | **{r['ratio']:.2f}x** | {r['seconds']:.0f} | "
                  f"{r['result']} |")
    md += ["", "fp32 holds twice the bf16 checkpoint's bytes by design (the weights are cast on reading)."]
    return md


def peak_of(command: list[str]) -> tuple[int, float, str]:
    """The peak resident bytes and wall seconds of a child process, and its last line of output."""
    code = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, done.returncode)\n"
        "print((done.stdout.strip().splitlines() or [''])[0]); print(done.stderr[-2000:], file=sys.stderr)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    first, line = done.stdout.splitlines()[:2]
    peak, rc = (int(v) for v in first.split())
    if rc:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return peak, seconds, line


def main() -> None:
    args = parse_args()
    if not (args.checkpoint / "model.safetensors").is_file() and not (args.checkpoint / "model.safetensors.index.json").is_file():
        build_checkpoint(args.checkpoint)
    weights = sum(p.stat().st_size for p in args.checkpoint.glob("*.safetensors"))
    baseline, _, _ = peak_of([sys.executable, "-c", "import lorasearch.cli, torch, transformers"])
    rows = []
    for dtype in args.dtypes if "eval" in args.parts else []:
        command = [sys.executable, "-m", "lorasearch.cli", "eval", "--model", str(args.checkpoint), "--dtype", dtype,
                   "--device", "cpu", "--limit", str(args.items), "--evaluator", "text"]
        peak, seconds, line = peak_of(command)
        rows.append({"dtype": dtype, "peak_bytes": peak, "ratio": peak / weights, "seconds": seconds, "result": line})
    pruned, pruned_weights = pruned_rows(args) if "pruned" in args.parts else ([], 0)
    data = {"checkpoint": str(args.checkpoint), "weight_bytes": weights, "baseline_bytes": baseline, "rows": rows,
            "shape": SHAPE, "pruned": {"folder": str(args.pruned), "weight_bytes": pruned_weights, "rows": pruned}}
    env = environment()
    md = ["# Peak memory: a 1.1B bf16 checkpoint on the CPU", "", environment_markdown(env)]
    if rows:
        md += [f"Checkpoint: {weights / 1e9:.2f} GB of bf16 weights (TinyLlama-1.1B's shape, random). "
               f"`lorasearch eval` on {args.items} synthetic items in a fresh process; the interpreter with torch, "
               f"transformers and lorasearch imported already holds {baseline / 1e9:.2f} GB.", "",
               "| --dtype | peak resident | / checkpoint bytes | wall s | result |", "|---|---:|---:|---:|---|"]
        for r in rows:
            md.append(f"| {r['dtype']} | {r['peak_bytes'] / 1e9:.2f} GB | **{r['ratio']:.2f}x** | {r['seconds']:.0f} | "
                      f"{r['result']} |")
        md += ["", "`--dtype auto` means fp32 on the CPU (bf16 matmuls are slow there), so it holds twice the "
               "checkpoint's bytes by design; `--dtype bf16` keeps the checkpoint's dtype."]
    if pruned:
        md += pruned_markdown(pruned, pruned_weights, baseline)
    write_results("memory" if rows else "memory_pruned", {"environment": env, **data}, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
