"""NLS training: Neural Low-rank adapter Search (Shears, SQFT) and its Mode B form (LoNAS).

The base model stays frozen; the adapters train while a sub-network config, drawn once per
optimizer step by a sampler (``lorasearch.train.sampling``), is active. A run folder holds::

    train_run.yaml     the run's settings (a different run refuses to write here) and the
                       fingerprints of its model, records and starting adapter (a resume checks them)
    train_log.jsonl    one flushed line per step: loss, lr, the sampled configs' genes and task losses
                       (with --distill also their KL to the max subnet)
    checkpoint/        adapters, optimizer, scheduler, RNG states and step (for --resume)
    .lorasearch.lock   held by the process that trains here (`lorasearch.io.FolderLock`)
    adapter/           the super-adapter in PEFT format (stock PEFT loads it), with the space
    space.yaml         the search space
    nls_stats.json     per-gene activation counts and mean training loss per sampled config
    heuristics.json    the midpoint, most-frequent and min-loss subnets

Every step's data, config draws and dropout come from generators seeded by (seed, step), so a
resumed run ends in exactly the state of an uninterrupted one, wherever it was killed: the log is
cut back to the checkpoint's step (to nothing before the first checkpoint), and a checkpoint
written whole but not yet renamed into place is used.

Over an fp16 base the loss is scaled (`loss_scaler`: `torch.amp.GradScaler`, its state in the
checkpoint); bf16 and fp32 need no scaling.

**In-place distillation** (``distill``, as in BigNAS and Once-for-All): on every micro-batch the max
subnet's response logits, detached, are the teacher of the step's other subnets, whose loss is
``(1 - w) * cross-entropy + w * KL(teacher || subnet)`` on the response tokens (``w`` =
``distill_weight``, temperature 1). The max subnet learns from the labels alone. With the sandwich
sampler the max subnet is already in the step and its logits are reused; with the random sampler
the teacher costs one extra forward pass without gradient per micro-batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from ..data import IGNORE_INDEX
from ..errors import LoraSearchError
from ..fingerprints import changed_fingerprint
from ..io import (
    LOCK_FILE,
    FolderLock,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    changed_setting,
    fsync_file,
    read_document,
    read_jsonl,
)
from ..models.preflight import PreflightReport, run_preflight
from ..network.supernet import SuperNetwork
from ..space import Config, SearchSpace
from .sampling import Sampler, make_sampler, resolve_sampler


@dataclass
class TrainArgs:
    """Settings of one NLS training run (what ``lorasearch train`` takes as options)."""

    steps: int = 250
    """Optimizer steps."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    schedule: str = "cosine"
    """cosine, linear or constant decay after warm-up."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay of the adapters."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    sampler: str = "auto"
    """auto (sandwich for Mode B spaces, random for Mode A), random (NLS: one subnet per step), sandwich
    (max + min + k random per step) or fixed (plain LoRA at the max config)."""
    sandwich_k: int = 2
    """Random subnets per sandwich step, besides the max and the min."""
    distill: bool = False
    """In-place distillation: the max subnet's output (no gradient) supervises every other subnet of the
    step with a KL term on the response tokens."""
    distill_weight: float = 0.5
    """A distilled subnet's loss: (1 - w) * task loss + w * KL(max || subnet)."""
    reorder: bool | None = None
    """Sort MLP channels and heads by importance on the training data before training, so every width keeps
    the most important ones (lorasearch train; default: on for Mode B spaces with dense adapters)."""
    reorder_samples: int = 32
    """Calibration windows of the training texts for --reorder and for the block importance of depth spaces."""
    reorder_seq_len: int = 128
    """Tokens per calibration window for --reorder and the block importance."""
    seed: int = 0
    """Seeds the adapters' initialisation, the data order, the sampled configs and dropout."""
    checkpoint_every: int = 50
    """Steps between checkpoints (and at the end)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more time)."""

    def check(self) -> None:
        """Raise a one-line error for settings that cannot work."""
        rules = [
            (self.steps >= 1, "steps", "use at least 1"),
            (self.batch_size >= 1, "batch_size", "use at least 1"),
            (self.grad_accum >= 1, "grad_accum", "use at least 1"),
            (self.lr > 0, "lr", "use a positive learning rate"),
            (self.schedule in ("cosine", "linear", "constant"), "schedule", "use cosine, linear or constant"),
            (self.warmup_steps >= 0, "warmup_steps", "use 0 or more"),
            (self.checkpoint_every >= 1, "checkpoint_every", "use at least 1"),
            (self.sandwich_k >= 0, "sandwich_k", "use 0 or more"),
            (0.0 <= self.distill_weight <= 1.0, "distill_weight", "use a weight in [0, 1]"),
            (not (self.distill and self.sampler == "fixed"), "distill",
             "the fixed sampler trains only the max subnet, the teacher itself; use --sampler sandwich or random"),
            (self.reorder_samples >= 1, "reorder_samples", "use at least 1"),
            (self.reorder_seq_len >= 1, "reorder_seq_len", "use at least 1"),
        ]
        for ok, name, fix in rules:
            if not ok:
                raise LoraSearchError(f"train: {name}={getattr(self, name)!r} is invalid; fix: {fix}")


@dataclass
class TrainResult:
    """Where a finished run put its outputs, and its last losses."""

    out_dir: Path
    adapter_dir: Path
    steps: int
    final_loss: float
    seconds: float


# ------------------------------------------------------------------------- batching
def collate(examples: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids``/``labels`` pairs into a batch with an attention mask."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.as_tensor(e["input_ids"])
        labels[row, :n] = torch.as_tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def micro_batch_indices(n_examples: int, batch_size: int, seed: int, index: int) -> list[int]:
    """Example indices of the ``index``-th micro-batch: epochs of seeded permutations, no state."""
    per_epoch = max(1, n_examples // batch_size)
    epoch, pos = divmod(index, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return order[pos * batch_size : (pos + 1) * batch_size].tolist()


def response_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The next-token logits at the response positions only (``[tokens, vocab]``) and their targets.

    The output projection runs on the response positions alone: prompts are most of the tokens,
    and the vocabulary projection is the most expensive layer of a small model.
    """
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    return model.get_output_embeddings()(hidden[:, :-1][keep]), targets[keep]


def response_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over the response tokens only."""
    logits, targets = response_logits(model, batch)
    return F.cross_entropy(logits.float(), targets)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` of the next-token distributions, averaged over the response tokens.

    Temperature 1; ``teacher`` is used as given (pass it detached: no gradient reaches the teacher).
    """
    return F.kl_div(F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1),
                    log_target=True, reduction="batchmean")


def lr_lambda(args: TrainArgs) -> Callable[[int], float]:
    """Warm-up then cosine, linear or constant decay, as a multiplier of ``args.lr``."""

    def factor(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / (args.warmup_steps + 1)
        if args.schedule == "constant":
            return 1.0
        progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        progress = min(progress, 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress)) if args.schedule == "cosine" else 1.0 - progress

    return factor


# ------------------------------------------------------------------------- statistics
class NLSStats:
    """Per-gene activation counts and the mean training loss of each sampled config."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.counts = {g.key: [0] * len(g.choices) for g in space.genes}
        self.losses: dict[tuple[int, ...], list[float]] = {}

    def record(self, config: Config, loss: float) -> None:
        genes = self.space.canonical(config)
        for gene, index in zip(self.space.genes, genes):
            self.counts[gene.key][index] += 1
        total, n = self.losses.get(genes, (0.0, 0))
        self.losses[genes] = [total + loss, n + 1]

    def most_frequent(self) -> Config:
        """The most often activated choice of every gene (ties go to the larger choice)."""
        return self.space.decode([int(np.argmax(self.counts[g.key])) for g in self.space.genes])

    def min_loss(self, k: int = 5) -> list[Config]:
        """The ``k`` sampled configs with the lowest mean training loss."""
        ranked = sorted(self.losses.items(), key=lambda item: item[1][0] / item[1][1])
        return [self.space.decode(genes) for genes, _ in ranked[:k]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "losses": [{"genes": list(g), "mean_loss": t / n, "n": n} for g, (t, n) in self.losses.items()],
        }

    def load_dict(self, data: Mapping[str, Any]) -> None:
        self.counts = {k: list(v) for k, v in data["counts"].items()}
        self.losses = {tuple(e["genes"]): [e["mean_loss"] * e["n"], e["n"]] for e in data["losses"]}


# ---------------------------------------------------------------------------- trainer
class NLSTrainer:
    """Train the adapters of ``net`` on tokenised ``examples`` into ``out_dir``.

    ``examples`` are dicts with ``input_ids`` and ``labels`` (prompt tokens masked with -100),
    as ``lorasearch.data.encode_for_training`` makes them. ``sampler`` replaces the one
    ``args.sampler`` names (recovery trains one fixed subnet, `lorasearch.train.recovery`), and
    ``teacher`` gives the distillation targets of a batch instead of the live max subnet (every
    config of the step then distils, the max included).
    """

    def __init__(
        self,
        net: SuperNetwork,
        examples: Sequence[Mapping[str, Sequence[int]]],
        args: TrainArgs,
        out_dir: str | Path,
        *,
        run_info: Mapping[str, Any] | None = None,
        sampler: Sampler | None = None,
        teacher: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
        loss_scaling: bool | None = None,
    ) -> None:
        name = sampler.name if sampler is not None else resolve_sampler(args.sampler, net.space)
        args = dataclasses.replace(args, sampler=name)  # run files record the real one
        args.check()
        if not examples:
            raise LoraSearchError("train: the dataset is empty; fix: give a task file with records")
        self.net, self.examples, self.args = net, examples, args
        self.out_dir = Path(out_dir)
        self.run_info = {"args": dataclasses.asdict(args), "space": net.space.to_dict(), **(run_info or {})}
        self.device = net.device  # where build_network put the model (--device, --dtype)
        self.sampler = sampler if sampler is not None else make_sampler(args.sampler, net.space, args.sandwich_k)
        self.teacher = teacher
        self._max_genes = net.space.canonical(net.space.max())
        self.stats = NLSStats(net.space)
        pad = getattr(net.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        self.step = 0
        self._resume_states: dict[str, Any] | None = None
        self.scaler = loss_scaler(net, loss_scaling)

    # -- folder and checkpoints
    def prepare(self, *, resume: bool = False, overwrite: bool = False, force: bool = False,
                fingerprints: Mapping[str, str | None] | None = None) -> None:
        """Claim the output folder: refuse another run's folder unless resuming or overwriting.

        The folder stays locked against other processes until `train` finishes. ``fingerprints``
        (model, records, starting adapter) are stored; a resume whose fingerprints differ is
        refused unless ``force``.
        """
        self._lock = FolderLock(self.out_dir).acquire()
        weakref.finalize(self, self._lock.release)  # an abandoned trainer lets go of the folder
        try:
            self._claim(resume, overwrite, force, fingerprints)
        except BaseException:
            self.release()
            raise

    def _claim(self, resume: bool, overwrite: bool, force: bool, fingerprints: Mapping[str, str | None] | None) -> None:
        info_file = self.out_dir / "train_run.yaml"
        if overwrite:
            _clear_folder(self.out_dir)
        current, prints = _plain(self.run_info), _plain(dict(fingerprints or {}))
        document = {**current, "fingerprints": prints} if prints else dict(current)
        if info_file.exists():
            previous = read_document(info_file, what="training run file")
            previous = dict(previous) if isinstance(previous, Mapping) else {}
            stored_prints, forced = previous.pop("fingerprints", None) or {}, list(previous.pop("forced", None) or [])
            diff = changed_setting(previous, current)
            if diff is not None:
                raise LoraSearchError(
                    f"{info_file}: the folder holds a different run ({diff}); fix: use --overwrite or another --out"
                )
            if not resume:
                raise LoraSearchError(f"{self.out_dir}: already holds this run; fix: pass --resume to continue or --overwrite")
            change = changed_fingerprint(stored_prints, prints)
            if change is not None and not force:
                raise LoraSearchError(
                    f"{info_file}: {change[1]}; fix: restore it, use --overwrite or another --out, "
                    "or pass --force to resume anyway (the adapter then trains on both)"
                )
            if change is not None:
                forced.append(f"{change[1]}; resumed with --force")
            if forced:
                document["forced"] = forced
        elif any(p.name != LOCK_FILE for p in self.out_dir.iterdir()):
            raise LoraSearchError(f"{self.out_dir}: exists and is not a training run; fix: choose an empty --out")
        atomic_write_text(info_file, yaml.safe_dump(document, sort_keys=False))
        if resume:
            self._resume()

    def _resume(self) -> None:
        """Continue from the newest whole checkpoint; steps logged after it will be trained again."""
        folder = self._usable_checkpoint()
        if folder is not None:
            self._load_checkpoint(folder)
        self._trim_log(self.step)

    def _usable_checkpoint(self) -> Path | None:
        """``checkpoint/``, or one a crash left under its temporary name (``state.json`` is written last)."""
        final = self.out_dir / "checkpoint"
        if (final / "state.json").is_file():
            return final
        for leftover in (self.out_dir / "checkpoint.tmp", self.out_dir / "checkpoint.old"):  # newest first
            if (leftover / "state.json").is_file():
                shutil.rmtree(final, ignore_errors=True)
                leftover.rename(final)
                return final
        return None

    def _trim_log(self, step: int) -> None:
        """Keep the log's records up to ``step`` (a torn last line is cut with a warning)."""
        log = self.out_dir / "train_log.jsonl"
        records = read_jsonl(log, repair=True)
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in kept))

    def _save_checkpoint(self, optimizer, scheduler) -> None:
        tmp, final = self.out_dir / "checkpoint.tmp", self.out_dir / "checkpoint"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {f"{n}.{part}": getattr(m, part).weight.detach().cpu().contiguous()
                   for n, m in self.net.elastic.items() if m.lora_A is not None for part in ("lora_A", "lora_B")}
        save_file(tensors, str(tmp / "adapters.safetensors"))
        states = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if self.scaler is not None:
            states["scaler"] = self.scaler.state_dict()
        torch.save(states, tmp / "optimizer.pt")
        for written in ("adapters.safetensors", "optimizer.pt"):
            fsync_file(tmp / written)
        state = {"step": self.step, "stats": self.stats.to_dict(), "rng": _rng_states()}
        atomic_write_text(tmp / "state.json", json.dumps(state))  # last: its presence marks the folder whole
        old = self.out_dir / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)  # left by a crash after the last rename
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, folder: Path | None = None) -> None:
        folder = folder or self.out_dir / "checkpoint"
        tensors = load_file(str(folder / "adapters.safetensors"))
        with torch.no_grad():
            for key, value in tensors.items():
                name, part = key.rsplit(".", 1)
                getattr(self.net.elastic[name], part).weight.copy_(value)
        state = json.loads((folder / "state.json").read_text())
        self.step = state["step"]
        self.stats.load_dict(state["stats"])
        _set_rng_states(state["rng"])
        self._resume_states = torch.load(folder / "optimizer.pt", weights_only=True)

    def release(self) -> None:
        """Let go of the output folder's lock (`train` does so when it finishes)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    # -- before the loop
    def preflight(self) -> PreflightReport:
        """One training micro-batch (the ``batch_size`` longest examples, the max subnet: the most memory
        a step will take) forward and backward on the training device, with the run's gradient
        checkpointing and loss scaling; the gradients are dropped and no random number is drawn from
        the run's streams, so training goes on exactly as without it. Raises `PreflightError`."""
        net, args = self.net, self.args
        longest = sorted(range(len(self.examples)), key=lambda i: -len(self.examples[i]["input_ids"]))[:args.batch_size]
        batch = {k: v.to(self.device) for k, v in collate([self.examples[i] for i in longest], self.pad_id).items()}
        width = batch["input_ids"].shape[1]

        def step() -> None:
            self._enter_training()
            try:
                with net.activated(net.space.max()):
                    logits, targets = response_logits(net.model, batch)
                    loss = F.cross_entropy(logits.float(), targets)
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            finally:
                for p in net.adapter_parameters():
                    p.grad = None
                net.model.eval()

        return run_preflight(f"one training step of {len(longest)} x {width} tokens (max subnet)", self.device, step,
                             "lower --batch-size or --max-length, add --gradient-checkpointing, or use another --device "
                             "or --dtype")

    def _enter_training(self) -> None:
        """Adapters trainable, train mode, gradient checkpointing as asked."""
        self.net.train_adapters()
        self.net.model.train()
        if self.args.gradient_checkpointing:
            self.net.model.gradient_checkpointing_enable()
            self.net.model.enable_input_require_grads()

    # -- the loop
    def train(self, progress: bool = True) -> TrainResult:
        """Run (or finish) the training; return where the super-adapter was written."""
        net, args = self.net, self.args
        self._enter_training()
        params = net.adapter_parameters()
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args))
        if self._resume_states:
            optimizer.load_state_dict(self._resume_states["optimizer"])
            scheduler.load_state_dict(self._resume_states["scheduler"])
            if self.scaler is not None and self._resume_states.get("scaler"):
                self.scaler.load_state_dict(self._resume_states["scaler"])
        start, loss = time.perf_counter(), float("nan")
        with _progress(progress, args.steps, self.step) as bar:
            while self.step < args.steps:
                loss = self._one_step(optimizer, scheduler)
                bar.advance(loss, scheduler.get_last_lr()[0])
                if self.step % args.checkpoint_every == 0 or self.step == args.steps:
                    self._save_checkpoint(optimizer, scheduler)
        net.model.eval()
        net.reset()
        return self._finish(loss, time.perf_counter() - start)

    def _one_step(self, optimizer, scheduler) -> float:
        """One optimizer step: every micro-batch through every config of the step, gradients averaged.

        With ``distill``, the max config runs first on each micro-batch and its detached logits are the
        teacher of the other configs (an extra forward without gradient when the sampler did not
        draw the max); the max config itself learns from the task loss alone.
        """
        args, step = self.args, self.step
        torch.manual_seed(args.seed * 1_000_003 + step)  # dropout of this step
        configs = self.sampler.step_configs(np.random.default_rng([args.seed, step]))
        is_max = [self.teacher is None and self.net.space.canonical(c) == self._max_genes for c in configs]
        order = sorted(range(len(configs)), key=lambda n: not is_max[n]) if args.distill else range(len(configs))
        losses, kls = [0.0] * len(configs), [0.0] * len(configs)
        for micro in range(args.grad_accum):
            idx = micro_batch_indices(len(self.examples), args.batch_size, args.seed, step * args.grad_accum + micro)
            batch = {k: v.to(self.device) for k, v in collate([self.examples[i] for i in idx], self.pad_id).items()}
            teacher = None
            for n in order:
                if args.distill and teacher is None and not is_max[n]:
                    teacher = self._teacher_logits(batch)
                self.net.activate(configs[n])
                logits, targets = response_logits(self.net.model, batch)
                task = F.cross_entropy(logits.float(), targets) / args.grad_accum
                loss = task
                if args.distill and is_max[n]:
                    teacher = logits.detach()
                elif args.distill:
                    kl = distillation_loss(logits, teacher) / args.grad_accum
                    loss = (1 - args.distill_weight) * task + args.distill_weight * kl
                    kls[n] += kl.item()
                share = loss / len(configs)
                (self.scaler.scale(share) if self.scaler is not None else share).backward()
                losses[n] += task.item()
        for config, total in zip(configs, losses):
            self.stats.record(config, total)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)  # clip the true gradients
        if args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.net.adapter_parameters(), args.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped when a gradient overflowed; the scale then halves
            self.scaler.update()
        else:
            optimizer.step()
        with warnings.catch_warnings():  # the schedule counts steps, taken or skipped by the scaler
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        mean = float(np.mean(losses))
        genes = [list(self.net.space.canonical(c)) for c in configs]
        record = {"step": self.step, "loss": mean, "lr": lr, "losses": losses, "genes": genes}
        if args.distill:
            record["kl"] = kls  # per config; 0 for the max (the teacher)
        append_jsonl(self.out_dir / "train_log.jsonl", record)
        return mean

    @torch.no_grad()
    def _teacher_logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The max config's response logits on ``batch``, without gradient (the config is restored by the caller)."""
        if self.teacher is not None:
            return self.teacher(batch)
        self.net.activate(self.net.space.max())
        return response_logits(self.net.model, batch)[0]

    def _finish(self, loss: float, seconds: float) -> TrainResult:
        space = self.net.space
        adapter_dir = self.net.save_adapter(self.out_dir / "adapter")
        space.save(self.out_dir / "space.yaml")
        atomic_write_json(self.out_dir / "nls_stats.json", self.stats.to_dict())
        heuristics = {"midpoint": space.heuristic(), "most_frequent": self.stats.most_frequent(),
                      "min_loss": self.stats.min_loss(5)}
        atomic_write_json(self.out_dir / "heuristics.json", heuristics)
        self.release()
        return TrainResult(self.out_dir, adapter_dir, self.step, loss, seconds)


# ---------------------------------------------------------------------------- helpers
def loss_scaler(net: SuperNetwork, enabled: bool | None = None) -> torch.amp.GradScaler | None:
    """Loss scaling for training over an fp16 base (``enabled=None``: exactly then), else None.

    fp16 has five exponent bits: without scaling, the small gradients that flow back through an
    fp16 base underflow to zero. The loss is scaled up before the backward pass, the gradients are
    unscaled before clipping, and a step whose gradients overflowed is skipped while the scale halves
    (`torch.amp.GradScaler`). bf16 has fp32's exponent range and needs none. The adapters must be
    fp32 (the default): a scaler cannot unscale fp16 gradients.
    """
    dtype = base_dtype(net)
    if not (dtype == torch.float16 if enabled is None else enabled):
        return None
    if any(p.dtype == torch.float16 for p in net.adapter_parameters()):
        raise LoraSearchError("--dtype fp16 with --adapter-dtype base: fp16 adapters cannot be trained with loss "
                              "scaling (their gradients cannot be unscaled); fix: use --adapter-dtype fp32 (the "
                              "default) or --dtype bf16")
    return torch.amp.GradScaler(net.device.type)


def base_dtype(net: SuperNetwork) -> torch.dtype:
    """The dtype the base computes in (its wrapped layers', else its first parameter's)."""
    for module in net.elastic.values():
        return module.base_layer.weight.dtype
    return next(net.model.parameters()).dtype


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def _set_rng_states(states: Mapping[str, Any]) -> None:
    import ast

    random.setstate(ast.literal_eval(states["python"]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))


def _clear_folder(folder: Path) -> None:
    """Delete what ``folder`` holds, except its lock file (held by this process)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _plain(obj: Any) -> Any:
    """Round-trip through JSON so comparisons see what YAML stores (tuples as lists, ...)."""
    return json.loads(json.dumps(obj, default=str))


class _Bar:
    """Advances a rich progress bar; without a terminal (``lines``), writes a line to stderr at most
    every ``LINE_EVERY`` seconds instead, so a job's log shows the run moving."""

    LINE_EVERY = 30.0

    def __init__(self, progress, task, lines: tuple[int, int] | None = None) -> None:
        self.progress, self.task, self.lines = progress, task, lines
        self.start, self.count = time.perf_counter(), 0
        self.last = self.start

    def advance(self, loss: float, lr: float) -> None:
        self.count += 1
        now = time.perf_counter()
        speed = self.count / max(now - self.start, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=f"{loss:.4f}", lr=f"{lr:.2e}", speed=f"{speed:.2f}")
        elif self.lines is not None:
            total, done = self.lines
            if now - self.last >= self.LINE_EVERY or done + self.count >= total:
                self.last = now
                print(f"train: step {done + self.count} of {total}, loss {loss:.4f}, lr {lr:.2e}, "
                      f"{1 / speed:.2f} s per step", file=sys.stderr, flush=True)


class _progress:
    """A rich progress bar with loss, learning rate and steps per second (or nothing)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self) -> _Bar:
        self.progress = None
        if not self.enabled:
            return _Bar(None, None)
        if not sys.stderr.isatty():
            return _Bar(None, None, lines=(self.total, self.done))
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} lr {task.fields[lr]} {task.fields[speed]} steps/s"),
            TimeRemainingColumn(),
        )
        self.progress.start()
        task = self.progress.add_task("train", total=self.total, completed=self.done, loss="-", lr="-", speed="-")
        return _Bar(self.progress, task)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
