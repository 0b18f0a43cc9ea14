"""Every registered encoder (sketchsearch.encoders), built small: output shape, dtype and range for a tiny
batch, no NaN, trainable parameters, and the same output for the same seed (another seed: another output).

A newly registered encoder fails ``test_every_encoder_has_a_case`` until it gets a row in CASES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from sketchsearch.encoders import create_encoder, list_encoders


def _inputs(*shape: int) -> Tensor:
    """Fixed inputs, independent of the seed the model is built under."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(123))


def _points() -> tuple[Tensor, Tensor]:
    return _inputs(2, 5, 4) - 0.5, torch.tensor([5, 3])


def _gan_features(m: nn.Module) -> Tensor:
    return m.discriminator.features(_inputs(2, 1, 64, 64))  # type: ignore[union-attr, operator]


def _gan_samples(m: nn.Module) -> Tensor:
    return m.generator(_inputs(2, 2))  # type: ignore[union-attr, operator]


@dataclass
class Case:
    kwargs: dict[str, Any]
    run: Callable[[nn.Module], Tensor]  # the tiny batch through the module
    shape: tuple[int, ...]
    low: float = float("-inf")  # documented output range (inclusive)
    high: float = float("inf")
    extra: list[Callable[[nn.Module], None]] = field(default_factory=list)


def _first(out: Any) -> Tensor:
    assert isinstance(out, tuple) and len(out) == 2, "gdh_generator returns (output, mask or None)"
    return out[0]


CASES: dict[str, Case] = {
    "small_cnn": Case({"raster_size": 32, "width": 0.125, "out_dim": 8}, lambda m: m(_inputs(2, 1, 32, 32)), (2, 8)),
    "sketch_a_net": Case(
        {"raster_size": 48, "width": 0.125, "out_dim": 16},
        lambda m: m(_inputs(2, 1, 48, 48)),
        (2, 16),
        low=0.0,  # ends in ReLU (+ dropout, off in eval)
    ),
    "stroke_rnn": Case({"hidden": 4, "layers": 1}, lambda m: m(*_points()), (2, 8)),
    "hash_head": Case({"in_dim": 6, "nbits": 16}, lambda m: m(_inputs(2, 6)), (2, 16), low=0.0, high=1.0),
    "gdh_generator": Case(
        {"in_ch": 1, "out_ch": 3, "width": 2, "n_res": 1},
        lambda m: _first(m(_inputs(2, 1, 16, 16))),
        (2, 3, 16, 16),
        low=0.0,
        high=1.0,
    ),
    "gdh_discriminator": Case({"in_ch": 3, "width": 2}, lambda m: m(_inputs(2, 3, 16, 16)), (2, 1, 2, 2)),
    "gdh_hash_cnn": Case({"nbits": 16, "width": 2}, lambda m: m(_inputs(2, 3, 16, 16)), (2, 16), low=-1.0, high=1.0),
    "sketch-gan": Case({}, _gan_features, (2, 1024), low=0.0, extra=[lambda m: _check_samples(m)]),
    "thin-gan": Case({}, _gan_features, (2, 1024), low=0.0, extra=[lambda m: _check_samples(m)]),
    "efficientnet_lite0": Case({"pretrained": False}, lambda m: m(_inputs(1, 3, 32, 32)), (1, 1280)),
    "efficientnet_lite2": Case({"pretrained": False}, lambda m: m(_inputs(1, 3, 32, 32)), (1, 1280)),
    "lite_top_tuned": Case(
        {"out_dim": 8, "pretrained": False, "frozen_blocks": 14, "activation": "tanh"},
        lambda m: m(_inputs(2, 3, 32, 32)),
        (2, 8),
        low=-1.0,
        high=1.0,
    ),
}


def _check_samples(m: nn.Module) -> None:
    x = _gan_samples(m)
    assert x.shape == (2, 1, 64, 64) and bool(((x >= 0) & (x <= 1)).all())


def _build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_encoder(name, **CASES[name].kwargs).eval()


def test_every_encoder_has_a_case() -> None:
    assert sorted(CASES) == list_encoders()


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_shape_dtype_range_and_parameters(name: str) -> None:
    case = CASES[name]
    m = _build(name, 0)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) > 0
    with torch.no_grad():
        y = case.run(m)
        for check in case.extra:
            check(m)
    assert y.shape == case.shape and y.dtype == torch.float32
    assert bool(torch.isfinite(y).all())
    assert case.low <= y.min().item() and y.max().item() <= case.high
    assert y.std().item() > 0  # not a constant output


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_under_a_seed(name: str) -> None:
    run = CASES[name].run
    with torch.no_grad():
        a, b, other = run(_build(name, 0)), run(_build(name, 0)), run(_build(name, 1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, other, rtol=1e-3, atol=0)  # relative: untrained lite0 outputs ~1e-10


def test_unknown_kwargs_and_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="raster_size must be >= 16"):
        create_encoder("small_cnn", raster_size=8)
    with pytest.raises(ValueError, match="activation must be one of"):
        create_encoder("hash_head", in_dim=4, nbits=8, activation="relu")
    with pytest.raises(ValueError, match=r"expected points \(B, T, 4\)"):
        create_encoder("stroke_rnn", hidden=4, layers=1)(torch.zeros(2, 5, 3), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"expected a raster batch \(B, 1, H, W\)"):
        create_encoder("small_cnn", raster_size=32, width=0.125)(torch.zeros(2, 3, 32, 32))
