"""What a training run is: :class:`TrainConfig`, its checks and its JSON form.

Plain Python (no TensorFlow), so the CLI, the planner and a model folder's reader can use it
without importing the training loop.
"""

import dataclasses
import json

import numpy as np

from .errors import InvalidType
from .images import NORMALIZATION
from .sizes import output_size
from .volume_sizes import check_volume_shape, plan_axes

STRATEGIES = ("default", "mirrored", "multiworker")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
# What the network learns from the masks: "foreground" (2 classes, the paper's; instances by
# splitting the foreground), "boundary" (3 classes: background, interior, cell boundary drawn
# around every instance; instances grown from the interiors) or "classes" (the masks hold class
# ids 0..num_classes-1; the output is class ids).
TARGETS = ("foreground", "boundary", "classes")
BOUNDARY_CLASSES = ["background", "interior", "boundary"]
# A fine-tune's new head for another target starts from the source's head: each class from
# the source class that holds it (source target, target) -> source columns. Interior and
# boundary pixels are foreground; foreground pixels are interior or boundary.
HEAD_FROM = {("boundary", "foreground"): (0, 1), ("foreground", "boundary"): (0, 1, 1)}
# A fine-tune's learning rate rises from 0 over this share of its steps: Adam's first steps,
# with no gradient history, move every weight by about the full rate and knock the source's
# weights (measured: 2-minute fine-tunes of the sample's 4 folds, F1 0.872 -> 0.904).
FINE_TUNE_WARMUP = 0.1

# Named architectures with their training tile. "edge" is for int8 accelerators such as the
# Coral Edge TPU: resize + conv instead of stride-2 transposed convs (which often fail to map),
# 2.1 M parameters (2.1 MB as int8, well inside the ~6 MiB on-chip budget; the paper net has 31 M),
# and a 252 tile (150 output) so activations stay small.
PRESETS = {
    "paper": {"depth": 5, "filters": 64, "upsampling": "transpose", "tile_size": 572},
    "edge": {"depth": 4, "filters": 32, "upsampling": "resize_conv", "tile_size": 252},
}

MIN_STEPS = 250   # training steps: fewer than this gave no useful model in any of our runs

# Settings renamed since format_version 1 folders were first written: old name -> new name.
RENAMED = {"sigma": "border_sigma"}
# Settings added since then, with what their absence meant, so an older folder's
# ``train --config`` repeats the run it describes.
ADDED = {"foreground_tiles": 0.0, "ignore_label": None, "start_from": None, "voxel_size": None}


class NothingLearned(RuntimeError):
    """Training finished, but the tuned model finds almost none of the objects of its tuning
    images. The model folder is complete and kept (``folder``); ``report`` holds what was
    measured (``f1``, ``foreground_ratio``: predicted over annotated foreground, ``tuned_on``)."""

    def __init__(self, message, folder, report):
        super().__init__(message)
        self.folder, self.report = folder, report


def class_id_settings(num_classes=None, class_names=None):
    """The settings of masks that hold class ids (``target="classes"``) from a class count, the
    classes' names, or both (which must agree); ``{}`` when neither is given."""
    if num_classes is None and not class_names:
        return {}
    if class_names and num_classes is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names names {len(class_names)} classes "
                         f"({', '.join(class_names)}) but num_classes is {num_classes}")
    num_classes = len(class_names) if class_names else num_classes
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background and at least one class), got "
                         f"{num_classes}")
    return {"target": "classes", "num_classes": num_classes,
            **({"class_names": list(class_names)} if class_names else {})}


def valid_normalization(norm):
    if not (isinstance(norm, dict) and norm.get("method") in ("percentile", "dataset")
            and 0 <= norm.get("low", -1) < norm.get("high", -1) <= 100):
        return False
    if norm["method"] == "percentile":
        return True
    bounds = norm.get("range")
    return (isinstance(bounds, (list, tuple)) and len(bounds) == 2
            and all(isinstance(b, (int, float)) and np.isfinite(b) for b in bounds)
            and bounds[0] < bounds[1])


@dataclasses.dataclass
class TrainConfig:
    """Everything ``train`` needs; round-trips through JSON (``to_json``/``from_json``).

    Defaults follow the paper where it makes sense for a few images: SGD with momentum 0.99,
    batch 1 of large tiles, weight maps (w0=10, sigma=5) and elastic deformation on.
    """
    out: str = "model"
    images: str | None = None         # folder of images (CLI); the API may pass arrays instead
    masks: str | None = None
    tile_size: int | list = 572      # a volume's (voxel_size set): [Z, Y, X]
    depth: int = 5
    filters: int = 64
    upsampling: str = "transpose"
    dropout: float = 0.5
    target: str = "foreground"        # see TARGETS
    num_classes: int = 2
    class_names: list | None = None   # default: background, foreground / interior, boundary / class_k
    epochs: int = 50
    steps_per_epoch: int = 100
    batch_size: int = 1
    optimizer: str = "sgd"            # "sgd" (momentum) or "adam"
    learning_rate: float = 0.01
    lr_schedule: str = "constant"     # or "cosine": decay to 0 over all steps (steadier end)
    momentum: float = 0.99
    weight_map: bool = True
    w0: float = 10.0
    border_sigma: float = 5.0         # weight-map border width (the paper's sigma), pixels
    class_weights: str | list | None = "balanced"  # w_c: "balanced", [w_bg, w_fg] or None (1)
    augment: bool = True
    elastic_sigma: float = 10.0       # std of the elastic displacement vectors, pixels
    val_split: float = 0.2            # fraction of whole images held out for validation
    foreground_tiles: float = 0.33    # share of tiles centred on an annotated object (nnU-Net's)
    ignore_label: int | None = None   # mask value of unannotated pixels: weight 0, never scored
    start_from: str | None = None     # a model folder to fine-tune: its architecture and weights
    voxel_size: list | None = None    # [Z, Y, X] (any unit): set for volumes, a 3-D U-Net
    early_stopping: int | None = None # patience in epochs; None: off
    strategy: str = "default"         # "default", "mirrored" (GPUs of one host), "multiworker"
    mixed_precision: bool = False     # mixed_float16 compute (GPUs); logits and loss in float32
    seed: int = 0
    normalization: dict = dataclasses.field(default_factory=lambda: dict(NORMALIZATION))

    def __post_init__(self):
        if self.target == "foreground" and self.num_classes > 2:
            self.target = "classes"  # num_classes > 2 has always meant class-id masks
        if self.target == "boundary":
            self.num_classes = 3
        if self.class_names is None:
            self.class_names = (BOUNDARY_CLASSES if self.target == "boundary" else
                                ["background", "foreground"] if self.num_classes == 2 else
                                ["background", *(f"class_{k}" for k in range(1, self.num_classes))])

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)

    @property
    def is_volume(self):
        """Whether this run trains a 3-D U-Net (a voxel size is set)."""
        return self.voxel_size is not None

    @property
    def volume_plan(self):
        """The 3-D net's pools and kernels per level and axis
        (:func:`unet_tf.volume_sizes.plan_axes` of the voxel size, fitted to the tile)."""
        return plan_axes(self.voxel_size, self.depth, shape=self.tile_size)

    @classmethod
    def from_preset(cls, name, **settings):
        """A config with a named architecture (``"paper"`` or ``"edge"``, see
        :data:`PRESETS`); other ``settings`` override it."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **settings})

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, values):
        values = {**ADDED, **{RENAMED.get(name, name): value for name, value in values.items()}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def validate(self):
        """Raise ``ValueError``/``TypeError`` naming the first setting that cannot work."""
        integer = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        number = lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
        for name in ("depth", "filters", "num_classes", "epochs", "steps_per_epoch",
                     "batch_size", "seed"):
            if not integer(getattr(self, name)):
                raise InvalidType(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("dropout", "learning_rate", "momentum", "w0", "border_sigma", "elastic_sigma",
                     "val_split", "foreground_tiles"):
            if not number(getattr(self, name)) or not np.isfinite(getattr(self, name)):
                raise InvalidType(f"{name} must be a finite number, got {getattr(self, name)!r}")
        self._validate_tile(integer, number)
        norm = self.normalization
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.steps_per_epoch >= 1, f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.filters >= 1, f"filters must be >= 1, got {self.filters}"),
            (self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (0 <= self.val_split < 1, f"val_split must be in [0, 1), got {self.val_split}"),
            (0 <= self.foreground_tiles <= 1,
             f"foreground_tiles must be a share in [0, 1], got {self.foreground_tiles}"),
            (self.ignore_label is None or (integer(self.ignore_label) and self.ignore_label >= 1),
             f"ignore_label must be None or a mask value >= 1 (0 is the background), got "
             f"{self.ignore_label!r}"),
            (self.ignore_label is None or self.target != "classes"
             or self.ignore_label >= self.num_classes,
             f"ignore_label {self.ignore_label} is one of the class ids 0..{self.num_classes - 1}: "
             f"choose a value >= {self.num_classes}"),
            (self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}"),
            (self.start_from is None or isinstance(self.start_from, str),
             f"start_from must be None or a model folder's path, got {self.start_from!r}"),
            (self.target != "foreground" or self.num_classes == 2,
             f"the foreground target has 2 classes, got num_classes={self.num_classes}"),
            (self.optimizer in OPTIMIZERS,
             f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.strategy in STRATEGIES,
             f"strategy must be one of {STRATEGIES}, got {self.strategy!r}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"),
            (self.w0 >= 0 and self.border_sigma > 0,
             f"w0 must be >= 0 and border_sigma > 0, got w0={self.w0}, "
             f"border_sigma={self.border_sigma}"),
            (self.elastic_sigma >= 0, f"elastic_sigma must be >= 0, got {self.elastic_sigma}"),
            (self.early_stopping is None or (integer(self.early_stopping)
                                             and self.early_stopping >= 1),
             f"early_stopping must be None or a patience >= 1, got {self.early_stopping!r}"),
            (len(self.class_names) == self.num_classes,
             f"class_names must name {self.num_classes} classes, got {self.class_names}"),
            (valid_normalization(norm),
             f"normalization must be {{'method': 'percentile', 'low': L, 'high': H}} with "
             f"0 <= L < H <= 100, or {{'method': 'dataset', ..., 'range': [lo, hi]}} with "
             f"lo < hi, got {norm!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _validate_tile(self, integer, number):
        if not self.is_volume:
            if not integer(self.tile_size):
                raise InvalidType(f"tile_size must be an integer, got {self.tile_size!r}")
            output_size(self.tile_size, self.depth, self.upsampling)
            return
        spacing, tile = self.voxel_size, self.tile_size
        if not (isinstance(spacing, (list, tuple)) and len(spacing) == 3
                and all(number(s) and np.isfinite(s) and s > 0 for s in spacing)):
            raise ValueError(f"voxel_size must be 3 positive numbers (Z, Y, X), got {spacing!r}")
        if not (isinstance(tile, (list, tuple)) and len(tile) == 3 and all(map(integer, tile))):
            raise InvalidType(f"a volume's tile_size must be 3 integers (Z, Y, X), got {tile!r}")
        if self.upsampling != "transpose":
            raise ValueError(f"the 3-D U-Net up-samples with transposed convolutions, got "
                             f"upsampling={self.upsampling!r}")
        check_volume_shape(tuple(tile), self.volume_plan)
