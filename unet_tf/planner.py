"""Good models by default on the user's own machine: data fingerprint, hardware, and a plan
that fits network and training into a time budget.

Like nnU-Net's experiment planning (fingerprint -> rules -> stored plan), plus a time budget:
the chosen network is timed for a few real training steps on this machine and the budget
becomes a step count, once. The plan is printed as a table (setting, value, why) and stored
under ``plan`` in the model folder's ``config.json``; the training settings it chose are in
``training``, so ``unet-tf train --config M/config.json`` repeats the same run anywhere.

Rules, and the measurements behind them (2 CPU cores, held-out real nuclei):
- Adam 1e-3 with cosine decay: the paper's SGD with momentum 0.99 diverged to NaN on a real set
  and learns slowly on a CPU.
- Depth: the context a valid-conv U-Net sees around an output pixel (half its shrink: 44 px at
  depth 4, 92 px at depth 5) should cover the largest objects; depth 4 at least.
- Width 16 on a CPU (the paper's 64 costs ~3 s a step there: hours), 32 on a GPU.
- No class balancing: it pushed boundaries 1-2 px outward (IoU 0.842 vs 0.869 uniform); the
  border term of the weight map is kept, its sigma scaled to the objects (the paper's 5 px
  belong to its pixel size).
"""

import dataclasses
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from .config import FINE_TUNE_WARMUP, HEAD_FROM, MIN_STEPS, TrainConfig
from .images import check_image, normalization_for
from .masks import as_instances, split_ignored
from .memory import GIB, available_bytes
from .model_folder import ModelConfig, fine_tune_source, read_json, weights_digest
from .overlap_tile import percentiles
from .sampling import expected_foreground_share, uniform_foreground_share
from .sizes import input_size_for_output, output_size, size_rule

DEFAULT_BUDGET = {"cpu": 600.0, "gpu": 1800.0}   # seconds: 10 min on a laptop, 30 on a GPU
FINE_TUNE_BUDGET = {"cpu": 120.0, "gpu": 300.0}  # a fine-tune starts from a trained net
FINE_TUNE_RATE = 1e-4      # Adam, a tenth of the from-scratch rate: keep what the source learned
WARMUP_REASON = (f"; a fine-tune's rate rises from 0 over its first {100 * FINE_TUNE_WARMUP:.0f} % "
                 "of steps: Adam's first steps would knock the source's weights")
MIN_EPOCHS = 5             # checkpoints to choose the best model from
TIMED_STEPS = 6            # training steps timed on this machine (after 2 warm-up steps)
PIPELINE_FACTOR = 1.05     # the input pipeline shares the CPU (measured on 2 cores: ~1.0)
EPOCH_SECONDS = 1.0        # checkpoint, history, TensorBoard per epoch
SETUP_SECONDS = 15.0       # model build, graph tracing, data preparation, final load
# From this fraction of touching objects on, the 3-class boundary target (measured: it won on
# the bundled sample, 29 % touching, and lost on Fluo-HeLa, 4 %; the threshold lies between).
BOUNDARY_TOUCHING = 0.15
TUNING_SECONDS_PER_MPX = 10.0  # post-processing tuning: ~40 settings scored per image (measured ~6)
# Training tiles that should hold an annotated object: where uniform tiles hold fewer, enough
# are centred on objects to reach this. Sparse rods (7 frames, 0.5 % foreground; 8 % of uniform
# tiles held one): uniform tiles learned background (F1 0.00); 46 % centred (50 % holding one)
# gave held-out F1 0.977, IoU 0.886, level with the frames cropped to their rods (0.970, 0.869);
# 79 % centred (with no validation image) gave the same F1 and IoU 0.843.
TILES_WITH_OBJECTS = 0.5


# --------------------------------------------------------------------------- fingerprint

def _touching(instances):
    """Labels of the objects that touch another object (4-neighbourhood)."""
    touching = set()
    for a, b in ((instances[1:], instances[:-1]), (instances[:, 1:], instances[:, :-1])):
        pairs = (a != b) & (a > 0) & (b > 0)
        touching.update(np.unique(a[pairs]).tolist())
        touching.update(np.unique(b[pairs]).tolist())
    return touching


def fingerprint(images, masks, num_classes=2, ignore_label=None):
    """What the data is like, in numbers the plan's rules use.

    Args:
        images, masks: sequences of ``YX``/``YXC`` images and ``YX`` masks (instance labels,
            binary masks, or class ids with ``num_classes > 2``).
        ignore_label: the mask value of unannotated pixels; they count neither as objects nor
            as background.

    Returns:
        A JSON-ready dict: image count, sizes, channels, dtypes, intensity range, object count
        and equivalent-diameter percentiles, the fraction of objects touching a neighbour,
        foreground fraction (of the annotated pixels), the annotated fraction and the classes
        present.
    """
    if not len(images) or len(images) != len(masks):
        raise ValueError(f"need as many masks as images (at least one), got {len(images)} "
                         f"images and {len(masks)} masks")
    diameters, touching, objects, foreground, pixels, annotated = [], 0, 0, 0, 0, 0
    lows, highs, classes, fractions, contrasts = [], [], set(), [], []
    for i, (image, mask) in enumerate(zip(images, masks)):
        image = check_image(image, f"image {i}")
        mask, ignored = split_ignored(mask, ignore_label, f"mask {i}")
        instances = as_instances(mask > 0 if num_classes > 2 else mask, f"mask {i}")
        labelled = np.ones(mask.shape, bool) if ignored is None else ~ignored
        areas = np.bincount(instances.ravel())[1:]
        areas = areas[areas > 0]
        diameters.extend((2 * np.sqrt(areas / np.pi)).tolist())
        objects += len(areas)
        touching += len(_touching(instances))
        foreground += int(np.count_nonzero(instances))
        pixels += instances.size
        annotated += int(np.count_nonzero(labelled))
        fractions.append(np.count_nonzero(instances) / max(1, np.count_nonzero(labelled)))
        if 0 < fractions[-1] < 1:   # exposure: objects' median over the background's median
            gray = image.mean(-1) if image.shape[2] > 1 else image[..., 0]
            contrasts.append(float(np.median(gray[instances > 0])
                                   - np.median(gray[(instances == 0) & labelled])))
        low, high = percentiles(image, (1.0, 99.8))
        lows.append(float(low))
        highs.append(float(high))
        classes.update(np.unique(mask[labelled] if num_classes > 2 else mask[labelled] > 0).tolist())
    shapes = [list(np.shape(image)[:2]) for image in images]
    diameter = (np.percentile(diameters, [5, 50, 95]).round(1).tolist() if diameters
                else [0.0, 0.0, 0.0])
    return {
        "images": len(images),
        "shape_min": [min(s[0] for s in shapes), min(s[1] for s in shapes)],
        "shape_max": [max(s[0] for s in shapes), max(s[1] for s in shapes)],
        "channels": int(check_image(images[0]).shape[2]),
        "dtypes": sorted({str(np.asarray(image).dtype) for image in images}),
        "intensity_p1": [min(lows), max(lows)],
        "intensity_p99_8": [min(highs), max(highs)],
        "objects": objects,
        "objects_per_image": round(objects / len(images), 1),
        "diameter_p5_p50_p95": diameter,
        "touching_fraction": round(touching / objects, 3) if objects else 0.0,
        "foreground_fraction": round(foreground / max(1, annotated), 4),
        "foreground_fraction_min": round(float(min(fractions)), 4),
        "annotated_fraction": round(annotated / pixels, 4),
        # how much the exposure differs between images: largest / smallest object contrast
        "contrast_ratio": (round(max(contrasts) / min(contrasts), 2)
                           if contrasts and min(contrasts) > 0 else None),
        "classes_present": sorted(int(c) for c in classes),
    }


# --------------------------------------------------------------------------- hardware

def hardware():
    """This machine: GPUs (name, memory when TensorFlow tells), CPU cores, available RAM."""
    from .backend import tf
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append({"name": details.get("device_name", device.name),
                     "compute_capability": details.get("compute_capability")})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram = available_bytes()
    return {"gpus": gpus, "cpu_cores": cores,
            "available_ram_gib": round(ram / GIB, 1) if ram else None}


# --------------------------------------------------------------------------- budget

def parse_duration(text):
    """Seconds from ``"90s"``, ``"10m"``, ``"1.5h"``, ``"1h30m"`` or a plain number of seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                             r"(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
        if not parts or not any(parts.groups()):
            raise ValueError(f"time budget must look like 90s, 10m, 1.5h or 1h30m, got {text!r}")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"time budget must be positive, got {text!r}")
    return seconds


def format_duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def time_training_step(config, channels, steps=TIMED_STEPS):
    """Seconds per training step of ``config``'s network, tile and batch on this machine
    (the median of ``steps`` after two warm-up steps, with the real loss and optimizer; the
    best of them planned runs up to 12 % over the budget: steps vary that much here)."""
    from .backend import keras
    from .losses import weighted_pixel_loss
    from .model import build_unet
    from .training import make_optimizer
    keras.utils.set_random_seed(config.seed)
    model = build_unet((None, None, channels), config.num_classes, config.depth, config.filters,
                       config.dropout, config.upsampling)
    model.compile(make_optimizer(config), weighted_pixel_loss())
    out = output_size(config.tile_size, config.depth, config.upsampling)
    rng = np.random.default_rng(0)
    x = rng.random((config.batch_size, config.tile_size, config.tile_size, channels), np.float32)
    y = rng.integers(0, config.num_classes, (config.batch_size, out, out)).astype(np.int32)
    w = np.ones((config.batch_size, out, out), np.float32)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        model.train_on_batch(x, y, sample_weight=w)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


# --------------------------------------------------------------------------- the plan

@dataclasses.dataclass
class Plan:
    """Training settings with a reason each, and what they were derived from."""
    settings: dict            # TrainConfig field -> value
    reasons: dict             # TrainConfig field -> why
    fingerprint: dict
    hardware: dict
    time_budget: float | None = None   # seconds
    step_seconds: float | None = None
    estimated_seconds: float | None = None
    tuning_seconds: float | None = None  # post-processing tuning after training (estimated)
    tiles_with_objects: float | None = None  # expected share of training tiles holding an object
    start_from: dict | None = None     # a fine-tune's source: folder, weights_sha256, trained_on

    def config(self, **fixed):
        """The :class:`TrainConfig` of this plan (``fixed``: out, images, masks, ...)."""
        return TrainConfig(**{**self.settings, **fixed})

    def table(self):
        rows = [(name, _show(value), self.reasons.get(name, "")) for name, value
                in self.settings.items()]
        width = [max(len(r[i]) for r in [*rows, ("setting", "value", "")]) for i in (0, 1)]
        lines = [f"{'setting'.ljust(width[0])}  {'value'.ljust(width[1])}  why"]
        lines += [f"{n.ljust(width[0])}  {v.ljust(width[1])}  {why}" for n, v, why in rows]
        return "\n".join(lines)

    def to_dict(self):
        return dataclasses.asdict(self)


def _show(value):
    if isinstance(value, dict) and "method" in value:   # a normalization entry
        return (f"dataset {value['range'][0]:g}..{value['range'][1]:g}"
                if value["method"] == "dataset" else f"image {value['low']:g}-{value['high']:g} %")
    return f"{value:g}" if isinstance(value, float) else str(value)


def _architecture(fp, gpu):
    """Depth, width, tile and batch, with reasons."""
    large = fp["diameter_p5_p50_p95"][2]
    settings = {"upsampling": "transpose", "dropout": 0.0}
    reasons = {"upsampling": "the paper's up-convolution (--preset edge for the Edge TPU)",
               "dropout": "off, as in every recipe we measured on held-out nuclei"}
    for depth in (4, 5):
        context = size_rule(depth)[2] // 2
        if context >= large:
            break
    settings["depth"] = depth
    reasons["depth"] = (f"sees {context} px around each pixel, >= the largest objects "
                        f"({large:g} px, 95th percentile)" if context >= large else
                        f"objects up to {large:g} px: the deepest net we plan ({context} px context)")
    settings["filters"] = 32 if gpu else 16
    reasons["filters"] = ("a GPU affords twice the CPU width" if gpu else
                          "the paper's 64 costs ~10x the time per step on a CPU; 16 reached "
                          "IoU 0.87-0.88 on held-out nuclei in minutes")
    settings["tile_size"], reasons["tile_size"] = _tile(fp, depth, "transpose", gpu)
    settings["batch_size"] = 8 if gpu else 4
    reasons["batch_size"] = ("GPU throughput" if gpu else
                             "4 tiles: steady gradients, no slower per pixel on 2-8 cores")
    return settings, reasons


def _tile(fp, depth, upsampling, gpu):
    """The training tile for this data's objects, with its reason."""
    # On a CPU, at a fixed budget, more steps beat larger tiles: on Fluo-HeLa 1000 steps of
    # 188 tiles gave F1 0.888, 420 steps of 252 tiles 0.831, both in ~7.5 minutes.
    target = int(np.clip(3 * fp["diameter_p5_p50_p95"][2], 96, 192)) if not gpu else 388
    needed = min(fp["shape_min"])  # a tile need not be larger than the smallest image needs
    out = min(target, max(needed, size_rule(depth, upsampling)[1]))
    tile = input_size_for_output(out, depth, upsampling)
    capped = " (capped by the image size)" if needed < target else ""
    return tile, (f"output {output_size(tile, depth, upsampling)} px, ~3 objects across{capped}:"
                  " on a CPU more steps beat larger tiles" if not gpu
                  else "the paper's output size (388), for GPU throughput")


def _fine_tune(fp, source, folder, images, gpu, planned_target, reasons):
    """What a fine-tune from ``source`` (a :class:`~unet_tf.model_folder.ModelConfig`) takes
    over, with reasons (``reasons``: the plan's so far, extended): the architecture (its weights
    need it), the normalisation (its weights expect it) unless this data rules it out, the
    classes of a class-id source; a lower learning rate. The target stays planned for this
    data's objects (a new head where it differs from the source's, started from the source's
    classes that hold its own: the planner's rule on touching objects held on both real
    sets), the tile too, at the source's depth."""
    a = source.architecture
    settings = {name: getattr(a, name) for name in ("depth", "filters", "upsampling", "dropout")}
    reasons.update({name: f"the source's ({folder}): its weights need it" for name in settings})
    settings["tile_size"], reasons["tile_size"] = _tile(fp, a.depth, a.upsampling, gpu)
    if source.training.target == "classes":   # class ids: the source's classes, its head
        settings["target"], settings["num_classes"] = "classes", a.num_classes
        settings["class_names"] = list(source.class_names)
        reasons["target"] = "the source's classes: its classifier head carries over"
    elif (source.training.target, planned_target) in HEAD_FROM:
        reasons["target"] += (f" (a new head, started from the source's "
                              f"{source.training.target} classes that hold its own)")
    elif source.training.target != planned_target:
        reasons["target"] += f" (a new head: the source's is for {source.training.target})"
    else:
        reasons["target"] += " (the source's too: its head carries over)"
    settings["normalization"] = dict(source.normalization)
    reasons["normalization"] = "the source's: its weights expect images scaled so"
    if source.normalization["method"] == "dataset":
        lo, hi = source.normalization["range"]
        here = normalization_for("dataset", images)["range"]
        overlap = max(0.0, min(hi, here[1]) - max(lo, here[0])) / (here[1] - here[0])
        if overlap < 0.5:
            settings["normalization"] = normalization_for("image", images)
            reasons["normalization"] = (
                f"the source's dataset range {lo:g}..{hi:g} covers {100 * overlap:.0f} % of "
                f"this data's {here[0]:g}..{here[1]:g}: each image is stretched on its own")
    if source.training.target == settings.get("target", planned_target):
        settings["learning_rate"] = FINE_TUNE_RATE
        reasons["learning_rate"] = ("Adam at a tenth of the from-scratch rate: adapt, keep "
                                    "what the source learned")
    else:
        reasons["learning_rate"] += (" (the head is new: a 2-minute fine-tune learned more "
                                     "at this rate than at a tenth)")
    reasons["lr_schedule"] += WARMUP_REASON
    return settings


def _normalization(fp):
    """Per-image percentiles (the field's habit: robust to exposure changing between images),
    or one range for the dataset when exposure is steady and some images hold few objects
    (per-image stretching would turn their background noise into speckle)."""
    ratio = fp["contrast_ratio"]
    steady = len(fp["dtypes"]) == 1 and ratio is not None and ratio <= 1.5
    sparse = fp["foreground_fraction_min"] < 0.25 * fp["foreground_fraction"]
    if fp["images"] > 1 and steady and sparse:
        return "dataset", (f"object contrast agrees across images (ratio {ratio:g}) and some "
                           f"images hold few objects "
                           f"({100 * fp['foreground_fraction_min']:.1f} % foreground): one range "
                           "keeps their background dark")
    why = ("object contrast cannot be compared (objects darker than the background, or "
           "images without objects): each image is stretched on its own"
           if ratio is None and fp["images"] > 1 else
           f"object contrast differs between images (ratio {ratio}): each image is stretched "
           "on its own" if not steady and fp["images"] > 1 else
           "per-image 1-99.8 percentiles (the field's habit): every image holds objects"
           if fp["images"] > 1 else "one image: its own 1-99.8 percentiles")
    return "image", why


def _training(fp):
    """Optimizer, weight map, augmentation and validation, with reasons."""
    middle = fp["diameter_p5_p50_p95"][1] or 10.0
    border = float(np.clip(round(middle / 6, 1), 2.0, 8.0))
    elastic = float(np.clip(round(middle / 3, 1), 3.0, 10.0))
    n = fp["images"]
    touching = fp["touching_fraction"]
    settings = {
        "target": "boundary" if touching >= BOUNDARY_TOUCHING else "foreground",
        "optimizer": "adam", "learning_rate": 1e-3, "lr_schedule": "cosine",
        "weight_map": True, "w0": 10.0, "border_sigma": border, "class_weights": None,
        "augment": True, "elastic_sigma": elastic, "val_split": 0.2 if n >= 4 else 0.0,
    }
    reasons = {
        "target": (f"{100 * touching:.0f} % of objects touch: 3 classes (background, interior, "
                   "boundary) part them on the predicted boundary (bundled sample, 29 % touching: "
                   "F1 0.93 against 0.90 for 2 classes)" if touching >= BOUNDARY_TOUCHING else
                   f"{100 * touching:.0f} % of objects touch: 2 classes, touching ones split by a "
                   "watershed tuned after training (Fluo-HeLa, 4 % touching: F1 0.95 against "
                   "0.93 for 3 classes)"),
        "optimizer": "Adam: SGD with momentum 0.99 (the paper) diverged to NaN on real data",
        "learning_rate": "Adam's default; cosine decay to 0 gives a steady end",
        "lr_schedule": "decays over exactly the planned steps",
        "weight_map": (f"{100 * fp['touching_fraction']:.0f} % of objects touch a neighbour: "
                       "the border term teaches the gaps"),
        "w0": "the paper's border weight",
        "border_sigma": f"median object {middle:g} px / 6 (the paper's 5 px fit its cells)",
        "class_weights": "no class balancing: it pushed boundaries outward on real nuclei",
        "augment": ("flips, rotations, elastic; gray values: gamma, uneven gain (dim and "
                    "bright objects), contrast, blur, noise"),
        "elastic_sigma": f"median object {middle:g} px / 3 (paper: 10 px)",
        "val_split": ("20 % of whole images checkpoint the best model" if n >= 4 else
                      f"{n} image(s): all train; the best model by training loss"),
    }
    return settings, reasons


def _sampling(masks, out, ignore_label, foreground_tiles=None):
    """``(foreground_tiles, reason, expected share of tiles holding an object)``: the share
    of tiles to centre on objects so that :data:`TILES_WITH_OBJECTS` of them hold one (or the
    given ``foreground_tiles``), from what uniform ``out``-px windows of these masks hold."""
    shares, has_objects = [], []
    for i, mask in enumerate(masks):
        mask, ignored = split_ignored(mask, ignore_label, f"mask {i}")
        shares.append(uniform_foreground_share(mask, out, ignored))
        has_objects.append(bool(mask.any()))
    uniform = expected_foreground_share(shares, has_objects, 0.0)
    gain = expected_foreground_share(shares, has_objects, 1.0) - uniform
    given = foreground_tiles is not None
    if not given:
        needed = (TILES_WITH_OBJECTS - uniform) / gain if gain > 0 else 0.0
        foreground_tiles = float(np.clip(math.ceil(100 * needed) / 100, 0.0, 1.0))
    expected = expected_foreground_share(shares, has_objects, foreground_tiles)
    seen = (f"uniform {out}-px windows hold an annotated object in {100 * uniform:.0f} % of "
            "tiles")
    if given:
        reason = f"given; {seen}, so ~{100 * expected:.0f} % hold one"
    elif foreground_tiles == 0:
        reason = f"{seen}: none need centring (>= {100 * TILES_WITH_OBJECTS:.0f} %)"
    else:
        reason = (f"{seen} (sparse objects): {100 * foreground_tiles:.0f} % are centred on a "
                  f"random object, so ~{100 * expected:.0f} % hold one")
    return foreground_tiles, reason, round(expected, 4)


def _costs(step_seconds, validation_tiles):
    """Seconds per training step (input pipeline included) and per epoch's end (validation
    forward passes, ~1/3 of a step per batch, and the checkpoint)."""
    return (step_seconds * PIPELINE_FACTOR,
            EPOCH_SECONDS + validation_tiles * step_seconds / 3)


def tuning_seconds(step_seconds, tiles, megapixels):
    """Seconds to tune the post-processing after training: predicting its images (``tiles``
    batches, a forward pass ~1/3 of a step) and scoring the settings on them."""
    return tiles * step_seconds / 3 + TUNING_SECONDS_PER_MPX * megapixels


def minimum_budget(step_seconds, validation_tiles=0, tuning=0.0):
    """Seconds for the shortest useful run: :data:`MIN_EPOCHS` epochs of
    :data:`MIN_STEPS` steps in all, set-up and ``tuning`` seconds included."""
    per_step, per_epoch = _costs(step_seconds, validation_tiles)
    return SETUP_SECONDS + tuning + MIN_STEPS * per_step + MIN_EPOCHS * per_epoch


def fill_budget(budget, step_seconds, validation_tiles, tuning):
    """``(epochs, steps_per_epoch, estimated_seconds)`` filling ``budget``, or a
    ``ValueError`` naming the minimum budget that works."""
    minimum = minimum_budget(step_seconds, validation_tiles, tuning)
    if budget < minimum:
        raise ValueError(f"a time budget of {format_duration(budget)} is too short for a useful "
                         f"model on this machine ({step_seconds:.2f} s per training step, "
                         f"{MIN_STEPS} steps at least): use --time-budget "
                         f"{format_duration(math.ceil(minimum / 10) * 10)} or more")
    per_step, per_epoch = _costs(step_seconds, validation_tiles)
    for steps_per_epoch in (100, MIN_STEPS // MIN_EPOCHS):   # at least MIN_EPOCHS checkpoints
        epochs = int((budget - SETUP_SECONDS - tuning) / (steps_per_epoch * per_step + per_epoch)
                     + 1e-9)
        if epochs >= MIN_EPOCHS:
            break
    estimate = SETUP_SECONDS + tuning + epochs * (steps_per_epoch * per_step + per_epoch)
    return epochs, steps_per_epoch, estimate


def make_plan(images, masks, time_budget=None, overrides=None, machine=None,
              step_timer=time_training_step, at_least_minimum=False):
    """Plan a training run for ``images``/``masks`` on this machine within ``time_budget``.

    Args:
        images, masks: the training data (``YX``/``YXC`` images, ``YX`` masks).
        time_budget: seconds, or a string such as ``"10m"``; default 10 minutes without a GPU,
            30 minutes with one.
        overrides: TrainConfig settings chosen by the user; each replaces the plan's choice
            (``epochs``/``steps_per_epoch`` given: no budget is applied).
        machine: a :func:`hardware` description (default: this machine's).
        step_timer: ``(config, channels) -> seconds per step`` (tests pass a fake).
        at_least_minimum: raise a budget below the minimum to it instead of refusing it
            (the demo: it must run on slow machines too).

    Returns:
        A :class:`Plan`; ``plan.config(out=...)`` is the :class:`TrainConfig` to train.

    Raises:
        ValueError: bad data or settings, or a budget too short (the message names the
            minimum that works).
    """
    overrides = dict(overrides or {})
    ignore_label = overrides.get("ignore_label")
    fp = fingerprint(images, masks, overrides.get("num_classes", 2), ignore_label)
    machine = machine or hardware()
    gpu = bool(machine["gpus"])
    settings, reasons = _architecture(fp, gpu)
    more, why = _training(fp)
    settings.update(more)
    reasons.update(why)
    settings["normalization"], reasons["normalization"] = _normalization(fp)
    source = overrides.get("start_from")
    if source:
        source_config = fine_tune_source(source, fp["channels"], overrides)
        settings.update(_fine_tune(fp, source_config, source, images, gpu,
                                   overrides.get("target", settings["target"]), reasons))
        if {"target", "num_classes", "class_names"} & set(overrides):   # a new head
            for name in ("target", "num_classes", "class_names"):
                if name not in overrides:
                    settings.pop(name, None)
    for name, value in overrides.items():
        settings[name] = value
        reasons[name] = "given"
    if isinstance(settings["normalization"], str):   # "image" / "dataset" -> the entry
        settings["normalization"] = normalization_for(settings["normalization"], images)
    budget = parse_duration(time_budget) if time_budget is not None else \
        (FINE_TUNE_BUDGET if source else DEFAULT_BUDGET)["gpu" if gpu else "cpu"]
    TrainConfig(**settings).validate()  # the tile is valid before windows of it are measured
    out = output_size(settings["tile_size"], settings["depth"], settings["upsampling"])
    settings["foreground_tiles"], why, expected = _sampling(
        masks, out, ignore_label, overrides.get("foreground_tiles"))
    reasons["foreground_tiles"] = why
    config = TrainConfig(**settings)
    plan = Plan(settings, reasons, fp, machine, tiles_with_objects=expected)
    if source:
        reasons["start_from"] = "given: fine-tune its weights"
        plan.start_from = {"folder": str(Path(source).resolve()),
                           "weights_sha256": weights_digest(source),
                           "trained_on": source_config.data.get("train")}
    if "epochs" in overrides or "steps_per_epoch" in overrides:
        settings.setdefault("epochs", config.epochs)
        settings.setdefault("steps_per_epoch", config.steps_per_epoch)
        return plan
    plan.time_budget = budget
    plan.step_seconds = step_timer(config, fp["channels"])
    val_images = round(fp["images"] * config.val_split) if config.val_split else 0
    pixels = np.mean([s[0] * s[1] for s in (fp["shape_min"], fp["shape_max"])])
    tiles = val_images * math.ceil(pixels / out ** 2) / config.batch_size
    tuned_on = val_images or fp["images"]  # the validation images, else the training images
    tuning = plan.tuning_seconds = (0.0 if config.target == "classes" else tuning_seconds(
        plan.step_seconds, tuned_on * math.ceil(pixels / out ** 2) / config.batch_size,
        tuned_on * pixels / 1e6))
    if at_least_minimum:
        budget = plan.time_budget = max(budget, minimum_budget(plan.step_seconds, tiles, tuning))
    epochs, steps, plan.estimated_seconds = fill_budget(budget, plan.step_seconds, tiles, tuning)
    settings["epochs"], settings["steps_per_epoch"] = epochs, steps
    reasons["epochs"] = (f"{epochs * steps} steps of {plan.step_seconds:.3f} s (timed here) fill "
                         f"the {format_duration(budget)} budget: ~{format_duration(plan.estimated_seconds)}")
    reasons["steps_per_epoch"] = "an epoch ends with validation and a checkpoint"
    return plan


# --------------------------------------------------------------------------- runs
# One resolution of a run's settings for the CLI, the napari Train widget and the demo.

def configure_run(images, masks, given=None, time_budget=None, preset=None,
                  at_least_minimum=False, fixed=None):
    """``(config, plan)`` of a training run on ``images``/``masks``: a ``preset``'s settings
    (``plan`` is then ``None``), else the plan for this data and machine within ``time_budget``.
    ``given`` settings beat both; ``fixed`` ones (``out``, the ``images``/``masks`` folders) are
    recorded as they are."""
    given, fixed = dict(given or {}), dict(fixed or {})
    if given.get("start_from"):   # recorded absolute, so the run repeats from anywhere
        given["start_from"] = str(Path(given["start_from"]).resolve())
    if preset:
        if time_budget:
            raise ValueError("a time budget plans the run; a preset keeps its own settings")
        if given.get("start_from"):
            raise ValueError("a fine-tune keeps its source's architecture; a preset names "
                             "another: leave the preset out")
        return TrainConfig.from_preset(preset, **fixed, **_with_normalization(given, images)), None
    plan = make_plan(images, masks, time_budget, given, at_least_minimum=at_least_minimum)
    return plan.config(**fixed), plan


def repeat_run(config_json, given=None, fixed=None):
    """``(config, plan, (images, masks, names))`` that repeat the run of a model folder's
    ``config.json``: its training settings and data folders, with ``given`` and ``fixed``
    (``out``; ``images``/``masks`` folders, where not ``None``) over them."""
    from .io import load_pairs
    stored = read_json(config_json)
    if not isinstance(stored, dict) or "training" not in stored:
        raise ValueError(f"{config_json} has no 'training' settings: pass a model folder's "
                         "config.json")
    stored = ModelConfig.from_dict(stored, source=str(config_json))
    settings = {**dataclasses.asdict(stored.training), **dict(given or {}),
                **{name: value for name, value in (fixed or {}).items() if value is not None}}
    if settings.get("voxel_size"):   # a 3-D run: each file one volume
        from .volume_files import load_volume_pairs
        data = load_volume_pairs(settings.get("images"), settings.get("masks"))[:3]
    else:
        data = load_pairs(settings.get("images"), settings.get("masks"))
    return TrainConfig.from_dict(_with_normalization(settings, data[0])), stored.plan, data


def _with_normalization(settings, images):
    """``settings`` with a normalisation name ("image"/"dataset") made the config entry for
    ``images``, as :func:`make_plan` does for planned runs."""
    if not isinstance(settings.get("normalization"), str):
        return settings
    return {**settings, "normalization": normalization_for(settings["normalization"], images)}
