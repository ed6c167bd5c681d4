"""Training with Keras ``fit``, and the self-describing model folder it writes.

    MODEL_DIR/
      model.keras    best model by validation loss (training loss without validation images)
      config.json    architecture, tile geometry, normalisation, classes, training settings,
                     data summary, versions: all that prediction and export need
      history.csv    one row per epoch
      logs/          TensorBoard: scalars and prediction images
      backup/        only while training runs: BackupAndRestore resumes a killed run from here
"""

import dataclasses
import datetime
import json
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import __version__
from .augment import Augmentation
from .data import class_labels, make_dataset
from .distribute import (STRATEGIES, Backup, fit_custom_loop, is_chief, is_multiworker,
                         make_strategy, writable_path)
from .images import NORMALIZATION, check_image
from .io import check_writable, write_atomically
from .memory import check_fits
from .losses import weighted_pixel_loss
from .model import PRESETS, build_unet, output_size

MODEL_FILE, CONFIG_FILE, HISTORY_FILE, BACKUP_DIR, LOGS_DIR = (
    "model.keras", "config.json", "history.csv", "backup", "logs")


@dataclasses.dataclass
class TrainConfig:
    """Everything ``train`` needs; round-trips through JSON (``to_json``/``from_json``).

    Defaults follow the paper where it makes sense for a few images: SGD with momentum 0.99,
    batch 1 of large tiles, weight maps (w0=10, sigma=5) and elastic deformation on.
    """
    out: str = "model"
    images: str | None = None         # folder of images (CLI); the API may pass arrays instead
    masks: str | None = None
    tile_size: int = 572
    depth: int = 5
    filters: int = 64
    upsampling: str = "transpose"
    dropout: float = 0.5
    num_classes: int = 2
    class_names: list = dataclasses.field(default_factory=lambda: ["background", "foreground"])
    epochs: int = 50
    steps_per_epoch: int = 100
    batch_size: int = 1
    optimizer: str = "sgd"            # "sgd" (momentum) or "adam"
    learning_rate: float = 0.01
    lr_schedule: str = "constant"     # or "cosine": decay to 0 over all steps (steadier end)
    momentum: float = 0.99
    weight_map: bool = True
    w0: float = 10.0
    sigma: float = 5.0
    class_weights: str | list | None = "balanced"  # w_c: "balanced", [w_bg, w_fg] or None (1)
    augment: bool = True
    elastic_sigma: float = 10.0
    val_split: float = 0.2            # fraction of whole images held out for validation
    early_stopping: int | None = None # patience in epochs; None: off
    strategy: str = "default"         # "default", "mirrored" (GPUs of one host), "multiworker"
    mixed_precision: bool = False     # mixed_float16 compute (GPUs); logits and loss in float32
    seed: int = 0
    normalization: dict = dataclasses.field(default_factory=lambda: dict(NORMALIZATION))

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_preset(cls, name, **settings):
        """A config with a named architecture (``"paper"`` or ``"edge"``, see
        ``unet_tf.model.PRESETS``); other ``settings`` override it."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **settings})

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def validate(self):
        """Raise ``ValueError``/``TypeError`` naming the first setting that cannot work."""
        integer = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        number = lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
        for name in ("tile_size", "depth", "filters", "num_classes", "epochs", "steps_per_epoch",
                     "batch_size", "seed"):
            if not integer(getattr(self, name)):
                raise TypeError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("dropout", "learning_rate", "momentum", "w0", "sigma", "elastic_sigma",
                     "val_split"):
            if not number(getattr(self, name)) or not np.isfinite(getattr(self, name)):
                raise TypeError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        output_size(self.tile_size, self.depth, self.upsampling)
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
            (self.optimizer in ("sgd", "adam"),
             f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}"),
            (self.strategy in STRATEGIES,
             f"strategy must be one of {STRATEGIES}, got {self.strategy!r}"),
            (self.lr_schedule in ("constant", "cosine"),
             f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"),
            (self.w0 >= 0 and self.sigma > 0,
             f"w0 must be >= 0 and sigma > 0, got w0={self.w0}, sigma={self.sigma}"),
            (self.elastic_sigma >= 0, f"elastic_sigma must be >= 0, got {self.elastic_sigma}"),
            (self.early_stopping is None or (integer(self.early_stopping)
                                             and self.early_stopping >= 1),
             f"early_stopping must be None or a patience >= 1, got {self.early_stopping!r}"),
            (len(self.class_names) == self.num_classes,
             f"class_names must name {self.num_classes} classes, got {self.class_names}"),
            (isinstance(norm, dict) and norm.get("method") == "percentile"
             and 0 <= norm.get("low", -1) < norm.get("high", -1) <= 100,
             f"normalization must be {{'method': 'percentile', 'low': L, 'high': H}} with "
             f"0 <= L < H <= 100, got {norm!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _optimizer(config):
    rate = config.learning_rate
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, config.epochs * config.steps_per_epoch)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate)
    return keras.optimizers.SGD(rate, momentum=config.momentum)


def split_images(n, val_split, seed):
    """Indices ``(train, validation)`` of whole images; at least one of each when possible."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_split))) if val_split > 0 and n > 1 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def best_in_history(history, monitor):
    """The lowest ``monitor`` value in a history.csv (``inf`` without one)."""
    if history is None or not Path(history).exists():
        return np.inf
    import csv
    with open(history) as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
    return min(values, default=np.inf)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model to ``path`` (atomically) whenever ``monitor`` reaches a new minimum."""

    def __init__(self, path, monitor, history=None):
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.best = best_in_history(history, monitor)  # a resumed run keeps its best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = value
            write_atomically(self.path, self.model.save)


class PredictionImages(keras.callbacks.Callback):
    """Write a few tiles with their labels and predicted foreground probability to TensorBoard."""

    def __init__(self, log_dir, x, y, every=1):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))
        self.x, self.y, self.every = x, y, every

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every:
            return
        probabilities = tf.nn.softmax(self.model(self.x, training=False))[..., 1:2]
        out = probabilities.shape[1]
        start = (self.x.shape[1] - out) // 2
        image = self.x[:, start:start + out, start:start + out, :1]
        image = (image - tf.reduce_min(image)) / (tf.reduce_max(image) - tf.reduce_min(image) + 1e-6)
        labels = tf.cast(self.y[..., None], tf.float32)
        with self.writer.as_default():
            tf.summary.image("image | labels | foreground probability",
                             tf.concat([image, labels, probabilities], axis=2), step=epoch)


def model_config(config, data_summary, distribution=None):
    """The ``config.json`` of a model folder."""
    return {
        "format": "unet-tf model folder",
        "format_version": 1,
        "unet_tf_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "architecture": {"depth": config.depth, "filters": config.filters,
                         "upsampling": config.upsampling, "dropout": config.dropout,
                         "num_classes": config.num_classes, "channels": data_summary["channels"]},
        "tile_size": config.tile_size,
        "output_size": output_size(config.tile_size, config.depth, config.upsampling),
        "class_names": list(config.class_names),
        "normalization": dict(config.normalization),
        "weight_map": {"enabled": config.weight_map, "w0": config.w0, "sigma": config.sigma,
                       "class_weights": config.class_weights},
        "data": data_summary,
        "training": dataclasses.asdict(config),
        "distribution": distribution or {"strategy": "default", "replicas": 1,
                                         "global_batch": config.batch_size},
    }


def _check_folder(out, overwrite):
    """Refuse a finished model folder unless ``overwrite`` (a backup resumes) or one that
    cannot be written; creates nothing."""
    out = Path(out)
    if (out / MODEL_FILE).exists() and not (out / BACKUP_DIR).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a trained model (use --overwrite / "
                              "overwrite=True to train a new one there)")
    check_writable(out, "model folder")
    return out


def _warn_if_one_class(masks, num_classes):
    present = set()
    for mask in masks:
        present |= set(np.unique(class_labels(mask, num_classes)).tolist())
    if len(present) < 2:
        warnings.warn(f"every training mask holds class {present.pop()} only: the network will "
                      "learn to predict that class everywhere", UserWarning, stacklevel=3)


def train(config, images=None, masks=None, names=None, overwrite=False, callbacks=(),
          verbose="auto", strategy=None):
    """Train a U-Net and write a complete model folder at ``config.out``.

    Args:
        config: a :class:`TrainConfig`.
        images, masks: lists of ``YX``/``YXC`` images and their masks; when ``None`` they are
            read from ``config.images``/``config.masks`` (folders, matched by file name).
        names: a name per image, for the data summary.
        overwrite: replace a finished model folder. A folder with a ``backup/`` (an interrupted
            run) is resumed from the last completed epoch instead.
        callbacks: extra Keras callbacks (``fit`` path only).
        strategy: a ``tf.distribute.Strategy``; default: made from ``config.strategy``.
            Multi-worker runs use a custom loop (see :mod:`unet_tf.distribute`); only the chief
            writes the model folder.

    Returns the best model (lowest validation loss, or training loss without validation).
    """
    config.validate()
    if strategy is None:  # first: multi-worker collectives must be set up before any op runs
        strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    if images is None:
        if not (config.images and config.masks):
            raise ValueError("give images and masks, or set config.images and config.masks")
        from .io import load_pairs
        images, masks, names = load_pairs(config.images, config.masks)
    if names is None:
        names = [f"image {i}" for i in range(len(images))]
    out = _check_folder(config.out, overwrite)
    channels = check_image(images[0], "image 0").shape[2] if len(images) else 1
    check_fits(config.tile_size, config.batch_size, True, config.depth, config.filters,
               config.upsampling, channels, config.num_classes)

    replicas = strategy.num_replicas_in_sync
    train_idx, val_idx = split_images(len(images), config.val_split, config.seed)
    if is_multiworker(strategy):
        train_idx, val_idx = sorted(train_idx + val_idx), []  # see _fit_multiworker
    pick = lambda items, idx: [items[i] for i in idx]
    augmentation = Augmentation(sigma=config.elastic_sigma) if config.augment else False
    common = dict(tile_size=config.tile_size, depth=config.depth, upsampling=config.upsampling,
                  weight_map=config.weight_map, w0=config.w0, sigma=config.sigma,
                  class_weights=config.class_weights, num_classes=config.num_classes,
                  normalization=config.normalization)
    train_data = make_dataset(pick(images, train_idx), pick(masks, train_idx),
                              batch_size=config.batch_size * replicas, augment=augmentation,
                              seed=config.seed, **common)
    val_data = (make_dataset(pick(images, val_idx), pick(masks, val_idx), batch_size=4,
                             validation=True, **common) if val_idx else None)
    _warn_if_one_class(masks, config.num_classes)
    summary = {"images": len(images), "channels": channels,
               "train": pick(names, train_idx), "validation": pick(names, val_idx),
               "shapes": [list(np.shape(i)) for i in images],
               "dtypes": sorted({str(np.asarray(i).dtype) for i in images})}
    if chief:
        out.mkdir(parents=True, exist_ok=True)  # only now: bad data leaves no empty folder
        distribution = {"strategy": config.strategy, "tf_strategy": type(strategy).__name__,
                        "replicas": replicas, "global_batch": config.batch_size * replicas}
        write_atomically(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(
            model_config(config, summary, distribution), indent=2)))

    policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:  # float16 compute; build_unet keeps the logits in float32
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            keras.utils.set_random_seed(config.seed)
            model = build_unet((None, None, channels), config.num_classes, config.depth,
                               config.filters, config.dropout, config.upsampling)
            optimizer = _optimizer(config)
        if is_multiworker(strategy):
            _fit_multiworker(model, optimizer, train_data, strategy, config, out, chief, verbose)
        else:
            _fit_keras(model, optimizer, train_data, val_data, strategy, config, out, callbacks,
                       verbose)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    if not chief:
        return model  # the same weights as the chief's; the folder is the chief's to write
    if not (out / MODEL_FILE).exists():  # e.g. every loss was NaN
        raise RuntimeError(f"training produced no finite loss; no model was saved in {out}")
    return keras.saving.load_model(out / MODEL_FILE, compile=False)  # for inference


def _fit_keras(model, optimizer, train_data, val_data, strategy, config, out, callbacks,
               verbose):
    """One host: Keras ``fit`` (one device, or ``MirroredStrategy`` over its GPUs)."""
    with strategy.scope():
        model.compile(optimizer, weighted_pixel_loss(),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    monitor = "val_loss" if val_data is not None else "loss"
    preview = next(iter(val_data if val_data is not None else train_data))
    fit_callbacks = [
        keras.callbacks.BackupAndRestore(str(out / BACKUP_DIR)),
        BestModelCheckpoint(out / MODEL_FILE, monitor, out / HISTORY_FILE),
        keras.callbacks.CSVLogger(str(out / HISTORY_FILE), append=True),
        keras.callbacks.TensorBoard(str(out / LOGS_DIR), write_graph=False),
        PredictionImages(out / LOGS_DIR, preview[0][:3], preview[1][:3]),
    ]
    if config.early_stopping:
        fit_callbacks.append(keras.callbacks.EarlyStopping(monitor, patience=config.early_stopping))
    model.fit(train_data, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
              validation_data=val_data, callbacks=[*fit_callbacks, *callbacks], verbose=verbose,
              shuffle=False)  # the dataset shuffles itself, reproducibly


def _fit_multiworker(model, optimizer, train_data, strategy, config, out, chief, verbose):
    """Many hosts: the custom loop. It monitors the all-reduced training loss, which every
    worker sees alike, so all take the same save decisions (saving is collective). Validation
    images are therefore trained on rather than left idle."""
    if model.dtype_policy.name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    backup = Backup(out / BACKUP_DIR, model, optimizer, chief)
    start = backup.restore()
    best = best_in_history(out / HISTORY_FILE, "loss")

    def on_epoch_end(epoch, logs):
        nonlocal best
        if logs["loss"] < best:
            best = logs["loss"]
            target = writable_path(out / MODEL_FILE, chief)
            write_atomically(target, model.save)
            if not chief:
                shutil.rmtree(target.parent)
        if chief:
            history = out / HISTORY_FILE
            lines = history.read_text() if history.exists() else "epoch,loss\n"
            write_atomically(history, lambda tmp: Path(tmp).write_text(
                f"{lines}{epoch},{logs['loss']}\n"))
        backup.save(epoch + 1)

    fit_custom_loop(model, optimizer, train_data, strategy, config.epochs, config.steps_per_epoch,
                    on_epoch_end, initial_epoch=start, verbose=verbose not in (0, False))
    backup.finish()


def read_config(folder):
    """The ``config.json`` of a model folder, checked, without loading the model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a unet-tf model folder: {name} is missing")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format_version") != 1:
        version = config.get("format_version") if isinstance(config, dict) else None
        raise ValueError(f"{folder / CONFIG_FILE}: unsupported format_version "
                         f"{version!r}, this unet-tf reads 1")
    missing = [k for k in ("architecture", "tile_size", "normalization") if k not in config]
    if missing:
        raise ValueError(f"{folder / CONFIG_FILE} lacks {missing}: not written by unet-tf train")
    return config


def load_model_folder(folder):
    """``(model, config)`` from a model folder written by :func:`train`."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        # safe_mode (the default): no arbitrary code; compile=False: inference needs no optimizer
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    except Exception as err:
        raise ValueError(f"cannot load {folder / MODEL_FILE}: {err}") from None
    return model, config
