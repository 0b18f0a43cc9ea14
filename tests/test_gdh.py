"""GDH: network shapes, the attention mask, the closed-form D-step and B-steps against numpy, the quantization
and unification losses by hand, one alternating step (Algorithm 1) changing generators and hash network,
the Retriever's sketch -> photo path on binary codes, save/load, the training pairs keyed by (photo, draw),
a short run of the one training loop, the ``heldout_instance`` split, and the recipe through ``run_recipe``
(category and instance metrics from ``eval.evaluate``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sketchsearch.data.sampling import ClassBalancedSampler
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split, make_split
from sketchsearch.encoders import create_encoder
from sketchsearch.encoders.domain_migration import AttentionMask
from sketchsearch.losses.hashing import (
    discrete_code_step,
    quantization_loss,
    semantic_projection_step,
    unification_loss,
)
from sketchsearch.methods import create_method
from sketchsearch.methods.gdh import GDH
from sketchsearch.model import load_model, save_model
from sketchsearch.recipes import run_recipe
from sketchsearch.recipes.gdh import PairDataset, collate_pairs
from sketchsearch.retrieval import Retriever
from sketchsearch.train import TrainConfig, train

S = 16  # synthetic image size


#: GDH's networks at a size a test can train in a second
TINY = {"image_size": S, "nbits": 16, "gen_width": 4, "gs_res": 1, "gi_res": 1, "disc_width": 4, "hash_width": 4}


def tiny(**kw) -> GDH:
    torch.manual_seed(0)
    return create_method("gdh", **{**TINY, **kw})  # type: ignore[return-value]


def pairs(n: int = 16, classes: int = 4, seed: int = 0) -> PairDataset:
    rng = np.random.default_rng(seed)
    rasters = (rng.random((n, 1, S, S)) > 0.85).astype(np.float32)
    photos = rng.random((n, 3, S, S)).astype(np.float32)
    labels = np.arange(n) % classes
    return PairDataset(rasters, labels, photos, labels, np.arange(n), seed=seed)


def batch(n_pairs: int = 16) -> dict[str, torch.Tensor]:
    """The first ``n_pairs`` pairs the recipe's sampler draws: two pairs of a class in a row."""
    ds = pairs()
    keys = list(ClassBalancedSampler(ds.pl, per_class=2))[:n_pairs]
    return collate_pairs([ds[k] for k in keys])


def test_network_shapes() -> None:
    x1, x3 = torch.rand(2, 1, S, S), torch.rand(2, 3, S, S)
    g_i = create_encoder("gdh_generator", in_ch=1, out_ch=3, width=4, n_res=1)
    g_s = create_encoder("gdh_generator", in_ch=3, out_ch=1, width=4, n_res=1, attention=True)
    img, none = g_i(x1)
    sk, mask = g_s(x3)
    assert img.shape == (2, 3, S, S) and none is None and sk.shape == (2, 1, S, S)
    assert float(img.detach().min()) >= 0 and float(img.detach().max()) <= 1
    assert mask.shape == (2, 1, S, S)
    d = create_encoder("gdh_discriminator", in_ch=3, width=4)
    assert d(x3).shape == (2, 1, S // 8, S // 8)
    h = create_encoder("gdh_hash_cnn", nbits=32, width=4)(x3)
    assert h.shape == (2, 32) and float(h.detach().abs().max()) < 1


def test_attention_mask_is_binary_thresholded_softmax_with_straight_through_gradient() -> None:
    att = AttentionMask(3, threshold=1.0)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    m = att(x)
    assert m.shape == (2, 1, 4, 4) and set(m.detach().unique().tolist()) <= {0.0, 1.0}
    a = torch.softmax(att.conv(x).reshape(2, 16), dim=1) * 16
    assert torch.equal(m.detach().reshape(2, 16), (a >= 1.0).float())  # kept: above-uniform weight
    assert bool((m.detach().reshape(2, -1).sum(1) >= 1).all())  # the largest weight is always >= uniform
    m.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    # how it combines: G_S multiplies its ResBlock features by it; real images are multiplied by its upsampling
    method = tiny().eval()
    photo = torch.rand(3, 3, S, S)
    _, mask = method.mask_of(photo)
    assert mask.shape == (3, 1, S, S) and set(mask.unique().tolist()) <= {0.0, 1.0}
    expect = method.hash_net(photo * mask)
    assert torch.allclose(method.encode_photo({"photo": photo}), expect)


def test_d_step_matches_closed_form_numpy() -> None:
    rng = np.random.default_rng(1)
    c, K = 3, 5
    yi, ys = np.array([0, 1, 2, 2, 0, 1]), np.array([1, 0, 2, 2])
    bi = np.where(rng.random((6, K)) > 0.5, 1.0, -1.0)
    bs = np.where(rng.random((4, K)) > 0.5, 1.0, -1.0)
    Yi, Ys = np.eye(c)[yi], np.eye(c)[ys]
    expect = np.linalg.inv(Yi.T @ Yi + Ys.T @ Ys + np.eye(c)) @ (Yi.T @ bi + Ys.T @ bs)  # Eq. (9)
    got = semantic_projection_step([torch.tensor(bi), torch.tensor(bs)], [torch.tensor(yi), torch.tensor(ys)], c)
    assert np.allclose(got.numpy(), expect, atol=1e-6)
    # one-hot labels: the class sums of the codes over (count + 1), by hand for class 2 (two images, two sketches)
    assert np.allclose(expect[2], (bi[2] + bi[3] + bs[2] + bs[3]) / 5)

    # it minimises the objective: any perturbation costs more
    def obj(D: np.ndarray) -> float:
        return float(((bi - Yi @ D) ** 2).sum() + ((bs - Ys @ D) ** 2).sum() + (D**2).sum())

    assert all(obj(expect) < obj(expect + 1e-2 * rng.standard_normal(expect.shape)) for _ in range(5))


def test_b_step_is_sign_of_projection_plus_alpha_h() -> None:
    y = torch.tensor([0, 1, 1])
    D = torch.tensor([[0.5, -0.2, 0.0], [-0.4, 0.1, 0.0]])
    H = torch.tensor([[0.9, 0.9, -0.3], [0.9, -0.9, 0.0], [0.1, -0.5, 0.2]])
    alpha = 0.5
    q = torch.nn.functional.one_hot(y, 2).float() @ D + alpha * H  # Eq. (12)
    expect = torch.where(q >= 0, 1.0, -1.0)
    got = discrete_code_step(y, D, H, alpha, 2)
    assert torch.equal(got, expect)
    assert got[0].tolist() == [1.0, 1.0, -1.0] and got[1].tolist() == [1.0, -1.0, 1.0]  # sgn(0) = +1
    # alpha -> 0: the class code sgn(Y D) alone; over {-1, 1}^K it minimises ||B - YD||^2 + alpha ||H - B||^2
    assert torch.equal(discrete_code_step(y, D, H, 1e-9, 2)[1], torch.tensor([-1.0, 1.0, 1.0]))


def test_quantization_and_unification_by_hand() -> None:
    h = torch.tensor([[0.5, -0.2], [-0.9, 0.1]], requires_grad=True)
    b = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    by_hand = ((0.5 - 1) ** 2 + (-0.2 - 1) ** 2 + (-0.9 + 1) ** 2 + (0.1 + 1) ** 2) / 2
    assert float(quantization_loss(h, target=b).detach()) == pytest.approx(by_hand)
    nearest = ((0.5 - 1) ** 2 + (-0.2 + 1) ** 2 + (-0.9 + 1) ** 2 + (0.1 - 1) ** 2) / 2  # tanh thresholds
    assert float(quantization_loss(h, 0.0, -1.0, 1.0).detach()) == pytest.approx(nearest)
    g = torch.tensor([[0.1, 0.2], [0.3, -0.4]])
    expect = ((0.5 - 0.1) ** 2 + (-0.2 - 0.2) ** 2 + (-0.9 - 0.3) ** 2 + (0.1 + 0.4) ** 2) / 2
    assert float(unification_loss(h, g).detach()) == pytest.approx(expect)
    quantization_loss(h, target=b).backward()
    assert torch.allclose(h.grad, (h - b).detach())  # d/dh of mean_i ||h_i - b_i||^2 = 2 (h - b) / 2


@pytest.mark.parametrize("bank", [False, True])
def test_one_alternating_step_changes_generators_and_hash(bank: bool) -> None:
    m = tiny(triplet_weight=1.0)
    b = batch()
    if bank:
        ds = pairs()
        m.set_training_data(ds.pl, ds.sl, 4)
    opts = m.configure_optimizers(1e-2)
    assert set(opts) == {"hash", "generator", "discriminator"}
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    m.train()
    stats = m.step(m, b, opts)
    for k in (
        "adversarial_loss",
        "cycle_loss",
        "quantization_loss",
        "unification_loss",
        "triplet_loss",
        "discriminator_loss",
    ):
        assert k in stats and np.isfinite(stats[k]), k
    after = m.state_dict()

    def changed(prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    for part in ("g_image.", "g_sketch.", "hash_net.", "d_image.", "d_sketch."):
        assert changed(part), part
    if bank:  # Algorithm 1 line 3-5 ran: B^I are the class codes sgn(Y D) (alpha = 1e-5), batch codes stored
        codes = m.b_photo[torch.as_tensor(ds.pl == 1)]
        assert bool((codes == codes[0]).all()) and float(m.h_photo.abs().sum()) > 0


def test_no_gan_ablation_has_no_generators() -> None:
    m = tiny(migration=False, triplet_weight=1.0)
    assert not hasattr(m, "g_image") and set(m.configure_optimizers(1e-3)) == {"hash"}
    stats = m.step(m, batch(), m.configure_optimizers(1e-3))
    assert "adversarial_loss" not in stats and np.isfinite(stats["loss"])


def _images(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    photos = [(rng.random((S, S, 3)) * 255).astype(np.uint8) for _ in range(n)]
    sketches = [(rng.random((S, S)) > 0.8).astype(np.float32) for _ in range(n)]
    return photos, sketches


def test_encode_shapes_and_retriever_returns_photo_hits(tmp_path) -> None:
    m = tiny().eval()
    photos, sketches = _images(6, 0)
    r = Retriever(m)
    assert r.binary
    r.add(photos, labels=[f"p{i}" for i in range(6)], modality="photo")
    z = r.embed(sketches[:2])
    assert z.shape == (2, 16) and float(np.abs(z).max()) < 1
    codes = r.encode(sketches[:2])
    assert codes.dtype == np.uint8 and codes.shape == (2, 2)
    hits = r.search(sketches[0], k=3)
    assert len(hits) == 3 and all(h.label.startswith("p") for h in hits)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    # save / load round trip: identical codes for sketches and photos
    save_model(m, tmp_path / "gdh")
    m2, card = load_model(tmp_path / "gdh")
    assert card.output == "binary" and card.code_size == 16
    r2 = Retriever(m2)
    assert np.array_equal(r2.encode(sketches), r.encode(sketches))
    assert np.array_equal(r2.encode(photos, modality="photo"), r.encode(photos, modality="photo"))


def test_training_loop_runs_gdh() -> None:
    m = tiny(triplet_weight=1.0)
    ds = pairs()
    m.set_training_data(ds.pl, ds.sl, 4)
    res = train(
        m,
        ds,
        TrainConfig(iterations=3, batch_size=4, lr=1e-3, device="cpu", progress=False, log_every=1),
        collate_fn=collate_pairs,
        sampler=ClassBalancedSampler(ds.pl, per_class=2),
    )
    assert len(res.history) == 3 and all(np.isfinite(h["loss"]) for h in res.history)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        GDH(nbits=12)
    with pytest.raises(ValueError, match="phase"):
        tiny().training_losses(batch(), phase="nope")


# ---------------------------------------------------------------------------------------------- pairs
def test_pairs_are_of_the_keyed_photos_class_and_keyed_by_the_draw() -> None:
    """A pair is of the keyed photo's class; an ``own`` pair is a sketch and the photo it was drawn from (the
    triplet's anchor-positive), any other pair the keyed photo with a sketch of its class. The draw is a
    function of (seed, photo, draw): read again, or by a copy of the dataset, it is the same pair."""
    rng = np.random.default_rng(0)
    n_ph, n_sk = 12, 24
    pl, sl = np.arange(n_ph) % 3, np.arange(n_sk) % 3
    sp = np.where(np.arange(n_sk) < 12, np.arange(n_sk) % n_ph, -1)  # the last 12 sketches have no photo here
    rasters, photos = rng.random((n_sk, 1, S, S), dtype=np.float32), rng.random((n_ph, 3, S, S), dtype=np.float32)
    args = (rasters, sl, photos, pl, sp)
    sampler = ClassBalancedSampler(pl, per_class=2, seed=1)
    keys = []
    for epoch in range(4):  # 4 epochs of 12 pairs
        sampler.set_epoch(epoch)
        keys += list(sampler)
    assert len(set(keys)) == len(keys) == 48  # every draw number is new
    own_rate: dict[float, float] = {}
    for frac in (0.0, 0.5, 1.0):
        ds = PairDataset(*args, own_fraction=frac, seed=3)
        ex = [ds[k] for k in keys]
        for (p, _), e in zip(keys, ex):
            s_, q = e["sketch_index"], e["photo_index"]
            assert e["label"] == pl[p] == sl[s_] == pl[q] and e["instance"] == q
            assert np.array_equal(e["raster"], args[0][s_]) and np.array_equal(e["photo"], args[2][q])
            assert bool(e["own"]) == bool(sp[s_] == q)
            if not e["own"]:
                assert q == p  # the keyed photo itself
        own_rate[frac] = float(np.mean([e["own"] for e in ex]))
        again = PairDataset(*args, own_fraction=frac, seed=3)
        assert [(again[k]["sketch_index"], again[k]["photo_index"]) for k in reversed(keys)] == [
            (e["sketch_index"], e["photo_index"]) for e in reversed(ex)
        ]
    # own_fraction 0: own pairs by chance only (a random sketch of the class drawn from the keyed photo: 1 in 8)
    assert own_rate[0.0] < 0.25 and own_rate[0.0] + 0.2 < own_rate[0.5] < 0.8, own_rate
    assert own_rate[1.0] == 1.0
    b = collate_pairs([PairDataset(*args, seed=3)[k] for k in keys[:6]])
    assert b["raster"].shape == (6, 1, S, S) and b["photo"].shape == (6, 3, S, S)
    assert b["own"].dtype == torch.bool
    assert b["label"].tolist() == [int(pl[p]) for p, _ in keys[:6]]
    with pytest.raises(ValueError, match="one label"):
        PairDataset(args[0][:3], sl, args[2], pl, sp)


# ---------------------------------------------------------------------------------------------- recipe
def write_sketchy(root: Path, classes: int = 3, photos: int = 4, per_photo: int = 2) -> Path:
    """A tiny Sketchy folder: ``photos`` photos a class, the first half of them with ``per_photo`` sketches."""
    rng = np.random.default_rng(5)
    for c in range(classes):
        (root / "photo" / f"c{c}").mkdir(parents=True, exist_ok=True)
        (root / "sketch" / f"c{c}").mkdir(parents=True, exist_ok=True)
        for p in range(photos):
            photo = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(photo).save(root / "photo" / f"c{c}" / f"n{c}_{p}.png")
            for k in range(per_photo if p < photos // 2 else 0):
                sketch = np.where(rng.random((24, 24)) > 0.9, 0, 255).astype(np.uint8)  # dark ink on white
                Image.fromarray(sketch).save(root / "sketch" / f"c{c}" / f"n{c}_{p}-{k + 1}.png")
    return root


def test_heldout_instance_split_holds_out_photo_groups_of_every_class(tmp_path: Path) -> None:
    coll = load_collection(write_sketchy(tmp_path / "sk"))
    a = make_split("heldout_instance", coll.items, seed=2, heldout_groups=1, heldout_photos=3)
    assert a == make_split("heldout_instance", coll.items, seed=2, heldout_groups=1, heldout_photos=3)
    a.check(coll.items)
    assert a.seen_classes == ["c0", "c1", "c2"] and not a.unseen_classes
    for c in a.seen_classes:
        q = [coll[i] for i in a.query if coll[i].label == c]
        g = [i for i in a.gallery if coll[i].label == c]
        assert len({it.pair for it in q}) == 1 and len(q) == 2  # one whole photo group
        assert f"photo/{c}/{q[0].pair}" in g and len(g) == 3  # its own photo + distractors
        assert any(coll[i].label == c and coll[i].modality == m for i in a.train for m in ("sketch", "photo"))
    sub = make_split("heldout_instance", coll.items, seed=2, n_classes=2)
    assert len(sub.seen_classes) == 2 and {coll[i].label for i in sub.train} == set(sub.seen_classes)
    with pytest.raises(ValueError, match="n_classes"):
        make_split("heldout_instance", coll.items, n_classes=1)


def test_recipe_trains_and_reports_category_and_instance_metrics(tmp_path: Path) -> None:
    data = str(write_sketchy(tmp_path / "sk"))
    kw = {
        "iterations": 2,
        "batch_size": 4,
        "device": "cpu",
        "progress": False,
        "heldout_photos": 3,
        **TINY,
        "triplet_weight": 1.0,
    }
    res = run_recipe("gdh", data, out=tmp_path / "run", **kw)
    assert res.training["iterations"] == 2 and res.training["last"]["iteration"] == 2
    coll = load_collection(data)
    train_photos = {(coll[i].label, coll[i].pair) for i in res.split.train if coll[i].modality == "photo"}
    own = [i for i in res.split.train if coll[i].modality == "sketch" and (coll[i].label, coll[i].pair) in train_photos]
    assert res.training["own_sketches"] == len(own) > 0  # anchors of the triplet: sketches whose photo trains
    assert Split.load(tmp_path / "run" / "split.json") == res.split and res.split.kind == "heldout_instance"
    main, inst = res.metrics["main"], res.metrics["instance"]
    assert main["protocol"] == "category" and inst["protocol"] == "instance"
    assert main["n_queries"] == inst["n_queries"] == 6 and main["n_gallery"] == 9 and inst["n_excluded"] == 0
    assert inst["mean_relevant"] == 1.0 and main["mean_relevant"] == 3.0  # its own photo; its class's photos
    assert 0.0 <= inst["acc@1"] <= inst["acc@10"] == 1.0  # 9 photos: the own one is always in the first 10
    assert res.metrics["mAP@all"] == main["mAP@all"] and main["output"] == "binary"
    again = run_recipe("gdh", data, **kw)  # seeded: the same weights
    sa, sb = res.method.state_dict(), again.method.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
