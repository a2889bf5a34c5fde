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
import json
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import AdapterError, LoraSearchWarning, ModelError, SpaceError, where
from ..io import atomic_write_json
from ..models.int_checkpoint import int_checkpoint_kind
from ..models.loading import LOW_PRECISION, LoadedModel, load_model, model_identity
from ..space import Config, SearchSpace, space_fingerprint
from .binding import SpaceBinding, bind, find_layers, linear_modules
from .depth import BLOCK_IMPORTANCE_FILE, BlockImportance, gate_block, read_block_importance, set_block_kept
from .elastic import ElasticLoRALinear
from .offload import OffloadedBlocks
from .peft_format import CONFIG_NAME, PREFIX, AdapterFolder, AdapterModule, read_adapter, write_adapter
from .permutation import PERMUTATION_FILE, ChannelPermutation, permute_modules, read_permutation, unpermute_adapter

SPACE_FILE_NAME = "lorasearch_space.yaml"
# Written beside an adapter whose modules a variant (lorasearch.compress: SparsePEFT, QA-SparsePEFT)
# replaced: its `adapter_metadata`, so that loading the folder again builds the same variant.
ADAPTER_MODE_FILE = "lorasearch_adapter_mode.json"
# Written beside a base quantized by lorasearch.compress.quant: the INT grid, which QA-SparsePEFT and
# merging need and `build_network` attaches.
QUANT_FILE = "lorasearch_quant.json"
BUILDER_HINT = "lorasearch.build_network(lorasearch.NetworkSettings(model=..., space=..., adapter=...))"


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
        any_base: use an adapter whose ``base_model_name_or_path`` names another model than
            ``model_spec`` (a warning when its tensors fit); by default that is an `AdapterError`
            naming both models, raised before the space is checked against the model.
        adapter_device: where the adapters of layers without weights (a model on the meta device)
            live: None keeps them on the meta device too; ``"cpu"`` makes them real, e.g. for a
            parallel search's driver, which needs the adapter's fingerprint and the shapes only.

    Layers that accelerate offloads (``device_map`` with CPU or disk offload) are wrapped with their
    adapters on the device the layer runs on, and their weights are brought in under the wrapped
    names (`lorasearch.network.offload`); such a network cannot be reordered or merged.
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
        any_base: bool = False,
        adapter_device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(space, SearchSpace):
            space = SearchSpace.load(space)
        self.model = model
        self.tokenizer = tokenizer
        self.model_spec = model_spec or getattr(getattr(model, "config", None), "_name_or_path", None)
        folder = read_adapter(adapter) if adapter is not None else None
        other_base = _other_base(folder, self.model_spec, any_base)  # before the space meets the model
        self.adapter_path = Path(adapter) if adapter is not None else None
        self.block_importance: BlockImportance | None = read_block_importance(adapter)
        self.binding: SpaceBinding = self._bind(space)
        self.space: SearchSpace = self.binding.space
        self.adapters_in_base_dtype = adapters_in_base_dtype
        self.adapter_device = adapter_device
        model.requires_grad_(False)
        # modules_to_save weights that replaced the base's: full parameter name -> (module, attribute)
        self.saved_parameters: dict[str, tuple[nn.Module, str]] = self._load_saved(folder) if folder else {}
        if folder is None and self.space.adapter.rank:  # fresh adapters are trained at adapter.rank
            self._check_first_rank_choices({name: self.space.adapter.rank for name in self.binding.rank_modules})
        self.offloaded: OffloadedBlocks | None = OffloadedBlocks.detach(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.elastic: dict[str, ElasticLoRALinear] = self._wrap(folder)
        if self.offloaded is not None:
            self.offloaded.attach(model)
        if other_base is not None:  # every tensor fitted this model's shapes
            warnings.warn(LoraSearchWarning(f"{folder.path / CONFIG_NAME}: trained on {other_base!r}, used on "
                                            f"{self.model_spec!r} as --force asks (the shapes match)"), stacklevel=2)
        self.blocks: dict[str, nn.Module] = {name: model.get_submodule(name) for name in self.binding.block_modules}
        for block in self.blocks.values():  # after the offload hooks: a skipped block loads no weights
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
        space: SearchSpace | str | Path | None = None,
        adapter: str | Path | None = None,
        *,
        seed: int = 0,
        any_base: bool = False,
        **load_kwargs: Any,
    ) -> "SuperNetwork":
        """Load ``model`` (name, path, ``.gguf`` file, ``default`` or ``tiny-*``) and wrap it.

        ``space`` None takes the adapter folder's own space file (``lorasearch_space.yaml``, saved
        beside every super-adapter lorasearch trains). ``load_kwargs`` go to
        `lorasearch.models.load_model` (``gguf_file``, ``dtype``, ...). A plain or sparse base with
        dense adapters (reordered ones included) gives the network that `lorasearch.build_network`
        gives. SparsePEFT / QA-SparsePEFT adapter folders and INT-quantized bases are refused
        (`AdapterError`, `ModelError`): their masks and grids are built by
        ``build_network(NetworkSettings(...))``, the one builder of every command.
        """
        refuse_compressed(model, adapter)
        if space is None:
            space = adapter_space_file(adapter)
        loaded: LoadedModel = load_model(model, **load_kwargs)
        return cls(loaded.model, space, adapter, tokenizer=loaded.tokenizer, model_spec=loaded.spec, seed=seed,
                   any_base=any_base)

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

    @torch.no_grad()
    def _load_saved(self, folder: AdapterFolder) -> dict[str, tuple[nn.Module, str]]:
        """Put the folder's ``modules_to_save`` weights into the base, as PEFT's wrapper replaces the
        module; a weight tied to another (``lm_head`` and ``embed_tokens``) is untied first, as PEFT's copy is."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        loaded = {}
        for name, tensor in folder.saved.items():
            target = params.get(name)
            if target is None or target.shape != tensor.shape:
                found = "is not a parameter of the model" if target is None else f"has shape {tuple(target.shape)}"
                raise AdapterError(
                    f"{folder.weights_file}: {PREFIX}{name} (modules_to_save, shape {tuple(tensor.shape)}): {name} "
                    f"{found}; fix: load the base model the adapter was trained on"
                )
            module_name, _, attr = name.rpartition(".")
            module = self.model.get_submodule(module_name)
            tied = sum(p is target for p in params.values()) > 1  # tied: give this module its own weight
            shapes_only = target.device.type == "meta" and self.adapter_device is not None  # a real copy, here
            if tied or shapes_only:
                device = self.adapter_device if shapes_only else target.device
                setattr(module, attr, nn.Parameter(tensor.to(target.dtype, copy=True).to(device), requires_grad=False))
                if tied:
                    _untie_config(self.model)
            else:
                target.copy_(tensor.to(target.dtype))
            loaded[name] = (module, attr)
        return loaded

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """The ``modules_to_save`` weights the network runs with, by full parameter name (written by every export)."""
        return {name: getattr(module, attr) for name, (module, attr) in self.saved_parameters.items()}

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
                                       adapter_dtype=self._adapter_dtype(base), adapter_device=self._adapter_home(name, base))
            _copy_tensors(module, tensors, folder, name)
            return module
        has_adapter = name in self.binding.rank_modules or name in self.binding.fixed_modules
        if not has_adapter:
            return ElasticLoRALinear(base)
        return ElasticLoRALinear(base, spec.rank or 0, spec.effective_alpha, spec.dropout, spec.use_rslora,
                                 adapter_dtype=self._adapter_dtype(base), adapter_device=self._adapter_home(name, base))

    def _adapter_dtype(self, base: nn.Linear) -> torch.dtype:
        """fp32 over a bf16/fp16 base (unless asked to keep the base's dtype), else the base's dtype."""
        dtype = base.weight.dtype
        return torch.float32 if dtype in LOW_PRECISION and not self.adapters_in_base_dtype else dtype

    def _adapter_home(self, name: str, base: nn.Linear) -> torch.device | str | None:
        """Where the adapter of ``name`` lives: beside its base weight, unless the base has none here
        (offloaded: the device its block runs on; meta: ``adapter_device``)."""
        if base.weight.device.type != "meta":
            return None
        offloaded = self.offloaded.device_of(name) if self.offloaded is not None else None
        return offloaded if offloaded is not None else self.adapter_device

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
        for name in self.binding.rank_modules:
            if name not in folder.modules:
                raise AdapterError(
                    f"{folder.weights_file}: no lora_A/lora_B for {name}, which the space makes elastic; "
                    "fix: use the adapter the space was written for, or drop the module from the space"
                )
        self._check_first_rank_choices({name: m.rank for name, m in folder.modules.items()})

    def _check_first_rank_choices(self, trained: Mapping[str, int]) -> None:
        """Each rank group starts at the trained rank of every module it drives (its own rank, e.g. from
        PEFT's ``rank_pattern``), so no choice exceeds it and the largest subnet is the trained adapter."""
        for group_name, members in self._rank_groups().items():
            group = self.space.group(group_name)
            first = group.choices[0]
            for name in members:
                if trained[name] == first:
                    continue
                ranks = sorted({trained[m] for m in members})
                split = (f" and put its modules of trained ranks {ranks} in separate groups"
                         if len(ranks) > 1 else "")
                raise SpaceError(
                    f"{where(self.space.source, f'groups.{group.name}.rank')}rank choices for {name} start at {first} "
                    f"but the adapter's trained rank is {trained[name]}; fix: make {trained[name]} the first rank choice "
                    f"of a group holding {name} (and no choice above it){split}"
                )

    def _rank_groups(self) -> dict[str, list[str]]:
        """Rank group name -> the modules it drives."""
        groups: dict[str, list[str]] = {}
        genes = {g.key: g for g in self.space.genes}
        for key, slots in self.binding.slots.items():
            for slot in slots:
                if slot.dim == "rank":
                    groups.setdefault(genes[key].group, []).append(slot.module)
        return groups

    def permute(self, permutation: ChannelPermutation, *, source: str = "permutation") -> None:
        """Reorder channels of the base and the adapters together (function unchanged); record it.

        Only plain and `ElasticLoRALinear` layers can be permuted: adapter modes with their own masks
        or grids (SparsePEFT, QA-SparsePEFT) are refused. Successive permutations compose.
        """
        if self.offloaded is not None:
            raise SpaceError(f"{source}: the model's layers are offloaded (--device-map), so their channels cannot be "
                             "reordered in place; fix: load the model on one device (drop --device-map)")
        linears = linear_modules(self.model)
        permutation.check(linears, source)
        saved = {name.rpartition(".")[0] for name in self.saved_parameters}
        for name in permutation.modules():
            if name in saved:
                raise SpaceError(f"{source}: {name} holds modules_to_save weights of the adapter, which would be saved "
                                 "reordered; fix: train with --no-reorder")
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
        path = write_adapter(path, modules, base_model=self.model_spec, use_rslora=use_rslora, dropout=dropout,
                             saved=self.saved_tensors())
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
                _digest_tensor(digest, tensor)
        for name, tensor in sorted(self.saved_tensors().items()):  # modules_to_save weights change scores too
            digest.update(f"saved:{name}".encode())
            _digest_tensor(digest, tensor)
        if self.permutation is not None:
            for (name, dim), index in sorted(self.permutation.indices.items()):
                digest.update(f"{name}|{dim}".encode() + index.to(torch.int64).numpy().tobytes())
        if self.blocks:
            digest.update(f"blocks:{list(self.binding.block_order)}".encode())
        qa_base = (self.adapter_metadata or {}).get("qa_base")
        if qa_base is not None:  # QA-SparsePEFT on W^p or on the de-quantised base scores differently
            digest.update(f"qa_base:{qa_base}".encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        n_adapters = sum(m.lora_A is not None for m in self.elastic.values())
        return (
            f"SuperNetwork(space={self.space.name!r}, mode={self.space.mode}, genes={len(self.space.genes)}, "
            f"elastic_modules={len(self.elastic)}, adapters={n_adapters}"
            f"{f', elastic_blocks={len(self.blocks)}' if self.blocks else ''}"
            f"{', reordered' if self.permutation is not None else ''})"
        )


def _digest_tensor(digest: Any, tensor: torch.Tensor) -> None:
    data = tensor.detach().to("cpu").contiguous()
    digest.update(str(tuple(data.shape)).encode() + str(data.dtype).encode())
    digest.update(data.view(torch.uint8).numpy().tobytes())


def _untie_config(model: nn.Module) -> None:
    """Record that input and output embeddings are separate now, so a saved copy loads them untied."""
    config = getattr(model, "config", None)
    for part in (config, getattr(config, "text_config", None) if config is not None else None):
        if part is not None and getattr(part, "tie_word_embeddings", False):
            part.tie_word_embeddings = False


def refuse_compressed(model: str | Path, adapter: str | Path | None) -> None:
    """Refuse what `SuperNetwork.from_pretrained` would silently build wrong: an adapter saved in a
    SparsePEFT / QA-SparsePEFT mode (it would run dense) or a quantized base (its INT grid would be lost)."""
    mode_file = Path(adapter) / ADAPTER_MODE_FILE if adapter is not None else None
    if mode_file is not None and mode_file.is_file():
        try:
            mode = json.loads(mode_file.read_text()).get("adapter_mode", "sparse")
        except (OSError, ValueError, AttributeError):
            mode = "sparse or qa"
        raise AdapterError(
            f"{mode_file}: a {mode} adapter (SparsePEFT / QA-SparsePEFT), whose masks and grids "
            f"SuperNetwork.from_pretrained does not build (it would run dense); fix: use {BUILDER_HINT}"
        )
    if (Path(model) / QUANT_FILE).is_file() or int_checkpoint_kind(model) is not None:
        source = Path(model) / QUANT_FILE if (Path(model) / QUANT_FILE).is_file() else Path(model) / "config.json"
        raise ModelError(
            f"{source}: an INT-quantized base, whose grid SuperNetwork.from_pretrained does not "
            f"attach (QA-SparsePEFT and merging need it); fix: use {BUILDER_HINT}"
        )


def adapter_space_file(adapter: str | Path | None) -> Path:
    """The space file saved beside a super-adapter; a one-line error with the fix when there is none."""
    if adapter is None:
        raise SpaceError("space: missing; fix: pass a space file (see search_spaces/), or an adapter saved by lorasearch")
    path = Path(adapter) / SPACE_FILE_NAME
    if not path.is_file():
        raise AdapterError(f"{adapter}: holds no {SPACE_FILE_NAME} (only adapters lorasearch trained carry one); "
                           "fix: pass the space file the adapter was trained with")
    return path


def _other_base(folder: AdapterFolder | None, model_spec: str | None, any_base: bool) -> str | None:
    """The base an adapter records when it is another model than ``model_spec`` (refused unless ``any_base``)."""
    recorded = folder.config.get("base_model_name_or_path") if folder is not None else None
    if not recorded or not model_spec or model_identity(recorded) == model_identity(model_spec):
        return None
    if not any_base:
        raise AdapterError(
            f"{folder.path / CONFIG_NAME}: base_model_name_or_path: the adapter was trained on {recorded!r}, but the "
            f"model is {model_spec!r}; fix: load the model it was trained on (--model {recorded}), or pass --force "
            "to use it on this one (its tensors must fit)"
        )
    return str(recorded)


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
