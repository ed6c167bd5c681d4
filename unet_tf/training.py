"""Training with Keras ``fit`` (one device or ``MirroredStrategy``) or the multi-worker loop,
writing a complete model folder (:mod:`unet_tf.model_folder`)."""

import dataclasses
import functools
import shutil
import warnings
from pathlib import Path

import numpy as np

from .backend import keras, tf
from .augment import Augmentation
from .config import FINE_TUNE_WARMUP, HEAD_FROM, MIN_STEPS, NothingLearned
from .callbacks import (BestModelCheckpoint, DivergenceGuard, PredictionImages, TrainingDiverged,
                        best_in_history)
from .data import class_labels, make_dataset
from .distribute import (Backup, fit_custom_loop, is_chief, is_multiworker, make_strategy,
                         writable_path)
from .images import check_image, check_volume
from .io import check_writable, write_atomically
from .losses import weighted_pixel_loss
from .memory import check_fits, check_bytes_fit
from .model import build_unet, build_unet_3d
from .model_folder import (BACKUP_DIR, HISTORY_FILE, LOGS_DIR, MODEL_FILE, ModelConfig,
                           fine_tune_source, read_config, update_config, write_config)
from .postprocess import VOLUME_GRID, describe, tune
from .sampling import TileCounter
from .tiling import predict_tiled
from .volume_data import make_volume_dataset
from .volume_instances import label_volume
from .volume_sizes import volume_activation_bytes
from .volume_tiling import predict_volume_tiled
from .masks import split_ignored

# A tuned model below either of these on its tuning images found almost none of the objects.
LEARNED_NOTHING_F1 = 0.2          # F1@0.5 of the objects
LEARNED_NOTHING_FOREGROUND = 0.2  # predicted foreground pixels / true ones


def make_optimizer(config):
    """The optimizer (and learning-rate schedule over all steps) that ``config`` names; a
    fine-tune's rate first rises from 0 over :data:`FINE_TUNE_WARMUP` of the steps."""
    rate, steps = config.learning_rate, config.epochs * config.steps_per_epoch
    warmup = int(FINE_TUNE_WARMUP * steps) if config.start_from else 0
    cosine = config.lr_schedule == "cosine"
    if warmup:   # from 0 up to the rate, then cosine decay to 0 or (alpha=1) the constant rate
        rate = keras.optimizers.schedules.CosineDecay(
            0.0, steps - warmup, alpha=0.0 if cosine else 1.0, warmup_target=rate,
            warmup_steps=warmup)
    elif cosine:
        rate = keras.optimizers.schedules.CosineDecay(rate, steps)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate)
    return keras.optimizers.SGD(rate, momentum=config.momentum)


def split_images(n, val_split, seed):
    """Indices ``(train, validation)`` of whole images; at least one of each when possible."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_split))) if val_split > 0 and n > 1 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _check_folder(out, overwrite):
    """Refuse a finished model folder unless ``overwrite`` (a backup resumes) or one that
    cannot be written; creates nothing."""
    out = Path(out)
    if (out / MODEL_FILE).exists() and not (out / BACKUP_DIR).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a trained model (use --overwrite / "
                              "overwrite=True to train a new one there)")
    check_writable(out, "model folder")
    return out


def check_volume_fits(config, channels):
    """Refuse (``ValueError``) a volume tile and batch that clearly cannot fit in memory."""
    per_tile = volume_activation_bytes(config.tile_size, config.volume_plan, config.filters,
                                       channels, config.num_classes)
    check_bytes_fit(per_tile * config.batch_size, True,
                    f"tile {'x'.join(map(str, config.tile_size))} x batch {config.batch_size}")


def _warn_if_one_class(masks, num_classes, target, ignore_label, ndim=2):
    present = set()
    for mask in masks:
        mask = split_ignored(mask, ignore_label, ndim=ndim)[0]
        present |= set(np.unique(class_labels(mask, num_classes, target=target,
                                              ndim=ndim)).tolist())
    if len(present) < 2:
        warnings.warn(f"every training mask holds class {present.pop()} only: the network will "
                      "learn to predict that class everywhere", UserWarning, stacklevel=3)


def train(config, images=None, masks=None, names=None, overwrite=False, callbacks=(),
          verbose="auto", strategy=None, plan=None):
    """Train a U-Net and write a complete model folder at ``config.out``.

    Args:
        config: a :class:`~unet_tf.config.TrainConfig`.
        images, masks: lists of ``YX``/``YXC`` images and their masks; when ``None`` they are
            read from ``config.images``/``config.masks`` (folders, matched by file name).
        names: a name per image, for the data summary.
        overwrite: replace a finished model folder. A folder with a ``backup/`` (an interrupted
            run) is resumed from the last completed epoch instead.
        callbacks: extra Keras callbacks (``fit`` path only).
        verbose: Keras verbosity (``"auto"``, 0, 1 bars, 2 one line per epoch).
        strategy: a ``tf.distribute.Strategy``; default: made from ``config.strategy``.
            Multi-worker runs use a custom loop (see :mod:`unet_tf.distribute`); only the chief
            writes the model folder.
        plan: the :class:`~unet_tf.planner.Plan` (or its dict) that chose ``config``, stored
            under ``plan`` in ``config.json``.

    Returns:
        The best Keras model (lowest validation loss, or training loss without validation);
        :meth:`unet_tf.UNet.train` returns it bound to its folder instead.

    Raises:
        ValueError, TypeError: a setting or the data cannot work (before any file is written).
        FileExistsError: ``config.out`` holds a finished model and ``overwrite`` is false.
        TrainingDiverged: a ``ValueError``: the loss became non-finite or exploded; the message
            says what to change, and the last good model (if any) stays in the folder.
        RuntimeError: no epoch gave a finite loss.
        NothingLearned: a ``RuntimeError``: the tuned model finds almost none of the objects
            of its tuning images (F1@0.5 below :data:`LEARNED_NOTHING_F1`, or under
            :data:`LEARNED_NOTHING_FOREGROUND` of their foreground); the message says what was
            measured and what to try; the complete folder is kept.

    After training, the instance post-processing is tuned on the validation images (the
    training images without any) and stored in ``config.json``
    (:func:`tune_postprocessing`). Unannotated pixels (``config.ignore_label``) weigh 0 in
    every loss and are left out of the tuning.

    Example:
        >>> config = TrainConfig(out="my-model", images="imgs", masks="masks")  # doctest: +SKIP
        >>> model = train(config)                                               # doctest: +SKIP
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
    if config.is_volume:
        channels = check_volume(images[0], "volume 0").shape[3] if len(images) else 1
        check_volume_fits(config, channels)
    else:
        channels = check_image(images[0], "image 0").shape[2] if len(images) else 1
        check_fits(config.tile_size, config.batch_size, True, config.depth, config.filters,
                   config.upsampling, channels, config.num_classes)
    if config.start_from:   # a bad source is refused here, before any work
        fine_tune_source(config.start_from, channels, dataclasses.asdict(config))

    replicas = strategy.num_replicas_in_sync
    train_idx, val_idx = split_images(len(images), config.val_split, config.seed)
    if is_multiworker(strategy):
        train_idx, val_idx = sorted(train_idx + val_idx), []  # see _fit_multiworker
    pick = lambda items, idx: [items[i] for i in idx]
    augmentation = Augmentation(elastic_sigma=config.elastic_sigma) if config.augment else False
    common = dict(weight_map=config.weight_map, w0=config.w0, border_sigma=config.border_sigma,
                  class_weights=config.class_weights, num_classes=config.num_classes,
                  normalization=config.normalization, target=config.target,
                  foreground_tiles=config.foreground_tiles, ignore_label=config.ignore_label)
    if config.is_volume:
        common.update(tile_shape=config.tile_size, plan=config.volume_plan,
                      voxel_size=config.voxel_size)
        datasets, val_batch = make_volume_dataset, 1
    else:
        common.update(tile_size=config.tile_size, depth=config.depth,
                      upsampling=config.upsampling)
        datasets, val_batch = make_dataset, 4
    tiles = TileCounter()
    train_data = datasets(pick(images, train_idx), pick(masks, train_idx),
                          batch_size=config.batch_size * replicas, augment=augmentation,
                          seed=config.seed, counter=tiles, **common)
    val_data = (datasets(pick(images, val_idx), pick(masks, val_idx), batch_size=val_batch,
                         validation=True, seed=config.seed, **common) if val_idx else None)
    _warn_if_one_class(masks, config.num_classes, config.target, config.ignore_label,
                       3 if config.is_volume else 2)
    summary = {"images": len(images), "channels": channels,
               "train": pick(names, train_idx), "validation": pick(names, val_idx),
               "shapes": [list(np.shape(i)) for i in images],
               "dtypes": sorted({str(np.asarray(i).dtype) for i in images})}
    if chief:
        out.mkdir(parents=True, exist_ok=True)  # only now: bad data leaves no empty folder
        distribution = {"strategy": config.strategy, "tf_strategy": type(strategy).__name__,
                        "replicas": replicas, "global_batch": config.batch_size * replicas}
        write_config(out, ModelConfig.for_run(
            config, summary, distribution, plan.to_dict() if hasattr(plan, "to_dict") else plan,
            versions={"tensorflow": tf.__version__, "keras": keras.__version__}))

    policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:  # float16 compute; build_unet keeps the logits in float32
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            keras.utils.set_random_seed(config.seed)
            model = (build_unet_3d((None, None, None, channels), config.num_classes,
                                   config.volume_plan, config.filters, config.dropout)
                     if config.is_volume else
                     build_unet((None, None, channels), config.num_classes, config.depth,
                                config.filters, config.dropout, config.upsampling))
            if config.start_from:
                _start_from(model, config.start_from, config.target, verbose)
            optimizer = make_optimizer(config)
        guard = DivergenceGuard()
        if is_multiworker(strategy):
            _fit_multiworker(model, optimizer, train_data, strategy, config, out, chief, verbose,
                             guard)
        else:
            _fit_keras(model, optimizer, train_data, val_data, strategy, config, out,
                       [guard, *callbacks], verbose)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    if guard.diverged:
        raise TrainingDiverged(_divergence_message(guard.diverged, config, out, chief))
    if not chief:
        return model  # the same weights as the chief's; the folder is the chief's to write
    if not (out / MODEL_FILE).exists():
        raise RuntimeError(f"training produced no finite loss; no model was saved in {out}")
    _report_tiles(tiles, config, out, verbose)
    model = keras.saving.load_model(out / MODEL_FILE, compile=False)  # the best, for inference
    if config.target != "classes":
        tuned_on = ("validation", val_idx) if val_idx else ("training", train_idx)
        _, report = tune_postprocessing(model, config, out, pick(images, tuned_on[1]),
                                        pick(masks, tuned_on[1]), tuned_on[0], verbose)
        if report is not None:
            # convert_to_numpy: int() fails on the MirroredVariable behind a strategy's counter
            steps = int(keras.ops.convert_to_numpy(optimizer.iterations))
            _check_learned(report, out, tiles, steps)
    return model


def _start_from(model, folder, target, verbose):
    """Give ``model`` the weights of the model in ``folder``, layer by layer (same names and
    shapes: the architecture is the same). A head for another ``target`` starts from the
    source's classes that hold its own (:data:`HEAD_FROM`); for other classes, new."""
    source = keras.saving.load_model(Path(folder) / MODEL_FILE, compile=False)
    names = {layer.name for layer in source.layers}
    source_target = read_config(folder).training.target
    columns = HEAD_FROM.get((source_target, target))
    fresh, mapped = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = source.get_layer(layer.name).get_weights() if layer.name in names else None
        shapes = [tuple(w.shape) for w in layer.weights]
        if weights is not None and [w.shape for w in weights] == shapes:
            layer.set_weights(weights)
        elif weights is not None and layer.name == "logits" and columns:
            layer.set_weights([w[..., list(columns)] for w in weights])   # kernel, bias
            mapped.append(layer.name)
        else:
            fresh.append(layer.name)
    if verbose:
        head = (f"; new: {', '.join(fresh)}" if fresh else "") + \
            (f"; {target} head from the source's {source_target} one" if mapped else "")
        print(f"fine-tuning {folder}: weights of "
              f"{sum(bool(layer.weights) for layer in model.layers) - len(fresh)} layers{head}",
              flush=True)


def _report_tiles(tiles, config, out, verbose):
    """Store (and print) the share of drawn training tiles that held an annotated object."""
    sampling = {"foreground_tiles": config.foreground_tiles, "tiles_drawn": tiles.drawn,
                "tiles_with_objects": round(tiles.share, 4)}
    update_config(out, sampling=sampling)
    if verbose and tiles.drawn:
        print(f"training tiles: {tiles.drawn} drawn, {100 * tiles.share:.0f} % held an annotated "
              f"object ({100 * config.foreground_tiles:.0f} % were centred on one)", flush=True)


def _check_learned(tuned, out, tiles, steps):
    """Raise :class:`NothingLearned` when the tuned post-processing found almost none of the
    objects of its images (``tuned``: the report of :func:`tune_postprocessing`; ``tiles``:
    the run's :class:`~unet_tf.sampling.TileCounter`; ``steps``: the steps trained). A run
    shorter than :data:`~unet_tf.config.MIN_STEPS` steps is not expected to have learned:
    it only says what it measured."""
    f1, ratio = tuned["f1_after"], tuned["foreground_ratio"]
    if f1 >= LEARNED_NOTHING_F1 and ratio >= LEARNED_NOTHING_FOREGROUND:
        return
    if steps < MIN_STEPS:   # a short run, or one cancelled early: not expected to have learned
        warnings.warn(f"after {steps} training steps (fewer than the {MIN_STEPS} of the "
                      f"shortest useful run) the model finds almost none of the objects "
                      f"(F1@0.5 {f1:.3f})", UserWarning, stacklevel=3)
        return
    report = {"f1": f1, "foreground_ratio": ratio, "tuned_on": tuned["tuned_on"]}
    hints = ["annotate more objects (or whole regions: --ignore-label V marks the pixels you "
             "did not annotate, so they are not learned as background)",
             "a longer --time-budget",
             "check that each mask belongs to its image (same file name, same field of view)"]
    if tiles.drawn and tiles.share < 0.4:
        hints.insert(1, f"--foreground-tiles 0.5 (only {100 * tiles.share:.0f} % of the training "
                     "tiles held an object)")
    raise NothingLearned(
        f"the trained model found almost none of the objects: on its tuning images "
        f"({tuned['tuned_on']}) F1@0.5 is {f1:.3f} and it predicts {100 * ratio:.0f} % of "
        f"the annotated foreground; the model folder is kept in {out}. Try: "
        + "; ".join(hints), str(out), report)


def tune_postprocessing(model, config, out, images, masks, kind="validation", verbose=1):
    """Tune the instance post-processing (:func:`unet_tf.postprocess.tune`) on ``images``
    predicted by ``model`` and store it under ``postprocessing`` in ``out/config.json``.

    Returns ``(settings, report)``: the report of :func:`~unet_tf.postprocess.tune` with
    ``tuned_on``; ``(None, None)``, defaults kept, when the masks hold no objects."""
    ndim = 3 if config.is_volume else 2
    if not any(np.any(split_ignored(mask, config.ignore_label, ndim=ndim)[0]) for mask in masks):
        if verbose:
            print(f"post-processing not tuned: the {kind} masks hold no objects", flush=True)
        return None, None
    if config.is_volume:
        probabilities = [predict_volume_tiled(model, volume, config.volume_plan,
                                              config.normalization) for volume in images]
        labeller = functools.partial(label_volume, voxel_size=config.voxel_size)
        settings, report = tune(probabilities, masks, config.target, config.ignore_label,
                                labeller, VOLUME_GRID)
    else:
        probabilities = [predict_tiled(model, image, normalization=config.normalization)
                         for image in images]
        settings, report = tune(probabilities, masks, config.target, config.ignore_label)
    report = {"tuned_on": f"{len(images)} {kind} images", **report}
    update_config(out, postprocessing={**settings, **report})
    if verbose:
        what = "volume(s)" if config.is_volume else "image(s)"
        unit = "voxels" if config.is_volume else "px"
        print(f"post-processing tuned on {len(images)} {kind} {what}: F1@0.5 "
              f"{report['f1_before']:.3f} -> {report['f1_after']:.3f} "
              f"({describe(settings, unit)})", flush=True)
    return settings, report


def _divergence_message(what, config, out, chief):
    """The error of a diverged run: what happened, what to change, what was kept."""
    kept = ((f"the last good model is kept in {out / MODEL_FILE}" if (out / MODEL_FILE).exists()
             else "no model was saved") if chief else "the chief keeps the last good model")
    return (f"training diverged: {what}; lower the learning rate (it was {config.learning_rate:g} "
            f"with {config.optimizer}; try {config.learning_rate / 10:g}, or leave --lr and "
            f"--optimizer to the plan); {kept}")


def _fit_keras(model, optimizer, train_data, val_data, strategy, config, out, callbacks,
               verbose):
    """One host: Keras ``fit`` (one device, or ``MirroredStrategy`` over its GPUs).
    ``callbacks[0]`` is the run's :class:`DivergenceGuard`; the checkpoint heeds it."""
    with strategy.scope():
        model.compile(optimizer, weighted_pixel_loss(),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    monitor = "val_loss" if val_data is not None else "loss"
    preview = next(iter(val_data if val_data is not None else train_data))
    fit_callbacks = [
        keras.callbacks.BackupAndRestore(str(out / BACKUP_DIR)),
        BestModelCheckpoint(out / MODEL_FILE, monitor, out / HISTORY_FILE, guard=callbacks[0]),
        keras.callbacks.CSVLogger(str(out / HISTORY_FILE), append=True),
        keras.callbacks.TensorBoard(str(out / LOGS_DIR), write_graph=False),
        PredictionImages(out / LOGS_DIR, preview[0][:3], preview[1][:3]),
    ]
    if config.early_stopping:
        fit_callbacks.append(keras.callbacks.EarlyStopping(monitor, patience=config.early_stopping))
    model.fit(train_data, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
              validation_data=val_data, callbacks=[callbacks[0], *fit_callbacks, *callbacks[1:]],
              verbose=verbose,
              shuffle=False)  # the dataset shuffles itself, reproducibly


def _fit_multiworker(model, optimizer, train_data, strategy, config, out, chief, verbose, guard):
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
        guard.on_epoch_end(epoch, logs)  # every worker sees the same all-reduced loss
        if guard.diverged:
            return
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

    guard.set_model(model)
    fit_custom_loop(model, optimizer, train_data, strategy, config.epochs, config.steps_per_epoch,
                    on_epoch_end, initial_epoch=start, verbose=verbose not in (0, False))
    backup.finish()
