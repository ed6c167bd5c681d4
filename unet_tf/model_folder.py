"""The self-describing model folder: what ``train`` writes and every other command reads.

    MODEL_DIR/
      model.keras    best model by validation loss (training loss without validation images);
                     loads with keras.saving.load_model after ``import unet_tf.layers``
      config.json    a :class:`ModelConfig`: architecture, tile geometry, normalisation,
                     classes, post-processing, training settings, data summary, plan, versions
      history.csv    one row per epoch
      logs/          TensorBoard: scalars and prediction images
      backup/        only while training runs: BackupAndRestore resumes a killed run from here
      export/        what ``unet-tf export`` writes (see :mod:`unet_tf.exporters`)

``config.json`` is read only through :func:`read_config`, which turns every format version this
release knows into one :class:`ModelConfig`. Its top level is what the saved net is and how to
feed it (the only part prediction and the TensorFlow-free kit in ``export/`` read); ``training``
is how it was made (what ``train --config`` repeats).

Format versions (``format_version``):
  1  unet-tf <= 0.4.0: also a ``weight_map`` block, a copy of the training settings.
  2  this release.

Plain Python: reading a config loads no TensorFlow; only :func:`load_model_folder` does.
Prediction, evaluation and export depend on this module, never on the training loop.
"""

import dataclasses
import datetime
import json
from pathlib import Path

from .config import TrainConfig, valid_normalization
from .errors import InvalidType
from .instances import DEFAULT_SETTINGS, INSTANCE_TARGETS
from .io import write_atomically
from .sizes import output_size
from .volume_sizes import volume_output_shape
from .version import __version__

MODEL_FILE, CONFIG_FILE, HISTORY_FILE, BACKUP_DIR, LOGS_DIR, EXPORT_DIR = (
    "model.keras", "config.json", "history.csv", "backup", "logs", "export")
FORMAT = "unet-tf model folder"
# What can run a folder: its Keras model, or a TFLite export (LiteRT: see unet_tf.variants).
RUNTIMES = ("keras", "litert")
FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The saved net: what :func:`unet_tf.build_unet` was called with, or, for a volume net,
    :func:`unet_tf.build_unet_3d` with ``pools`` and ``kernels`` (per level, per Z, Y, X axis;
    ``None`` for a 2-D net)."""
    depth: int
    filters: int
    upsampling: str
    dropout: float
    num_classes: int
    channels: int
    pools: list | None = None
    kernels: list | None = None

    @property
    def is_volume(self):
        return self.pools is not None

    @property
    def plan(self):
        """``{"pools": ..., "kernels": ...}`` of a volume net (as tuples), else ``None``."""
        return ({"pools": [tuple(p) for p in self.pools],
                 "kernels": [tuple(k) for k in self.kernels]} if self.is_volume else None)


# What a fine-tune takes from its source as it is: the weights' shapes depend on these.
ARCHITECTURE_SETTINGS = ("depth", "filters", "upsampling")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A model folder's ``config.json`` (see the module docstring); ``from_dict``/``to_dict``
    round-trip it, :meth:`replace` gives a changed copy.

    ``postprocessing`` holds the settings of :func:`unet_tf.instances.label_image` and, once
    tuned, the tuning report (``f1_before``, ``f1_after``, ...); :attr:`postprocessing_settings`
    is the settings alone. ``plan`` is what the planner derived and why (``None``: settings given
    by hand); ``sampling`` the share of training tiles that held an object.
    """
    architecture: Architecture
    tile_size: int
    class_names: tuple
    normalization: dict
    postprocessing: dict
    training: TrainConfig
    data: dict = dataclasses.field(default_factory=dict)
    distribution: dict = dataclasses.field(default_factory=dict)
    plan: dict | None = None
    sampling: dict | None = None
    versions: dict = dataclasses.field(default_factory=dict)  # unet_tf, tensorflow, keras
    created: str | None = None
    voxel_size: list | None = None   # Z, Y, X of the training volumes (volume nets only)

    @property
    def is_volume(self):
        return self.architecture.is_volume

    @classmethod
    def for_run(cls, config, data_summary, distribution=None, plan=None, versions=None):
        """The config a training run with :class:`~unet_tf.config.TrainConfig` ``config`` on
        data described by ``data_summary`` (``channels``, ...) starts its folder with."""
        axes = {"pools": None, "kernels": None}
        if config.is_volume:
            axes = {k: [list(level) for level in v] for k, v in config.volume_plan.items()}
        return cls(
            architecture=Architecture(config.depth, config.filters, config.upsampling,
                                      config.dropout, config.num_classes,
                                      data_summary["channels"], **axes),
            tile_size=config.tile_size, voxel_size=config.voxel_size, class_names=tuple(config.class_names),
            normalization=dict(config.normalization),
            postprocessing=default_postprocessing(config.target),
            training=config, data=dict(data_summary),
            distribution=distribution or {"strategy": "default", "replicas": 1,
                                          "global_batch": config.batch_size},
            plan=plan, versions={"unet_tf": __version__, "tensorflow": None, "keras": None,
                                 **(versions or {})},
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    # ----------------------------------------------------------------------- derived

    @property
    def output_size(self):
        """The output tile of the training tile (what the kit's fixed-shape exports use)."""
        a = self.architecture
        if a.is_volume:
            return list(volume_output_shape(tuple(self.tile_size), a.plan))
        return output_size(self.tile_size, a.depth, a.upsampling)

    @property
    def target(self):
        """``"foreground"``, ``"boundary"`` or ``"classes"``: what the net's classes mean."""
        return self.postprocessing["target"]

    @property
    def postprocessing_settings(self):
        """The settings of :func:`unet_tf.instances.label_image`, without the tuning report."""
        return {k: self.postprocessing[k] for k in ("target", *DEFAULT_SETTINGS)
                if k in self.postprocessing}

    @property
    def fingerprint(self):
        """The planner's data fingerprint (object sizes, ...); ``{}`` without a plan."""
        return (self.plan or {}).get("fingerprint") or {}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------- JSON

    def to_dict(self):
        """The ``config.json`` of the current format."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "unet_tf_version": self.versions.get("unet_tf", __version__),
            "tensorflow_version": self.versions.get("tensorflow"),
            "keras_version": self.versions.get("keras"),
            "created": self.created,
            "architecture": {k: v for k, v in dataclasses.asdict(self.architecture).items()
                             if v is not None or k not in ("pools", "kernels")},  # 2-D: as before
            "tile_size": self.tile_size, "output_size": self.output_size,
            **({"voxel_size": list(self.voxel_size)} if self.is_volume else {}),
            "class_names": list(self.class_names),
            "normalization": dict(self.normalization),
            "data": self.data, "training": dataclasses.asdict(self.training),
            "distribution": self.distribution, "plan": self.plan,
            "postprocessing": self.postprocessing, "sampling": self.sampling,
        }

    @classmethod
    def from_dict(cls, values, source="config.json"):
        """Read any known format version; ``ValueError`` naming ``source`` and what is wrong."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(values).__name__}")
        version = values.get("format_version")
        if version not in READERS:
            raise ValueError(f"{source}: unsupported format_version {version!r}, this unet-tf "
                             f"{__version__} reads {sorted(READERS)}")
        missing = [k for k in ("architecture", "tile_size", "normalization") if k not in values]
        if missing:
            raise ValueError(f"{source} lacks {missing}: not written by unet-tf train")
        try:
            config = READERS[version](values)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: broken entry {err} (format_version {version})") from None
        config.validate(source)
        return config

    def validate(self, source="config.json"):
        """``ValueError`` naming the first entry that cannot describe a working net."""
        a = self.architecture
        for name in ("depth", "filters", "num_classes", "channels"):
            value = getattr(a, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidType(f"{source}: architecture.{name} must be an integer >= 1, "
                                  f"got {value!r}")
        try:
            self.output_size
        except ValueError as err:
            raise ValueError(f"{source}: tile_size {self.tile_size!r}: {err}") from None
        checks = [
            (a.num_classes >= 2, f"architecture.num_classes must be >= 2, got {a.num_classes}"),
            (len(self.class_names) == a.num_classes,
             f"class_names must name {a.num_classes} classes, got {list(self.class_names)}"),
            (valid_normalization(self.normalization),
             f"normalization is not one unet-tf writes: {self.normalization!r}"),
            (not a.is_volume or (isinstance(self.voxel_size, (list, tuple))
                                 and len(self.voxel_size) == 3),
             f"a 3-D net needs its voxel_size (Z, Y, X), got {self.voxel_size!r}"),
            (self.target in (*INSTANCE_TARGETS, "classes"),
             f"postprocessing.target must be one of {(*INSTANCE_TARGETS, 'classes')}, got "
             f"{self.target!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{source}: {message}")


def fine_tune_source(folder, channels, settings=None):
    """The :class:`ModelConfig` of ``folder`` as the start of a fine-tune on images with
    ``channels`` channels, checked before any work: a ``ValueError`` when it is not a model
    folder, its net takes another channel count, or ``settings`` (a TrainConfig's fields)
    ask for another architecture (a fine-tune keeps the source's, to keep its weights)."""
    try:
        source = read_config(folder)
    except FileNotFoundError as err:
        raise ValueError(f"cannot fine-tune: {err}") from None
    a = source.architecture
    if a.is_volume != bool((settings or {}).get("voxel_size")):
        raise ValueError(f"cannot fine-tune from {folder}: it is a "
                         f"{'3-D' if a.is_volume else '2-D'} net, these are "
                         f"{'volumes' if not a.is_volume else '2-D images'}")
    if a.channels != channels:
        raise ValueError(f"cannot fine-tune from {folder}: its net takes {a.channels}-channel "
                         f"images, these have {channels}")
    for name in ARCHITECTURE_SETTINGS:
        given = (settings or {}).get(name, getattr(a, name))
        if given != getattr(a, name):
            raise ValueError(f"a fine-tune keeps the source's architecture: {folder} has "
                             f"{name} {getattr(a, name)!r}, got {given!r} (leave it out)")
    return source


def weights_digest(folder):
    """SHA-256 of a model folder's ``model.keras``: which weights a fine-tune started from."""
    import hashlib
    digest = hashlib.sha256()
    with open(Path(folder) / MODEL_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_postprocessing(target):
    """What labels a net's output before (or without) tuning: class ids for a multi-class net,
    else :data:`unet_tf.instances.DEFAULT_SETTINGS` for ``target``."""
    return {"target": "classes"} if target == "classes" else {**DEFAULT_SETTINGS,
                                                               "target": target}


def _from_format2(values):
    architecture = Architecture(**values["architecture"])
    training = TrainConfig.from_dict(values.get("training") or {
        "depth": architecture.depth, "filters": architecture.filters,
        "upsampling": architecture.upsampling, "num_classes": architecture.num_classes,
        "tile_size": values["tile_size"], "normalization": values["normalization"]})
    # Folders written before post-processing was tuned labelled the argmax foreground's
    # connected components (class ids for a multi-class net): they keep doing so.
    target = "classes" if architecture.num_classes > 2 else "foreground"
    return ModelConfig(
        architecture=architecture, tile_size=values["tile_size"],
        class_names=tuple(values.get("class_names") or training.class_names),
        normalization=values["normalization"],
        postprocessing=values.get("postprocessing") or default_postprocessing(target),
        training=training, data=values.get("data") or {},
        distribution=values.get("distribution") or {}, plan=values.get("plan"),
        sampling=values.get("sampling"), voxel_size=values.get("voxel_size"),
        versions={"unet_tf": values.get("unet_tf_version"),
                  "tensorflow": values.get("tensorflow_version"),
                  "keras": values.get("keras_version")},
        created=values.get("created"))


def _from_format1(values):
    # The "weight_map" block repeated training's weight_map, w0, border_sigma, class_weights.
    return _from_format2({k: v for k, v in values.items() if k != "weight_map"})


READERS = {1: _from_format1, 2: _from_format2}


def read_config(folder):
    """The :class:`ModelConfig` of a model folder, checked, without loading the model (nor
    TensorFlow)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a unet-tf model folder: {name} is missing")
    return config_from_file(folder / CONFIG_FILE)


def read_json(path):
    """The JSON value in the file at ``path``; a missing file or broken JSON says which."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def config_from_file(path):
    """The :class:`ModelConfig` in the ``config.json`` at ``path``."""
    return ModelConfig.from_dict(read_json(path), source=str(path))


def write_config(folder, config):
    """Write ``folder/config.json`` (atomically) for a :class:`ModelConfig`."""
    text = json.dumps(config.to_dict(), indent=2)
    write_atomically(Path(folder) / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def update_config(folder, **changes):
    """Replace fields of ``folder/config.json`` (atomically); returns the new config."""
    config = config_from_file(Path(folder) / CONFIG_FILE).replace(**changes)
    write_config(folder, config)
    return config


def load_model_folder(folder):
    """``(model, config)`` from a model folder written by :func:`unet_tf.train`: the Keras
    model and its :class:`ModelConfig`."""
    from . import layers  # noqa: F401  (registers the two layers every model.keras holds)
    from .backend import keras
    folder = Path(folder)
    config = read_config(folder)
    try:
        # safe_mode (the default): no arbitrary code; compile=False: inference needs no optimizer
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    except Exception as err:
        raise ValueError(f"cannot load {folder / MODEL_FILE}: {err}") from None
    return model, config
