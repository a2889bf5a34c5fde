"""Bytes on disk of the INT4 folder `lorasearch quantize` writes (compressed-tensors pack-quantized),
beside the bf16 and fp32 folders of the same model, and what stock transformers loads from it.

    .venv/bin/python benchmarks/bench_int4_size.py                  # SmolLM2-135M (the embedded default)
    .venv/bin/python benchmarks/bench_int4_size.py --model tiny-llama --group-size 32

The INT4 folder is counted without ``lorasearch_prequant.safetensors`` (``W^p``, the decoder linears
once more in the model's dtype, kept for QA-SparsePEFT; a merged export or a GPTQ base has none),
which is listed on its own. Embeddings and ``lm_head`` stay in the model's dtype, so a model whose
embeddings are a large share (SmolLM2-135M: 28M of 135M parameters) stays above the 35 % that its
decoder linears alone reach. Writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, environment_markdown, write_results  # noqa: E402

from lorasearch.compress.quant import PREQUANT_FILE, quantize_model, save_quantized  # noqa: E402
from lorasearch.models.anatomy import decoder_linears  # noqa: E402
from lorasearch.models.loading import load_model, save_model_folder  # noqa: E402


def folder_bytes(folder: Path, without: tuple[str, ...] = ()) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name not in without)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--group-size", type=int, default=64, help="SmolLM2's 576 inputs are not a multiple of 128")
    p.add_argument("--name", default="int4_size")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_int4_size_"))
    loaded = load_model(args.model, dtype="bf16", device="cpu")
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())
    linears = sum(m.weight.numel() for m in decoder_linears(model).values())
    save_model_folder(work / "bf16", model, loaded.tokenizer)
    quantize_model(model, 4, args.group_size)
    save_quantized(model, loaded.tokenizer, work / "int4", {"model": loaded.spec})
    fp32 = load_model(args.model, dtype="fp32", device="cpu")
    save_model_folder(work / "fp32", fp32.model, fp32.tokenizer)
    sizes = {"bf16": folder_bytes(work / "bf16"), "fp32": folder_bytes(work / "fp32"),
             "int4": folder_bytes(work / "int4", without=(PREQUANT_FILE,)),
             "w_p": (work / "int4" / PREQUANT_FILE).stat().st_size}
    stock = None
    if importlib.util.find_spec("compressed_tensors") is not None:
        from transformers import AutoModelForCausalLM

        loaded_stock = AutoModelForCausalLM.from_pretrained(work / "int4")
        ours = load_model(str(work / "int4"), dtype="bf16", device="cpu").model
        x = torch.randint(3, 259, (1, 32), generator=torch.Generator().manual_seed(0))  # ids every vocabulary has
        with torch.no_grad():
            stock = bool(torch.equal(loaded_stock(x).logits, ours(x).logits))
    env = environment()
    mb = {k: v / 1e6 for k, v in sizes.items()}
    lines = [f"# INT4 folder size: {loaded.spec}, group size {args.group_size}", "", environment_markdown(env),
             f"- parameters: {params / 1e6:.1f} M, of which decoder linears {linears / 1e6:.1f} M "
             f"({linears / params:.0%}; the rest embeddings, lm_head and norms stay in the model's dtype)", "",
             "| folder | MB | share of the bf16 folder |", "|---|---:|---:|",
             f"| fp32 | {mb['fp32']:.1f} | {sizes['fp32'] / sizes['bf16']:.0%} |",
             f"| bf16 | {mb['bf16']:.1f} | 100% |",
             f"| INT4 (compressed-tensors, without W^p) | {mb['int4']:.1f} | {sizes['int4'] / sizes['bf16']:.1%} |",
             f"| W^p (`{PREQUANT_FILE}`, optional, bf16) | {mb['w_p']:.1f} | {sizes['w_p'] / sizes['bf16']:.1%} |", "",
             f"Stock `from_pretrained` of the INT4 folder gives the same logits as lorasearch's loader: {stock}"
             + (" (compressed-tensors not installed: not checked)" if stock is None else "")]
    write_results(args.name, {"environment": env, "args": vars(args), "bytes": sizes, "parameters": params,
                              "decoder_linear_parameters": linears, "stock_logits_equal": stock}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
