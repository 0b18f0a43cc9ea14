"""The one training loop. It never knows which paper it runs: it calls ``method.step`` on batches.

* device: CUDA when present (``cuda:LOCAL_RANK`` under torchrun), else CPU; AMP (bf16 autocast) on CUDA only
* DDP: when launched by ``torchrun`` (``WORLD_SIZE`` > 1) the method is wrapped in DistributedDataParallel
  (gloo on CPU, nccl on CUDA) and the data sharded with DistributedSampler; rank 0 logs and saves
* checkpoints (``out/checkpoint.pt``: weights + optimiser states + iteration, loaded with
  ``weights_only=True``) every ``checkpoint_every`` iterations; ``resume=True`` continues from one
* a rich progress bar on stderr, a JSON-lines log of every logged step (``out/log.jsonl``) and its plot
  (``out/loss.png``: every loss term against the iteration), and an optional periodic evaluation callback
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from .data.batching import Batch, collate
from .methods.base import Method
from .progress import phase

__all__ = ["TrainConfig", "TrainResult", "pick_device", "plot_losses", "seed_everything", "train"]


@dataclass
class TrainConfig:
    iterations: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    device: str | None = None  # None: cuda if present, else cpu
    amp: bool = True  # bf16 autocast, CUDA only
    out: str | None = None  # folder for log.jsonl / checkpoint.pt
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: never
    resume: bool = False
    num_workers: int = 0
    progress: bool = True
    phase: str = "all"  # passed to the method (multi-stage methods train one stage per call)


@dataclass
class TrainResult:
    iterations: int
    seconds: float
    history: list[dict[str, float]]
    evaluations: list[dict[str, Any]]
    device: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _infinite(loader: DataLoader[Any], sampler: Any) -> Iterator[Batch]:
    epoch = 0
    while True:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def train(
    method: Method,
    data: Dataset[Any],
    cfg: TrainConfig,
    evaluate: Callable[[Method], dict[str, Any]] | None = None,
    collate_fn: Callable[[list[Any]], Batch] = collate,
    sampler: Sampler[Any] | None = None,
) -> TrainResult:
    """Train ``method`` on ``data`` for ``cfg.iterations`` steps; returns the loss history.

    ``sampler``: what to draw from ``data`` (e.g. :class:`~sketchsearch.data.sampling.ClassBalancedSampler`);
    default a seeded random permutation per epoch. Under DDP a sampler with ``num_replicas``/``rank`` is told
    this process's share; the loop calls ``set_epoch`` on any sampler that has it, so draws differ by epoch."""
    seed_everything(cfg.seed)
    ddp = _distributed()
    if ddp and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if ddp else 0
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    method.to(device).train()
    model: Any = method
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizers = method.configure_optimizers(cfg.lr)

    g = torch.Generator().manual_seed(cfg.seed)
    if sampler is None:
        sampler = DistributedSampler(data, seed=cfg.seed, drop_last=True) if ddp else RandomSampler(data, generator=g)
    elif ddp and hasattr(sampler, "shard"):
        sampler.shard(dist.get_world_size(), rank)
    loader = DataLoader(
        data,
        batch_size=min(cfg.batch_size, len(data)),
        sampler=sampler,
        drop_last=len(data) >= cfg.batch_size,
        collate_fn=collate_fn,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )

    out = Path(cfg.out) if cfg.out else None
    start_it = 0
    ckpt_path = out / "checkpoint.pt" if out else None
    if cfg.resume and ckpt_path and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        method.load_state_dict(ck["model"])
        for k, opt in optimizers.items():
            opt.load_state_dict(ck["optimizers"][k])
        start_it = int(ck["iteration"])
    if out and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    def save_checkpoint(it: int) -> None:
        if not (ckpt_path and rank == 0):
            return
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "model": method.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "iteration": it,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)

    history: list[dict[str, float]] = []
    evaluations: list[dict[str, Any]] = []
    # A fresh run starts a fresh log; a resumed run appends to the one it continues.
    # (Closed after the loop; a context manager would indent the whole loop for an optional file.)
    log = open(out / "log.jsonl", "a" if start_it else "w") if out and rank == 0 else None  # noqa: SIM115
    batches = _infinite(loader, sampler)
    use_amp = cfg.amp and device.type == "cuda"
    t0 = time.perf_counter()
    with (
        phase(f"{method.name} {cfg.phase}", live=False),
        Progress(
            TextColumn(f"[bold]{method.name}[/] {cfg.phase}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not cfg.progress or rank != 0,
            transient=False,
        ) as bar,
    ):
        task = bar.add_task("train", total=cfg.iterations, completed=start_it, loss="")
        for it in range(start_it, cfg.iterations):
            batch = _to(next(batches), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                stats = method.step(lambda b, **kw: model(b, phase=kw.pop("phase", cfg.phase), **kw), batch, optimizers)
            stats["iteration"] = it + 1
            if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.iterations:
                history.append(stats)
                if log:
                    log.write(json.dumps(stats) + "\n")
                    log.flush()
                shown = {k: v for k, v in stats.items() if k.endswith("loss")}
                bar.update(task, loss=" ".join(f"{k}={v:.3f}" for k, v in list(shown.items())[:4]))
            bar.update(task, advance=1)
            if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
                save_checkpoint(it + 1)
            if evaluate and cfg.eval_every and (it + 1) % cfg.eval_every == 0 and rank == 0:
                method.eval()
                with torch.no_grad():
                    ev = {"iteration": it + 1, **evaluate(method)}
                evaluations.append(ev)
                if log:
                    log.write(json.dumps({"eval": ev}, default=float) + "\n")
                method.train()
    seconds = time.perf_counter() - t0
    save_checkpoint(cfg.iterations)
    if log:
        log.close()
        plot_losses(log.name, title=f"{method.name} {cfg.phase}")
    method.eval()
    if ddp:
        dist.barrier()
    return TrainResult(cfg.iterations, seconds, history, evaluations, str(device))


def plot_losses(log_path: str | Path, title: str = "") -> Path | None:
    """``loss.png`` beside a training log (``log.jsonl``): one panel per loss term (``loss`` and every
    ``*_loss``) against the iteration. Returns its path, or None when the log holds no loss."""
    from .eval.plots import loss_curves

    log_path = Path(log_path)
    records = [r for r in map(json.loads, log_path.read_text().splitlines()) if "eval" not in r]
    if not any(k == "loss" or k.endswith("_loss") for r in records for k in r):
        return None
    return loss_curves(records, log_path.with_name("loss.png"), title=title)
