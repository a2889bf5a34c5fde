"""`SuperNetwork`: a base model, a search space and elastic LoRA adapters, one sub-network active.

Typical use::

    net = SuperNetwork.from_pretrained("default", "search_spaces/smollm2-135m.yaml")
    with net.activated(net.space.heuristic()):
        logits = net.model(input_ids).logits

The base model stays frozen; only the adapters' ``lora_A``/``lora_B`` are trainable.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import AdapterError, SpaceError
from ..io import atomic_write_json
from ..models.loading import LOW_PRECISION, LoadedModel, load_model
from ..space import Config, SearchSpace, space_fingerprint
from .binding import SpaceBinding, bind, find_layers, linear_modules
from .depth import BLOCK_IMPORTANCE_FILE, BlockImportance, gate_block, read_block_importance, set_block_kept
from .elastic import ElasticLoRALinear
from .peft_format import AdapterFolder, AdapterModule, read_adapter, write_adapter
from .permutation import PERMUTATION_FILE, ChannelPermutation, permute_modules, read_permutation, unpermute_adapter

SPACE_FILE_NAME = "lorasearch_space.yaml"
# Written beside an adapter whose modules a variant (lorasearch.compress: SparsePEFT, QA-SparsePEFT)
# replaced: its `adapter_metadata`, so that loading the folder again builds the same variant.
ADAPTER_MODE_FILE = "lorasearch_adapter_mode.json"


class SuperNetwork:
    """Wrap ``model`` with elastic LoRA modules as ``space`` declares, fresh or from a PEFT folder.

    Args:
        model: a Hugging Face causal LM (Llama, Mistral, Qwen2, Phi-3, ...), modified in place.
        space: a `SearchSpace` or the path of a space file.
        adapter: a PEFT LoRA super-adapter folder; omitted, fresh adapters are built as the space's
            ``adapter`` section says (Kaiming A, zero B, so the model starts unchanged). When the
            folder holds a channel permutation (``lorasearch_permutation.safetensors``, written for a
            reordered run), the base and the adapter are permuted together after loading; when it
            holds a block importance (``lorasearch_block_importance.json``), depth genes drop blocks in
            that order.
        tokenizer: kept for evaluators and training.
        model_spec: how the model was loaded, recorded in saved adapters and runs.
        seed: seeds the initialisation of fresh adapters, so equal seeds give equal networks.
        adapters_in_base_dtype: over a bf16/fp16 base, keep the adapter weights in the base's dtype;
            by default they are fp32 there (PEFT's default), which trains and merges more precisely.
    """

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace | str | Path,
        adapter: str | Path | None = None,
        *,
        tokenizer: Any = None,
        model_spec: str | None = None,
        seed: int = 0,
        adapters_in_base_dtype: bool = False,
    ) -> None:
        if not isinstance(space, SearchSpace):
            space = SearchSpace.load(space)
        self.model = model
        self.tokenizer = tokenizer
        self.model_spec = model_spec or getattr(getattr(model, "config", None), "_name_or_path", None)
        self.adapter_path = Path(adapter) if adapter is not None else None
        self.block_importance: BlockImportance | None = read_block_importance(adapter)
        self.binding: SpaceBinding = self._bind(space)
        self.space: SearchSpace = self.binding.space
        self.adapters_in_base_dtype = adapters_in_base_dtype
        folder = read_adapter(adapter) if adapter is not None else None
        model.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.elastic: dict[str, ElasticLoRALinear] = self._wrap(folder)
        self.blocks: dict[str, nn.Module] = {name: model.get_submodule(name) for name in self.binding.block_modules}
        for block in self.blocks.values():
            gate_block(block)
        self._active: Config = self.space.max()
        self.adapter_mode: str = "dense"  # "sparse"/"qa": see lorasearch.compress.apply_adapter_mode
        self.adapter_metadata: dict[str, Any] | None = None  # saved beside the adapter when set
        self.permutation: ChannelPermutation | None = None  # channels reordered relative to the base as loaded
        recorded = read_permutation(adapter)
        if recorded is not None:
            self.permute(recorded, source=str(Path(adapter) / PERMUTATION_FILE))

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        space: SearchSpace | str | Path,
        adapter: str | Path | None = None,
        *,
        seed: int = 0,
        **load_kwargs: Any,
    ) -> "SuperNetwork":
        """Load ``model`` (name, path, ``.gguf`` file, ``default`` or ``tiny-*``) and wrap it.

        ``load_kwargs`` go to `lorasearch.models.load_model` (``gguf_file``, ``dtype``, ...).
        """
        loaded: LoadedModel = load_model(model, **load_kwargs)
        return cls(loaded.model, space, adapter, tokenizer=loaded.tokenizer, model_spec=loaded.spec, seed=seed)

    # ------------------------------------------------------------------------ building
    def _bind(self, space: SearchSpace) -> SpaceBinding:
        importance = self.block_importance
        if importance is not None and space.depth_groups:
            source = str(self.adapter_path / BLOCK_IMPORTANCE_FILE) if self.adapter_path else "block importance"
            importance.check(len(find_layers(space, self.model)), source)
        return bind(space, self.model, importance.order if importance is not None else None)

    def set_block_importance(self, importance: BlockImportance) -> None:
        """Use ``importance`` for which blocks a depth count drops (saved with the adapter); the active
        config is applied again under the new order."""
        previous = self.block_importance
        self.block_importance = importance
        try:
            self.binding = self._bind(self.space)
        except BaseException:
            self.block_importance = previous
            raise
        self.activate(self._active)

    def _wrap(self, folder: AdapterFolder | None) -> dict[str, ElasticLoRALinear]:
        linears = linear_modules(self.model)
        names = list(self.binding.modules)
        if folder is not None:
            self._check_adapter_covers(folder, linears)
            names += [n for n in folder.modules if n not in set(names)]
        wrapped = {}
        for name in names:
            base = linears[name]
            if isinstance(base, ElasticLoRALinear):
                raise SpaceError(f"{name}: the model is already wrapped; fix: build the SuperNetwork from a fresh model")
            module = self._make_module(name, base, folder)
            _set_submodule(self.model, name, module)
            wrapped[name] = module
        return wrapped

    def _make_module(self, name: str, base: nn.Linear, folder: AdapterFolder | None) -> ElasticLoRALinear:
        spec = self.space.adapter
        if folder is not None:
            if name not in folder.modules:
                return ElasticLoRALinear(base)  # width-only module
            tensors = folder.modules[name]
            module = ElasticLoRALinear(base, tensors.rank, tensors.alpha, folder.dropout, folder.use_rslora,
                                       adapter_dtype=self._adapter_dtype(base))
            _copy_tensors(module, tensors, folder, name)
            return module
        has_adapter = name in self.binding.rank_modules or name in self.binding.fixed_modules
        if not has_adapter:
            return ElasticLoRALinear(base)
        return ElasticLoRALinear(base, spec.rank or 0, spec.effective_alpha, spec.dropout, spec.use_rslora,
                                 adapter_dtype=self._adapter_dtype(base))

    def _adapter_dtype(self, base: nn.Linear) -> torch.dtype:
        """fp32 over a bf16/fp16 base (unless asked to keep the base's dtype), else the base's dtype."""
        dtype = base.weight.dtype
        return torch.float32 if dtype in LOW_PRECISION and not self.adapters_in_base_dtype else dtype

    @property
    def device(self) -> torch.device:
        """Where the model's first parameter lies (the input device of a model spread over devices)."""
        return next(self.model.parameters()).device

    def _check_adapter_covers(self, folder: AdapterFolder, linears: Mapping[str, nn.Module]) -> None:
        for name, tensors in folder.modules.items():
            if name not in linears:
                raise AdapterError(
                    f"{folder.weights_file}: module {name} is not a linear layer of the model; "
                    "fix: load the base model the adapter was trained on"
                )
            _check_shapes(linears[name], tensors, folder, name)
        for name in self.binding.fixed_modules:
            if name not in folder.modules:
                raise AdapterError(
                    f"{folder.weights_file}: no lora_A/lora_B for {name}, which adapter.targets lists; "
                    "fix: use the adapter the space was written for, or drop it from adapter.targets"
                )
        first_choice = self._first_rank_choice()
        for name in self.binding.rank_modules:
            if name not in folder.modules:
                raise AdapterError(
                    f"{folder.weights_file}: no lora_A/lora_B for {name}, which the space makes elastic; "
                    "fix: use the adapter the space was written for, or drop the module from the space"
                )
            trained, wanted = folder.modules[name].rank, first_choice[name]
            if wanted != trained:
                raise SpaceError(
                    f"{self.space.source}: rank choices for {name} start at {wanted} but the adapter's trained rank "
                    f"is {trained}; fix: make {trained} the first rank choice (and no choice above it)"
                )

    def _first_rank_choice(self) -> dict[str, int]:
        first = {}
        for key, slots in self.binding.slots.items():
            gene = next(g for g in self.space.genes if g.key == key)
            for slot in slots:
                if slot.dim == "rank":
                    first[slot.module] = gene.choices[0]
        return first

    def permute(self, permutation: ChannelPermutation, *, source: str = "permutation") -> None:
        """Reorder channels of the base and the adapters together (function unchanged); record it.

        Only plain and `ElasticLoRALinear` layers can be permuted: adapter modes with their own masks
        or grids (SparsePEFT, QA-SparsePEFT) are refused. Successive permutations compose.
        """
        linears = linear_modules(self.model)
        permutation.check(linears, source)
        for name in permutation.modules():
            if type(linears[name]) not in (nn.Linear, ElasticLoRALinear):
                raise SpaceError(
                    f"{source}: {name} is a {type(linears[name]).__name__}, whose masks or grids cannot be reordered; "
                    "fix: reorder before the adapter mode is applied, or train with --no-reorder"
                )
        permute_modules(linears, permutation)
        self.permutation = permutation if self.permutation is None else self.permutation.then(permutation)

    # ---------------------------------------------------------------------- activation
    @property
    def active_config(self) -> Config:
        """A copy of the active config."""
        return dict(self._active)

    def activate(self, config: Mapping[str, Any]) -> None:
        """Make ``config`` the active sub-network (validated first; nothing changes on error)."""
        sizes = self.binding.resolve(config)
        for name, module in self.elastic.items():
            dims = sizes.get(name, {})
            module.set_active(dims.get("rank"), dims.get("in"), dims.get("out"))
        for name, block in self.blocks.items():
            set_block_kept(block, sizes[name]["block"])
        self._active = dict(config)

    def skipped_blocks(self, config: Mapping[str, Any] | None = None) -> list[str]:
        """The decoder blocks ``config`` (default: the active config) skips, by module name."""
        sizes = self.binding.resolve(config if config is not None else self._active)
        return [name for name in self.blocks if not sizes[name]["block"]]

    def reset(self) -> None:
        """Activate the maximal sub-network."""
        self.activate(self.space.max())

    @contextlib.contextmanager
    def activated(self, config: Mapping[str, Any]) -> Iterator["SuperNetwork"]:
        """Activate ``config`` for the ``with`` block, then restore the previous config."""
        previous = self.active_config
        self.activate(config)
        try:
            yield self
        finally:
            self.activate(previous)

    # ------------------------------------------------------------------------ adapters
    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: every adapter's ``lora_A`` and ``lora_B`` weights."""
        return [p for m in self.elastic.values() if m.lora_A is not None for p in (m.lora_A.weight, m.lora_B.weight)]

    def train_adapters(self) -> None:
        """Make the adapters trainable (the base stays frozen)."""
        for p in self.adapter_parameters():
            p.requires_grad_(True)

    def adapter_modules(self) -> dict[str, AdapterModule]:
        """The full (max-rank) adapter tensors per module name, as a PEFT folder stores them."""
        return {
            name: AdapterModule(m.lora_A.weight, m.lora_B.weight, m.alpha)
            for name, m in self.elastic.items()
            if m.lora_A is not None
        }

    def save_adapter(self, path: str | Path) -> Path:
        """Save the super-adapter (all ranks) as a PEFT folder, with the space file beside it.

        A reordered network saves its adapter in the base's original channel order (stock PEFT
        applies it to the unpermuted base) and the permutation beside it.
        """
        modules = self.adapter_modules()
        if not modules:
            raise SpaceError(f"{self.space.source}: the space has no adapters to save; "
                             "fix: give it rank groups or adapter.targets")
        if self.permutation is not None:
            modules = unpermute_adapter(modules, self.permutation)
        use_rslora = any(m.use_rslora for m in self.elastic.values())
        dropout = next((m.lora_dropout.p for m in self.elastic.values() if isinstance(m.lora_dropout, nn.Dropout)), 0.0)
        path = write_adapter(path, modules, base_model=self.model_spec, use_rslora=use_rslora, dropout=dropout)
        self.space.save(path / SPACE_FILE_NAME)
        if self.permutation is not None:
            self.permutation.save(path / PERMUTATION_FILE)
        else:
            (path / PERMUTATION_FILE).unlink(missing_ok=True)
        if self.block_importance is not None:
            self.block_importance.save(path / BLOCK_IMPORTANCE_FILE)
        else:
            (path / BLOCK_IMPORTANCE_FILE).unlink(missing_ok=True)
        if self.adapter_metadata:
            atomic_write_json(path / ADAPTER_MODE_FILE, self.adapter_metadata)
        return path

    def fingerprint(self) -> str:
        """A short hash of the space, the adapter tensors (every rank, every module), any channel permutation
        and the block order of a space with depth genes.

        Two networks with equal fingerprints score every config alike; parallel workers and
        resumed runs compare it to refuse another adapter or space than the run's.
        """
        digest = hashlib.sha256(space_fingerprint(self.space).encode())
        for name, module in sorted(self.adapter_modules().items()):
            digest.update(f"{name}:{module.alpha}".encode())
            for tensor in (module.A, module.B):
                data = tensor.detach().to("cpu").contiguous()
                digest.update(str(tuple(data.shape)).encode() + str(data.dtype).encode())
                digest.update(data.view(torch.uint8).numpy().tobytes())
        if self.permutation is not None:
            for (name, dim), index in sorted(self.permutation.indices.items()):
                digest.update(f"{name}|{dim}".encode() + index.to(torch.int64).numpy().tobytes())
        if self.blocks:
            digest.update(f"blocks:{list(self.binding.block_order)}".encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        n_adapters = sum(m.lora_A is not None for m in self.elastic.values())
        return (
            f"SuperNetwork(space={self.space.name!r}, mode={self.space.mode}, genes={len(self.space.genes)}, "
            f"elastic_modules={len(self.elastic)}, adapters={n_adapters}"
            f"{f', elastic_blocks={len(self.blocks)}' if self.blocks else ''}"
            f"{', reordered' if self.permutation is not None else ''})"
        )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _check_shapes(base: nn.Module, tensors: AdapterModule, folder: AdapterFolder, name: str) -> None:
    expected = {"lora_A": (tensors.rank, base.in_features), "lora_B": (base.out_features, tensors.rank)}
    for part, tensor in (("lora_A", tensors.A), ("lora_B", tensors.B)):
        if tuple(tensor.shape) != expected[part]:
            raise AdapterError(
                f"{folder.weights_file}: base_model.model.{name}.{part}.weight has shape {tuple(tensor.shape)}, "
                f"expected {expected[part]}; fix: load the base model the adapter was trained on"
            )


def _copy_tensors(module: ElasticLoRALinear, tensors: AdapterModule, folder: AdapterFolder, name: str) -> None:
    for part, tensor in (("lora_A", tensors.A), ("lora_B", tensors.B)):
        target = getattr(module, part).weight
        with torch.no_grad():
            target.copy_(tensor.to(dtype=target.dtype, device=target.device))
