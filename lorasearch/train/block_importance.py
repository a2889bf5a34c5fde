"""Block importance for elastic depth: which decoder blocks a "keep k blocks" gene drops first.

**The metric** (ShortGPT's *block influence*): a block's score is one minus the cosine similarity of
its input and output hidden states, averaged over the calibration tokens. A block whose output
points where its input did adds little to the residual stream, so skipping it (an identity) changes
the least; the blocks with the lowest scores are dropped first. Scores come from one layer-by-layer
replay of calibration windows of the training texts (`lorasearch.models.calibration`), at the max
config (adapters included), once before training; the result is saved beside the adapter
(`lorasearch.network.depth.BlockImportance`) and every consumer applies it on loading.

Each block is scored on the outputs of the full model before it (the blocks are scored one at a
time, not in combination), as ShortGPT does; dropping several blocks compounds in ways a one-block
score does not see, which is what the search over the number kept then measures.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Record
from ..errors import CalibrationError, LoraSearchError
from ..models.anatomy import decoder_layers
from ..models.calibration import calibration_tokens, capture_layer_inputs, run_layer, with_hidden
from ..network.depth import BlockImportance
from ..network.supernet import SuperNetwork

METRIC = "1 - cos(block input, block output)"


@torch.no_grad()
def block_scores(model: nn.Module, tokens: torch.Tensor, batch_size: int = 8) -> list[float]:
    """One minus the mean cosine similarity of each decoder block's input and output, over ``tokens``."""
    inputs = capture_layer_inputs(model, tokens, batch_size)
    scores = []
    for layer in decoder_layers(model):
        total, count, outputs = 0.0, 0, []
        for args, kwargs in inputs:
            hidden = args[0] if args else kwargs["hidden_states"]
            out = run_layer(layer, args, kwargs)
            cosine = F.cosine_similarity(hidden.float(), out.float(), dim=-1)
            total += float((1 - cosine).double().sum())
            count += cosine.numel()
            outputs.append(with_hidden(args, kwargs, out))
        inputs = outputs
        scores.append(total / max(count, 1))
    return scores


def measure_block_importance(
    net: SuperNetwork,
    records: Sequence[Record],
    *,
    samples: int = 32,
    seq_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
) -> BlockImportance:
    """Score every decoder block of ``net`` on ``samples`` windows of ``seq_len`` tokens of the records'
    texts (taken in a seeded random order, so a mix of tasks is covered), at the max config."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    try:
        tokens = calibration_tokens(net.tokenizer, shuffled, samples, seq_len)
    except CalibrationError as exc:
        raise LoraSearchError(
            f"block importance: {len(shuffled)} training records are too few for {samples} calibration windows of "
            f"{seq_len} tokens ({str(exc).split(';')[0]}); fix: lower --reorder-samples or --reorder-seq-len"
        ) from None
    was_training = net.model.training
    net.model.eval()
    try:
        with net.activated(net.space.max()):
            scores = block_scores(net.model, tokens, batch_size)
    finally:
        net.model.train(was_training)
    return BlockImportance(tuple(scores), {"metric": METRIC, "samples": samples, "seq_len": seq_len, "seed": seed})


def needs_block_order(net: SuperNetwork) -> bool:
    """Whether the space counts blocks kept (``share: global`` depth), so which blocks go first matters."""
    return any(g.share == "global" for g in net.space.depth_groups)
