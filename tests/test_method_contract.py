"""One contract for every registered method: build, encode, binarise, one training step (where it trains),
save, load, identical encodings. Parametrised over ``list_methods()``, so a new method is covered on arrival."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch

from sketchsearch.data.batching import make_batch, make_photo_batch
from sketchsearch.data.synthetic import default_collection
from sketchsearch.methods.base import METHODS, create_method, list_methods
from sketchsearch.model import load_model, save_model

#: small, fast kwargs per method (every other kwarg keeps the paper default)
SMALL: dict[str, dict[str, Any]] = {
    "doodle2search": {"pretrained": False, "semantic_weight": 0.0, "input_size": 64},
    "gdh": {"nbits": 16},
    "sketchmate": {"nbits": 16, "n_classes": 4},
    "dsml": {"embedding_dim": 16},
    "itq": {"nbits": 8},
    "lsh": {"nbits": 8},
    "pca": {"dim": 4},
    "pretrained": {"pretrained": False, "resolution": 64},
    "siamese": {"pretrained": False, "image_size": 32, "dim": 8},
    "universal": {"pretrained": False, "input_size": 32, "nbits": 16, "feature_dim": 16, "projection_dim": 8},
}


def _sketches(n: int = 12) -> tuple[list[Any], torch.Tensor]:
    items = default_collection(seed=0).items[:n]
    return [it.sketch for it in items], torch.tensor([i % 4 for i in range(n)])


def _batch(method: Any, sketches: list[Any], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    b = make_batch(sketches, method.preprocessing, labels.tolist())
    if method.name in ("doodle2search", "gdh", "siamese"):  # cross-modal: photos (random RGB) beside the sketches
        rgb = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(len(sketches))]
        p = make_photo_batch(rgb, method.preprocessing.photo_size, labels.tolist())
        b["photo"] = p["photo"]
        b["negative"] = p["photo"].roll(1, 0)  # Doodle to Search's triplets: a photo of another class
        b["negative_label"] = labels.roll(1, 0)
        b["instance"] = torch.arange(len(sketches))  # fine-grained pairs: sketch i was drawn from photo i
        b["own"] = torch.ones(len(sketches), dtype=torch.bool)
    if method.name == "universal":  # trains on two views of each drawing: the second here a mirror image
        b["raster2"] = b["raster"].flip(-1)
    return b


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    method = create_method(name, **SMALL.get(name, {}))  # every method builds from the base install
    # hyper-parameters come from the constructor's own signature: every recorded key is a parameter of it
    factory = METHODS.get(name)
    params = set(inspect.signature(type(method).__init__).parameters) | set(inspect.signature(factory).parameters)
    assert set(method.hparams) - set(type(method).variant_kwargs) <= params
    for k, v in SMALL.get(name, {}).items():
        assert method.hparams[k] == v
    sketches, labels = _sketches()
    if method.closed_form:
        method.fit(sketches)
    method.eval()
    batch = _batch(method, sketches, labels)
    with torch.no_grad():
        z = method.encode_sketch(batch).float()
    assert z.shape == (len(sketches), method.code_size) and torch.isfinite(z).all()
    if method.output == "binary":
        codes = method.binarize(z)
        assert codes.dtype == np.uint8 and codes.shape == (len(sketches), method.code_size // 8)
    if not method.closed_form and name not in ("gan", "gdh"):  # GAN and GDH: own-step tests in their files
        method.train()
        opts = method.configure_optimizers(1e-3)
        before = {k: v.clone() for k, v in method.state_dict().items()}
        phase = {"sketchmate": "pretrain_fused"}.get(name, "all")
        stats = method.step(lambda b, **kw: method(b, phase=kw.pop("phase", phase), **kw), batch, opts)
        assert np.isfinite(stats["loss"])
        assert any(not torch.equal(before[k], v) for k, v in method.state_dict().items()), "a step changed nothing"
        method.eval()
        with torch.no_grad():
            z = method.encode_sketch(batch).float()
    save_model(method, tmp_path / name)
    loaded, card = load_model(tmp_path / name)
    assert card.kwargs == method.hparams and type(loaded) is type(method)
    with torch.no_grad():
        z2 = loaded.eval().encode_sketch(batch).float()
    assert torch.equal(z, z2), "save + load changed the encodings"
