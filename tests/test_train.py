"""The training loop on a toy Method (a linear classifier on 4 x 4 rasters): it learns, checkpoints and
resumes at the right iteration, calls the evaluation callback on schedule, passes phases to methods with
several optimisers, and is deterministic for a seed."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sketchsearch.data.batching import RasterDataset
from sketchsearch.methods.base import Batch, Method, Preprocessing, total_loss
from sketchsearch.train import TrainConfig, train


class ToyLinear(Method):
    """Flattened 4 x 4 raster -> 2 logits; cross-entropy. Records the phases it was called with."""

    name = "toy-linear"
    output = "float"

    def __init__(self, preprocessing: Preprocessing | None = None, init_seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__(preprocessing or Preprocessing(raster_size=4))
        self.dropout = nn.Dropout(dropout)  # the only randomness inside a step: seeded by train()
        g = torch.Generator().manual_seed(init_seed)
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, 16, generator=g) * 0.01)
            self.fc.bias.zero_()
        self.phases: list[str] = []

    @property
    def code_size(self) -> int:
        return 2

    def logits(self, batch: Batch) -> Tensor:
        return self.fc(self.dropout(batch["raster"].flatten(1)))

    def training_losses(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        self.phases.append(phase)
        logits = self.logits(batch)
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        return {"ce_loss": nn.functional.cross_entropy(logits, batch["label"]), "accuracy": acc}

    def encode_sketch(self, batch: Batch) -> Tensor:
        return nn.functional.normalize(self.logits(batch), dim=1)


class TwoOptimisers(ToyLinear):
    """Two heads trained by two optimisers in alternating phases (the GAN pattern)."""

    name = "toy-two-opt"

    def __init__(self, preprocessing: Preprocessing | None = None, init_seed: int = 0) -> None:
        super().__init__(preprocessing, init_seed)
        self.other = nn.Linear(16, 2)

    def training_losses(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        self.phases.append(phase)
        head = self.fc if phase == "a" else self.other
        return {f"{phase}_loss": nn.functional.cross_entropy(head(batch["raster"].flatten(1)), batch["label"])}

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {
            "a": torch.optim.SGD(self.fc.parameters(), lr=lr),
            "b": torch.optim.SGD(self.other.parameters(), lr=lr),
        }

    def step(
        self,
        model: Callable[..., dict[str, Tensor]],
        batch: Batch,
        optimizers: Mapping[str, torch.optim.Optimizer],
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        for phase in ("a", "b"):
            losses = model(batch, phase=phase)
            optimizers[phase].zero_grad(set_to_none=True)
            total_loss(losses).backward()
            optimizers[phase].step()
            out.update({k: float(v.detach()) for k, v in losses.items()})
        return out


def toy_data(n: int = 64, seed: int = 0) -> RasterDataset:
    """Class 0 has ink in the top-left pixel, class 1 in the bottom-right; noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = 0.3 * rng.random((n, 4, 4)).astype(np.float32)
    x[labels == 0, 0, 0] = 1.0
    x[labels == 1, 3, 3] = 1.0
    return RasterDataset(x, labels)


def cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "iterations": 10,
        "batch_size": 16,
        "lr": 0.05,
        "seed": 0,
        "progress": False,
        "log_every": 1,
        "device": "cpu",
    }
    base.update(kw)
    return TrainConfig(**base)


def read_log(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_hparams_are_the_outermost_constructors_arguments() -> None:
    """Method records its hyper-parameters from the constructor signature (defaults applied); a subclass's
    own constructor is what is recorded, not the parent's it calls."""
    assert ToyLinear(init_seed=3).hparams == {"init_seed": 3, "dropout": 0.0}
    assert TwoOptimisers(init_seed=1).hparams == {"init_seed": 1}


def test_toy_method_learns_a_separable_problem() -> None:
    data = toy_data()
    m = ToyLinear()
    res = train(m, data, cfg(iterations=60))
    assert res.iterations == 60 and res.device == "cpu" and res.seconds > 0
    losses = [h["ce_loss"] for h in res.history]
    assert [h["iteration"] for h in res.history] == list(range(1, 61))
    assert losses[-1] < 0.3 * losses[0]
    assert all(h["loss"] == pytest.approx(h["ce_loss"]) for h in res.history)  # only *_loss terms are summed
    assert not m.training  # left in eval mode
    x = torch.from_numpy(data.rasters)[:, None]
    assert (m.logits({"raster": x}).argmax(1).numpy() == data.labels).all()


def test_log_every_keeps_the_last_iteration() -> None:
    res = train(ToyLinear(), toy_data(), cfg(iterations=7, log_every=3))
    assert [h["iteration"] for h in res.history] == [3, 6, 7]


def test_checkpoint_and_resume(tmp_path: Path) -> None:
    data = toy_data()
    first = ToyLinear()
    train(first, data, cfg(iterations=10, checkpoint_every=5, out=str(tmp_path)))
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 10
    assert json.loads((tmp_path / "config.json").read_text())["iterations"] == 10

    # resuming with nothing left to do restores the saved weights into a fresh method
    fresh = ToyLinear(init_seed=99)
    res = train(fresh, data, cfg(iterations=10, resume=True, out=str(tmp_path)))
    assert res.history == []
    for k, v in first.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k

    # resuming to 16 runs exactly iterations 11..16, and the optimiser state continues
    more = ToyLinear(init_seed=99)
    res = train(more, data, cfg(iterations=16, resume=True, out=str(tmp_path)))
    assert [h["iteration"] for h in res.history] == list(range(11, 17))
    assert len(more.phases) == 6
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 16
    adam_steps = {int(s["step"]) for s in ck["optimizers"]["all"]["state"].values()}
    assert adam_steps == {16}
    log = read_log(tmp_path)
    assert [r["iteration"] for r in log] == list(range(1, 17))
    assert all("ce_loss" in r and "loss" in r for r in log)


def test_a_fresh_run_restarts_the_log(tmp_path: Path) -> None:
    train(ToyLinear(), toy_data(), cfg(iterations=5, out=str(tmp_path)))
    train(ToyLinear(), toy_data(), cfg(iterations=3, out=str(tmp_path)))  # not resumed: a new run
    assert [r["iteration"] for r in read_log(tmp_path)] == [1, 2, 3]


def test_checkpoint_every_writes_intermediate_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[int] = []
    real_save = torch.save

    def spy(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        saved.append(int(obj["iteration"]))
        real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", spy)
    train(ToyLinear(), toy_data(), cfg(iterations=10, checkpoint_every=4, out=str(tmp_path)))
    assert saved == [4, 8, 10]
    assert not list(tmp_path.glob("*.tmp"))


def test_no_out_folder_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    train(ToyLinear(), toy_data(), cfg(iterations=3, checkpoint_every=1))
    assert list(tmp_path.iterdir()) == []


def test_eval_callback_every_eval_every(tmp_path: Path) -> None:
    calls: list[tuple[bool, bool]] = []

    def evaluate(m: Method) -> dict[str, Any]:
        calls.append((m.training, torch.is_grad_enabled()))
        return {"n_phases": len(m.phases)}  # type: ignore[attr-defined]

    m = ToyLinear()
    res = train(m, toy_data(), cfg(iterations=10, eval_every=3, out=str(tmp_path)), evaluate=evaluate)
    assert [e["iteration"] for e in res.evaluations] == [3, 6, 9]
    assert [e["n_phases"] for e in res.evaluations] == [3, 6, 9]  # evaluated after that many steps
    assert calls == [(False, False)] * 3  # eval mode, no gradients
    assert len(m.phases) == 10  # training resumed (in train mode) after each evaluation
    evals = [r["eval"] for r in read_log(tmp_path) if "eval" in r]
    assert [e["iteration"] for e in evals] == [3, 6, 9]


def test_phase_reaches_training_losses() -> None:
    m = ToyLinear()
    train(m, toy_data(), cfg(iterations=3, phase="stage2"))
    assert m.phases == ["stage2"] * 3


def test_step_override_with_two_optimisers() -> None:
    m = TwoOptimisers()
    before_a, before_b = m.fc.weight.detach().clone(), m.other.weight.detach().clone()
    res = train(m, toy_data(), cfg(iterations=4, lr=0.5))
    assert m.phases == ["a", "b"] * 4
    assert set(res.history[-1]) == {"a_loss", "b_loss", "iteration"}
    assert not torch.equal(m.fc.weight, before_a) and not torch.equal(m.other.weight, before_b)
    assert res.history[-1]["a_loss"] < res.history[0]["a_loss"]


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    data = toy_data()
    seen: list[int] = []

    def run(seed: int) -> dict[str, Tensor]:
        m = ToyLinear(dropout=0.5)
        torch.manual_seed(1000 + len(seen))  # train() must reseed, whatever the global state was
        seen.append(seed)
        train(m, data, cfg(iterations=8, seed=seed, batch_size=8))
        return m.state_dict()

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_batch_size_larger_than_data_uses_all_data() -> None:
    m = ToyLinear()
    seen: list[int] = []
    orig = m.training_losses

    def spy(batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        seen.append(len(batch["label"]))
        return orig(batch, phase)

    m.training_losses = spy  # type: ignore[method-assign]
    train(m, toy_data(n=6), cfg(iterations=2, batch_size=16))
    assert seen == [6, 6]
