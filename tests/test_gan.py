"""sketch-GAN / thin-GAN: Table 1 shapes and parameter counts, GAN losses by hand, one training step,
save/load round trip, binary codes, the recipe end to end on tiny synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sketchsearch.encoders import ENCODERS, create_encoder, list_encoders
from sketchsearch.encoders.sketch_gan import GAN, count_parameters
from sketchsearch.losses.gan import discriminator_loss, generator_loss
from sketchsearch.methods.base import create_method, list_methods
from sketchsearch.methods.gan_encoder import GANBinaryEncoder, GANEncoder, binary_variant, encode_rasters
from sketchsearch.model import load_model, save_model

# (generator, discriminator) trainable parameters of Table 1 as built (see encoders/sketch_gan.py docstring)
EXPECTED_PARAMS = {"sketch-gan": (22_225, 17_825), "thin-gan": (27_505, 25_633)}


def _hand_count(arch: str) -> tuple[int, int]:
    """Recount from Table 1 by hand: conv = out*in*k*k + out; BN = 2*out; fc = in*out + out."""
    conv = lambda o, i, k, bn=True: o * i * k * k + o + (2 * o if bn else 0)
    if arch == "thin-gan":
        g = 2 * 1024 + 1024 + conv(32, 64, 3) + conv(16, 32, 3) + conv(8, 16, 3) + conv(1, 8, 3, False)
        d = conv(8, 1, 3, False) + conv(16, 8, 3) + conv(32, 16, 3) + conv(64, 32, 3) + 1024 + 1
    else:
        g = 2 * 128 + 128 + conv(16, 8, 3) + 3 * conv(16, 16, 5) + conv(1, 16, 9, False)
        d = conv(8, 1, 9, False) + conv(16, 8, 5) + 2 * conv(16, 16, 5) + 1024 + 1
    return g, d


@pytest.mark.parametrize("arch", ["sketch-gan", "thin-gan"])
def test_parameter_counts_match_table_1(arch: str) -> None:
    gan = create_encoder(arch)
    assert isinstance(gan, GAN)
    counts = (count_parameters(gan.generator), count_parameters(gan.discriminator))
    assert counts == EXPECTED_PARAMS[arch] == _hand_count(arch)


@pytest.mark.parametrize("arch", ["sketch-gan", "thin-gan"])
@pytest.mark.parametrize("dz", [2, 5])
def test_shapes(arch: str, dz: int) -> None:
    torch.manual_seed(0)
    gan = create_encoder(arch, dz=dz)
    with torch.no_grad():
        x = gan.generator(torch.randn(3, dz))
    assert x.shape == (3, 1, 64, 64)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # sigmoid output
    with torch.no_grad():
        assert gan.discriminator(x).shape == (3,)
        f = gan.discriminator.features(x)
    assert f.shape == (3, 1024) and float(f.min()) >= 0.0  # ReLU features
    with pytest.raises(ValueError, match=r"\(B, 1, 64, 64\)"):
        gan.discriminator.features(torch.zeros(2, 1, 32, 32))


def test_registry_lists_both_and_rejects_unknown() -> None:
    assert {"sketch-gan", "thin-gan"} <= set(list_encoders())
    assert "sketch-gan" in ENCODERS
    with pytest.raises(ValueError, match="sketch-gan"):
        create_encoder("no-such-gan")
    assert "gan" in list_methods()
    with pytest.raises(ValueError, match="arch"):
        create_method("gan", arch="fat-gan")


def test_gan_losses_by_hand() -> None:
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-3.0, 0.0, 1.0])
    sig = torch.sigmoid
    jd = -(1 / 6) * (torch.log(sig(real)).sum() + torch.log(1 - sig(fake)).sum())
    jg = -(1 / 3) * torch.log(sig(fake)).sum()
    assert torch.allclose(discriminator_loss(real, fake), jd, atol=1e-6)
    assert torch.allclose(generator_loss(fake), jg, atol=1e-6)
    # saturated logits stay finite (log-sum-exp form)
    assert math.isfinite(float(discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0]))))
    with pytest.raises(ValueError, match="empty"):
        generator_loss(torch.zeros(0))


def _rasters(n: int, seed: int = 0) -> torch.Tensor:
    """n tiny seeded line drawings (random segments) as float (n, 1, 64, 64), ink 1."""
    from sketchsearch.data.render import rasterize
    from sketchsearch.data.sketch import Sketch

    rng = np.random.default_rng(seed)
    out = [rasterize(Sketch([rng.uniform(0, 1, (4, 2)) for _ in range(2)]), 64, 1.25) for _ in range(n)]
    return torch.from_numpy(np.stack(out))[:, None]


@pytest.mark.parametrize("arch", ["sketch-gan", "thin-gan"])
def test_one_training_step_gives_finite_losses_and_moves_both_networks(arch: str) -> None:
    torch.manual_seed(0)
    m = create_method("gan", arch=arch)
    assert isinstance(m, GANEncoder)
    opts = m.configure_optimizers(0.002)
    assert set(opts) == {"d", "g"}
    d0 = [p.detach().clone() for p in m.gan.discriminator.parameters()]
    g0 = [p.detach().clone() for p in m.gan.generator.parameters()]
    m.train()
    stats = m.step(lambda b, **kw: m(b, **kw), {"raster": _rasters(8)}, opts)
    for k in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert math.isfinite(stats[k]), k
    assert 0.0 < stats["d_loss"] and 0.0 < stats["g_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(d0, m.gan.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, m.gan.generator.parameters()))
    with pytest.raises(ValueError, match="phase"):
        m({"raster": _rasters(2)}, phase="all")


def test_save_load_round_trip_gives_identical_encodings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = create_method("gan", arch="thin-gan")
    x = _rasters(16, seed=1)
    m.calibrate(x)
    before = encode_rasters(m, x)
    assert before.shape == (16, 1024)
    np.testing.assert_allclose(np.linalg.norm(before, axis=1), 1.0, rtol=1e-5)
    card = save_model(m, tmp_path / "tg", training={"data": "test"})
    assert card.output == "float" and card.code_size == 1024 and card.kwargs == {"arch": "thin-gan", "dz": 2}
    loaded, card2 = load_model(tmp_path / "tg")
    assert isinstance(loaded, GANEncoder) and card2.model_id == card.model_id
    np.testing.assert_array_equal(encode_rasters(loaded, x), before)


def test_binary_codes_are_centred_features() -> None:
    torch.manual_seed(0)
    m = create_method("gan", arch="sketch-gan")
    x = _rasters(32, seed=2)
    with pytest.raises(ValueError, match="calibrated"):
        binary_variant(m).encode_sketch({"raster": x})
    m.calibrate(x)
    b = binary_variant(m)
    assert isinstance(b, GANBinaryEncoder) and b.output == "binary" and b.code_size == 1024
    z = b.encode_sketch({"raster": x})
    feats = m.features(x)
    assert torch.allclose(z, feats - m.centre)
    # plain sign of ReLU features is (almost) all ones; centred bits are balanced-ish
    assert float((feats > 0).float().mean()) > float((z > 0).float().mean())
    codes = b.binarize(z)
    assert codes.dtype == np.uint8 and codes.shape == (32, 128)
    assert b.hparams == {"arch": "sketch-gan", "dz": 2, "binary": True}


def test_calibrate_reestimates_batch_norm_on_real_data() -> None:
    torch.manual_seed(0)
    m = create_method("gan", arch="thin-gan")
    x = _rasters(24, seed=3)
    m.calibrate(x)
    bn = next(mod for mod in m.gan.discriminator.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    conv = m.gan.discriminator.net[0:2]  # conv 1 + ReLU feed the first BN's conv
    with torch.no_grad():
        pre_bn = m.gan.discriminator.net[2](conv(x))
    torch.testing.assert_close(bn.running_mean, pre_bn.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not m.training


def test_recipe_trains_on_default_data(tmp_path: Path) -> None:
    from sketchsearch.recipes import run_recipe

    res = run_recipe(
        "gan", "default", out=tmp_path / "run", iterations=2, batch_size=16, progress=False, arch="thin-gan", limit=40
    )
    training = res.training
    assert training["drawings"] == 40 and training["iterations"] == 2 and training["options"] == {"limit": 40}
    assert res.split is None and res.metrics == {}  # unlabelled: no split, no evaluation here
    assert math.isfinite(training["final_losses"]["d_loss"]) and math.isfinite(training["final_losses"]["g_loss"])
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    assert isinstance(res.method, GANEncoder) and res.method.arch == "thin-gan"
    assert float(res.method.centre.abs().sum()) > 0


def test_recipe_reports_missing_data(tmp_path: Path) -> None:
    from sketchsearch.errors import FormatError
    from sketchsearch.recipes import run_recipe

    with pytest.raises(FormatError, match="no such file") as e:
        run_recipe("gan", f"default,{tmp_path / 'nothing.npz'}", iterations=1, progress=False)
    assert e.value.file == str(tmp_path / "nothing.npz")


def test_load_unlabelled_joins_specs_and_render_skips_empty_drawings(tmp_path: Path) -> None:
    from sketchsearch.data.collection import Collection
    from sketchsearch.data.formats.base import Item
    from sketchsearch.data.sketch import Sketch
    from sketchsearch.data.sources import load_collection
    from sketchsearch.errors import FormatError
    from sketchsearch.recipes.gan import load_unlabelled, render

    rng = np.random.default_rng(0)
    strokes = [rng.uniform(0, 255, (5, 2)).round().astype(int) for _ in range(3)]
    lines = [
        json.dumps({"word": "w", "key_id": f"k{i}", "drawing": [[s[:, 0].tolist(), s[:, 1].tolist()]]})
        for i, s in enumerate(strokes)
    ]
    (tmp_path / "a.ndjson").write_text("\n".join(lines) + "\nnot json\n")
    default = load_collection("default")
    coll = load_unlabelled(f"default, {tmp_path / 'a.ndjson'}")
    assert len(coll.items) == len(default.items) + 3 and coll.skipped == 1 and len(coll.errors) == 1
    assert [it.id for it in coll.items[-3:]] == ["1:k0", "1:k1", "1:k2"]  # several specs: ids by position
    assert [it.id for it in load_unlabelled(str(tmp_path / "a.ndjson")).items] == ["k0", "k1", "k2"]
    twice = load_unlabelled(f"{tmp_path / 'a.ndjson'},{tmp_path / 'a.ndjson'}")  # the same ids, joined
    assert len(twice.items) == 6 and twice.skipped == 2
    m = create_method("gan", arch="thin-gan")
    empty = Item(id="empty", label=None, modality="sketch", source="x", sketch=Sketch([]))
    mine = Collection([empty, *coll.items[-3:]], path="mine")  # a record without strokes: skipped, counted
    rasters, skipped = render(mine, m, limit=None, seed=0)
    assert rasters.shape == (3, 64, 64) and rasters.dtype == np.float32 and skipped == 1
    sub, _ = render(mine, m, limit=2, seed=0)
    assert sub.shape == (2, 64, 64) and np.array_equal(sub, render(mine, m, limit=2, seed=0)[0])  # seeded
    assert any(not np.array_equal(sub, render(mine, m, limit=2, seed=s)[0]) for s in range(1, 6))
    with pytest.raises(FormatError, match="no drawings with strokes") as e:
        render(Collection([empty], path="mine"), m, limit=None, seed=0)
    assert e.value.file == "mine"


@pytest.mark.parametrize("name", ["sketch-gan", "thin-gan"])
def test_shipped_models_load_and_encode(name: str) -> None:
    m, card = load_model(name)
    assert card.method == "gan" and card.kwargs["arch"] == name and card.training["iterations"] > 0
    z = encode_rasters(m, _rasters(4))
    assert z.shape == (4, 1024) and np.isfinite(z).all()


def test_invariance_command_writes_json_and_figures(tmp_path: Path) -> None:
    from sketchsearch.cli import main

    models = []
    for arch in ("sketch-gan", "thin-gan"):
        torch.manual_seed(0)
        m = create_method("gan", arch=arch)
        m.calibrate(_rasters(8))
        save_model(m, tmp_path / arch)
        models += ["--model", str(tmp_path / arch)]
    out = tmp_path / "inv"
    with pytest.raises(SystemExit) as e:
        main(["invariance", *models, "--data", "default", "--samples", "2", "--out", str(out)])
    assert e.value.code in (0, None)
    doc = json.loads((out / "invariance.json").read_text())
    assert set(doc["results"]) == {"sketch-gan", "thin-gan"} and doc["samples"] == 2
    r = doc["results"]["thin-gan"]
    assert len(r["rotation"]["mean"]) == 41 and len(r["scale"]["mean"]) == 21 and len(r["shift"]["mean"]) == 21
    assert r["rotation"]["mean"][20] == pytest.approx(1.0, abs=1e-5)  # angle 0 = the drawing itself
    assert 0.0 < r["summary"]["rotation"] <= 1.0
    for png in ("rotation.png", "scale.png", "shift.png"):
        assert (out / png).stat().st_size > 0


def test_shipped_encoder_binary_codes_search_through_the_retriever(tmp_path: Path) -> None:
    """The shipped float encoder's 1024-bit variant in the shared Retriever: Hamming index, oracle ranking."""
    from sketchsearch import Retriever, default_collection
    from sketchsearch.index.codes import unpack_bits

    method, _ = load_model("sketch-gan")
    b = binary_variant(method)
    items = default_collection().items[:60]
    r = Retriever(b, model_id="sketch-gan-bits")
    r.add([it.sketch for it in items], labels=[it.label for it in items])
    assert r.binary and r.index.nbits == 1024
    hits = r.search(items[0].sketch, k=10)
    # oracle: popcount of XOR against every stored code, ties by id
    bits_g = unpack_bits(r.encode([it.sketch for it in items]), 1024)
    dist = (bits_g[0][None, :] != bits_g).sum(axis=1)
    order = np.lexsort((np.arange(len(items)), dist))[:10]
    assert [h.id for h in hits] == order.tolist()
    assert [h.distance for h in hits] == dist[order].tolist()
    assert hits[0].id == 0 and hits[0].distance == 0
    r.save(tmp_path / "idx")
    again = Retriever.load(tmp_path / "idx", model=b)
    assert [(h.id, h.distance) for h in again.search(items[0].sketch, k=10)] == [(h.id, h.distance) for h in hits]


def test_gan_binary_command_writes_a_hamming_artifact(tmp_path: Path) -> None:
    """`sketchsearch gan-binary` -> its own model_id, binary 1024-bit output, usable by `index build`."""
    from typer.testing import CliRunner

    from sketchsearch import Retriever
    from sketchsearch.cli import app
    from sketchsearch.index.store import read_manifest

    runner = CliRunner()
    res = runner.invoke(app, ["gan-binary", "sketch-gan", "--out", str(tmp_path / "sg-bits")])
    assert res.exit_code == 0, res.output
    m, card = load_model(tmp_path / "sg-bits")
    _, float_card = load_model("sketch-gan")
    assert isinstance(m, GANBinaryEncoder) and card.output == "binary" and card.code_size == 1024
    assert card.model_id != float_card.model_id and card.model_id.startswith("gan-bits-1024-")
    assert card.training["derived_from"]["model_id"] == float_card.model_id
    assert card.training["command"].startswith("sketchsearch gan-binary sketch-gan")
    res = runner.invoke(
        app,
        [
            "index",
            "build",
            "--model",
            str(tmp_path / "sg-bits"),
            "--data",
            "default",
            "--limit",
            "40",
            "--out",
            str(tmp_path / "idx"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "idx")["nbits"] == 1024
    assert Retriever.load(tmp_path / "idx").binary
    res = runner.invoke(app, ["gan-binary", "sketchmate-quickdraw-64", "--out", str(tmp_path / "no")])
    assert res.exit_code != 0 and "not a float GAN encoder" in res.output


@pytest.mark.data
def test_evaluate_command_reproduces_the_thin_gan_card(shared_data: Path) -> None:
    """~15 s: `evaluate --protocol leave-one-out --k 8` on Omniglot small1 gives the card's figures exactly."""
    from typer.testing import CliRunner

    from sketchsearch.cli import app
    from sketchsearch.model import resolve_model

    data = shared_data / "omniglot" / "strokes_background_small1"
    res = CliRunner().invoke(
        app,
        ["evaluate", "--protocol", "leave-one-out", "--k", "8", "--model", "thin-gan", "--data", str(data), "--json"],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["split"]["kind"] == "leave_one_out" and doc["skipped"] == 0
    # scored on the leave-one-out split the artifact carries (thin-gan.split.json), and only that is noted
    assert len(doc["notes"]) == 1 and doc["notes"][0].startswith("the split recorded with thin-gan (leave_one_out")
    main = doc["rows"][0]["main"]
    card = json.loads(resolve_model("thin-gan").with_suffix(".json").read_text())
    want = card["metrics"]["omniglot_small1_leave_one_out"]
    assert (main["n_queries"], main["mean_relevant"]) == (2720, 19.0)
    assert {k: round(main[k], 4) for k in want} == want
