"""The plan of a 3-D training run: the volumes' fingerprint (voxel size, anisotropy, object
sizes in voxels and in physical units), the net's per-axis plan, a tile by memory, and the
steps that fill the time budget, each with its reason (the 2-D planner's :class:`Plan`).

Rules (2 CPU cores; held-out real stacks):
- Depth 3 on a CPU, 4 with a GPU: a valid 3x3x3 net loses 40 voxels per fine axis at depth 3
  and 88 at depth 4, so a depth-4 tile costs ~3x the voxels for the same output.
- Width 16 on a CPU, 32 with a GPU (Cicek et al.'s 32).
- The axes plan follows the voxel size (:func:`unet_tf.volume_sizes.plan_axes`), fitted to the
  smallest volume's extent (a 5-slice stack keeps its z unpooled).
- The tile: the largest whose activations fit :data:`TILE_MEMORY` (training), covering the
  volume's extent where it can; batch 1.
- Adam 1e-3 with cosine decay, as in 2-D; half the tiles centred on objects (volumes hold few).
- A fine-tune (``start_from``) keeps the source's net (depth, width, per-axis plan: its weights
  need them; volumes whose voxel size plans another net are refused), its normalisation and
  head, at a tenth of the learning rate, within the fine-tune budget (2m on a CPU) or the
  shortest useful run where that is longer (3-D steps are slow).
"""

import math
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .images import check_volume, normalization_for
from .masks import as_instances, split_ignored
from .model_folder import fine_tune_source, weights_digest
from .planner import (DEFAULT_BUDGET, FINE_TUNE_BUDGET, FINE_TUNE_RATE, WARMUP_REASON, Plan,
                      fill_budget, format_duration, hardware, minimum_budget, parse_duration)
from .volume_sizes import plan_axes, volume_output_shape, voxel_text
from .memory import volume_tile_shape

TILE_MEMORY = {"cpu": 256 * 2 ** 20, "gpu": 2 * 2 ** 30}   # activations of one training tile
TUNING_SECONDS_PER_MVOXEL = 10.0   # 3-D post-processing tuning (measured ~6 s per Mvoxel)
# The 3-D input pipeline (weight maps, 3-D deformation) takes a larger share of a CPU than the
# 2-D one: two 10-minute CHO runs took 1.13-1.16x the estimate made with the 2-D factor alone.
VOLUME_PIPELINE_FACTOR = 1.15


def volume_fingerprint(volumes, masks, voxel_size, ignore_label=None):
    """What the plan is derived from: shapes, channels, the voxel size and anisotropy, and the
    annotated objects' count and sizes (voxels, and equivalent diameters in voxel units)."""
    channels = {check_volume(v, f"volume {i}").shape[3] for i, v in enumerate(volumes)}
    if len(channels) > 1:
        raise ValueError(f"the volumes have different channel counts {sorted(channels)}")
    sizes = []
    for i, mask in enumerate(masks):
        mask = split_ignored(mask, ignore_label, f"mask {i}", ndim=3)[0]
        counts = np.bincount(as_instances(mask, f"mask {i}", 3).ravel())[1:]
        sizes.extend(counts[counts > 0].tolist())
    if not sizes:
        raise ValueError("the masks hold no objects: nothing to learn")
    cell = float(np.prod(voxel_size))
    diameters = [2 * (3 * s * cell / (4 * math.pi)) ** (1 / 3) for s in sizes]
    shapes = [list(np.shape(v)[:3]) for v in volumes]
    return {"volumes": len(volumes), "channels": channels.pop(), "shapes": shapes,
            "shape_min": [int(min(s[a] for s in shapes)) for a in range(3)],
            "voxel_size": list(voxel_size),
            "anisotropy": round(max(voxel_size) / min(voxel_size), 2),
            "objects": len(sizes), "object_voxels_median": int(np.median(sizes)),
            "diameter_median": round(float(np.median(diameters)), 3)}


def time_volume_step(config, channels, steps=4):
    """Seconds per 3-D training step of ``config`` on this machine (median after a warm-up)."""
    import time
    from .backend import keras
    from .losses import weighted_pixel_loss
    from .model import build_unet_3d
    from .training import make_optimizer
    keras.utils.set_random_seed(config.seed)
    plan = config.volume_plan
    model = build_unet_3d((None, None, None, channels), config.num_classes, plan,
                          config.filters, config.dropout)
    model.compile(make_optimizer(config), weighted_pixel_loss())
    out = volume_output_shape(tuple(config.tile_size), plan)
    rng = np.random.default_rng(0)
    x = rng.random((config.batch_size, *config.tile_size, channels), np.float32)
    y = rng.integers(0, config.num_classes, (config.batch_size, *out)).astype(np.int32)
    w = np.ones((config.batch_size, *out), np.float32)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        model.train_on_batch(x, y, sample_weight=w)
        if i:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def make_volume_plan(volumes, masks, voxel_size, time_budget=None, overrides=None,
                     machine=None, step_timer=time_volume_step, at_least_minimum=False):
    """A :class:`~unet_tf.planner.Plan` for a 3-D U-Net on ``volumes`` (``ZYX[C]``) and their
    ``ZYX`` masks with ``voxel_size`` (z, y, x), within ``time_budget`` (default 10 minutes
    without a GPU; a fine-tune's 2, or its shortest useful run where longer); ``overrides`` are
    settings the user gave (they win);
    ``at_least_minimum``: a budget too short for the shortest useful run is raised to it."""
    overrides = dict(overrides or {})
    fp = volume_fingerprint(volumes, masks, voxel_size, overrides.get("ignore_label"))
    source = overrides.get("start_from")
    source_config = fine_tune_source(source, fp["channels"], {**overrides, "voxel_size":
                                                              voxel_size}) if source else None
    machine = machine or hardware()
    kind = "gpu" if machine["gpus"] else "cpu"
    if source_config:
        depth, filters = source_config.architecture.depth, source_config.architecture.filters
    else:
        depth = overrides.get("depth", 4 if kind == "gpu" else 3)
        filters = overrides.get("filters", 32 if kind == "gpu" else 16)
    axes = plan_axes(voxel_size, depth, shape=fp["shape_min"])
    tile = list(volume_tile_shape(fp["shape_min"], axes, filters, fp["channels"], 2, 1,
                                  TILE_MEMORY[kind]))
    pooled = "".join(a for a, p in zip("ZYX", zip(*axes["pools"])) if any(v > 1 for v in p))
    settings = {"voxel_size": list(voxel_size), "depth": depth, "filters": filters,
                "tile_size": tile, "batch_size": 1, "dropout": 0.0, "optimizer": "adam",
                "learning_rate": 1e-3, "lr_schedule": "cosine", "class_weights": None,
                "val_split": 0.2 if fp["volumes"] >= 3 else 0.0, "foreground_tiles": 0.5,
                "normalization": normalization_for("image", volumes)}
    out = volume_output_shape(tuple(tile), axes)
    reasons = {
        "voxel_size": f"anisotropy {fp['anisotropy']:g}: pooled along {pooled or 'no axis'}, "
                      f"kernels per level {[''.join(map(str, k)) for k in axes['kernels']]}",
        "depth": "3-D valid convs lose 40 voxels per axis at depth 3, 88 at depth 4"
                 + (" (GPU: 4)" if kind == "gpu" else " (CPU: 3)"),
        "filters": f"{'GPU' if kind == 'gpu' else 'CPU'}: {filters} (Cicek et al.: 32)",
        "tile_size": f"largest tile within {TILE_MEMORY[kind] // 2 ** 20} MiB of activations, "
                     f"output {'x'.join(map(str, out))} of a smallest volume "
                     f"{'x'.join(map(str, fp['shape_min']))}",
        "batch_size": "one large tile a step (3-D activations)",
        "optimizer": "Adam with cosine decay: steady on few volumes",
        "val_split": (f"{round(fp['volumes'] * 0.2)} of {fp['volumes']} volumes held out"
                      if fp["volumes"] >= 3 else "fewer than 3 volumes: all train; "
                      "post-processing tuned on them"),
        "foreground_tiles": "half the tiles centred on an object (volumes hold few)",
        "normalization": "each volume's 1-99.8 percentiles",
    }
    if source_config:
        _fine_tune(settings, reasons, source_config, source)
    for name, value in overrides.items():
        settings[name] = value
        reasons[name] = "given"
    if source:   # recorded absolute, so the run repeats from anywhere
        settings["start_from"] = str(Path(source).resolve())
    if isinstance(settings["normalization"], str):   # "image" / "dataset" -> the entry
        settings["normalization"] = normalization_for(settings["normalization"], volumes)
    config = TrainConfig(**settings)
    config.validate()
    if source_config and config.volume_plan != source_config.architecture.plan:
        raise ValueError(
            f"cannot fine-tune from {source}: its net was planned for voxel size "
            f"{voxel_text(source_config.voxel_size)} (pools {_pools(source_config.architecture.plan)}); "
            f"these volumes' {voxel_text(voxel_size)} plan pools {_pools(config.volume_plan)}: "
            "resample them to the source's voxel size, or train anew")
    plan = Plan(settings, reasons, fp, machine)
    if source_config:
        plan.start_from = {"folder": str(Path(source).resolve()),
                           "weights_sha256": weights_digest(source),
                           "trained_on": source_config.data.get("train")}
    if "epochs" in overrides or "steps_per_epoch" in overrides:
        return plan
    budget = parse_duration(time_budget) if time_budget is not None else \
        (FINE_TUNE_BUDGET if source else DEFAULT_BUDGET)[kind]
    plan.time_budget = budget
    plan.step_seconds = step_timer(config, fp["channels"])
    tuned = fp["volumes"] if not settings["val_split"] else round(fp["volumes"] * 0.2)
    voxels = np.mean([np.prod(s) for s in fp["shapes"]]) / 1e6
    validation_tiles = tuned * max(1, math.ceil(voxels * 1e6 / np.prod(out))) \
        if settings["val_split"] else 0
    plan.tuning_seconds = tuned * voxels * TUNING_SECONDS_PER_MVOXEL + \
        tuned * math.ceil(voxels * 1e6 / np.prod(out)) * plan.step_seconds / 3
    loaded_step = plan.step_seconds * (1.0 if machine["gpus"] else VOLUME_PIPELINE_FACTOR)
    # 3-D steps are slow: the default fine-tune budget may hold fewer than the shortest run's
    if at_least_minimum or (source and time_budget is None):
        budget = plan.time_budget = max(budget, minimum_budget(loaded_step, validation_tiles,
                                                               plan.tuning_seconds))
    epochs, steps, plan.estimated_seconds = fill_budget(budget, loaded_step, validation_tiles,
                                                        plan.tuning_seconds)
    settings["epochs"], settings["steps_per_epoch"] = epochs, steps
    reasons["epochs"] = (f"{epochs * steps} steps of {plan.step_seconds:.3f} s (timed here; "
                         f"{loaded_step:.3f} s beside the input pipeline) fill "
                         f"the {format_duration(budget)} budget: "
                         f"~{format_duration(plan.estimated_seconds)}")
    reasons["steps_per_epoch"] = "an epoch ends with validation and a checkpoint"
    return plan


def _pools(plan):
    return " ".join("".join(map(str, p)) for p in plan["pools"])



def _fine_tune(settings, reasons, source, folder):
    """Take over what a 3-D fine-tune keeps from ``source`` (its ``ModelConfig``): the net
    (depth and width set already), its classes and head, its normalisation; a lower rate."""
    a = source.architecture
    for name in ("depth", "filters"):
        reasons[name] = f"the source's ({folder}): its weights need it"
    settings["target"] = source.training.target
    settings["num_classes"], settings["class_names"] = a.num_classes, list(source.class_names)
    reasons["target"] = "the source's: its classifier head carries over"
    settings["normalization"] = dict(source.normalization)
    reasons["normalization"] = "the source's: its weights expect volumes scaled so"
    settings["learning_rate"] = FINE_TUNE_RATE
    reasons["learning_rate"] = "Adam at a tenth of the from-scratch rate: adapt, keep what " \
                               "the source learned"
    reasons["optimizer"] += WARMUP_REASON
    reasons["start_from"] = "given: fine-tune its weights"
