"""Base models: loading any Hugging Face causal LM or GGUF file, or its shapes alone (`loading`),
reaching the hub (`hub`), a decoder's blocks, linears and memory per token (`anatomy`),
block-by-block calibration (`calibration`) and the preflight batch of a long job (`preflight`)."""

from .anatomy import block_linears, decoder_layers, decoder_linears
from .loading import LoadedModel, load_model, load_shapes, meta_model, resolve_device, resolve_dtype, tiny_model

__all__ = ["LoadedModel", "block_linears", "decoder_layers", "decoder_linears", "load_model", "load_shapes", "meta_model",
           "resolve_device", "resolve_dtype", "tiny_model"]
