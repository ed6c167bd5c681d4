"""A trained U-Net bound to its model folder: predict, segment, evaluate, export.

In the manner of StarDist2D / CSBDeep: the folder says how images are normalised, which
geometry the net has and what the classes are, so nobody passes those by hand::

    unet = unet_tf.UNet.from_folder("my-model")
    labels = unet.segment(image)                  # instance labels (YX)
    probabilities = unet.predict(image)           # (H, W, classes) float32
    rows = unet.evaluate(images, masks)           # metrics per image
    unet.export("tflite-int8")                    # my-model/export/model_int8.tflite

The plain functions (:func:`unet_tf.predict_tiled`, :mod:`unet_tf.metrics`,
:func:`unet_tf.exporters.export_model`) stay the layer underneath; the CLI is a thin layer on top.
"""

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from . import overlap_tile
from .backend import limit_threads
from .images import check_image, check_volume
from .instances import label_image
from .masks import split_ignored
from .memory import BATCH_SIZE, inference_budget, inference_tile_size, volume_tile_shape
from .metrics import evaluate as evaluate_image
from .model_folder import EXPORT_DIR, RUNTIMES, load_model_folder, read_config
from .sizes import output_size, size_rule
from .variants import choose_variant, cpu_flags, exported_variants
from .tiling import OUTPUTS, predict_tiled, tile_count, tile_progress
from .volume_sizes import axis_periods, check_volume_shape, volume_output_shape


class UNet:
    """A trained U-Net, its model folder's config and the runtime that runs it.

    The one predictor: the CLI, chunked and Dask prediction (:mod:`unet_tf.chunked`) and the
    napari widgets all predict through it, with its one tile and memory policy
    (:meth:`tile_size`).

    Args:
        model: a Keras model from :func:`unet_tf.build_unet` (logits out), or ``None`` to load
            the folder's on first use.
        config: the folder's :class:`~unet_tf.model_folder.ModelConfig`.
        folder: the model folder (needed by :meth:`export`, the LiteRT runtime and a
            ``model`` of ``None``).
        runtime: ``"keras"`` or ``"litert"``: a TFLite export in the folder's ``export/``
            (make them with ``unet-tf export M --format tflite`` / ``tflite-int8``), the one
            fastest on this CPU (:func:`unet_tf.variants.choose_variant`) unless ``variant``.
        threads: CPU threads for this process (default: all cores).
        variant: ``"int8"``, ``"fp16"`` or ``"float32"``: the LiteRT export to run.
    """

    def __init__(self, model, config, folder=None, runtime="keras", threads=None, variant=None):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self._model, self.config, self.runtime, self.threads = model, config, runtime, threads
        self.folder = Path(folder) if folder is not None else None
        if model is None and self.folder is None:
            raise ValueError("UNet needs a model or a model folder to load one from")
        a = config.architecture
        self.period = axis_periods(a.plan) if a.is_volume else size_rule(a.depth, a.upsampling)[1]
        self.fixed_tile, self.description, self._forward = None, "Keras", None
        self.variant, self.variant_reason = None, None
        if variant is not None and runtime != "litert":
            raise ValueError(f"a variant ({variant!r}) is chosen among TFLite exports: it needs "
                             "runtime='litert' (--runtime litert)")
        if runtime == "litert":
            self._litert_path = self._find_litert(variant)
        elif threads:
            limit_threads(threads)

    @classmethod
    def from_folder(cls, folder, runtime="keras", threads=None, lazy=False, variant=None):
        """Load a model folder written by :func:`unet_tf.train`; ``lazy``: the Keras model
        loads on first use (a process that only plans the work never loads it).

        Raises:
            FileNotFoundError: the folder, ``model.keras`` or ``config.json`` is missing (or the
                TFLite export, for ``runtime="litert"``).
            ValueError: the folder is broken or from a newer unet-tf.

        Example:
            >>> unet = UNet.from_folder("my-model")  # doctest: +SKIP
        """
        if lazy or runtime != "keras":
            return cls(None, read_config(folder), folder, runtime, threads, variant)
        model, config = load_model_folder(folder)
        return cls(model, config, folder, runtime, threads, variant)

    @classmethod
    def cached(cls, folder, runtime="keras", threads=None, variant=None):
        """This process's UNet of ``folder`` (lazy): workers and widgets load a model once."""
        return _cached(str(Path(folder).resolve()), runtime, threads, variant)

    @classmethod
    def train(cls, config, images=None, masks=None, **options):
        """Train (see :func:`unet_tf.train`) and return the result bound to ``config.out``
        (``None`` on the non-chief workers of a multi-worker run, which write no folder)."""
        from .training import train  # only here: prediction never imports the training code
        train(config, images, masks, **options)
        folder = Path(config.out)
        return cls.from_folder(folder) if (folder / "config.json").exists() else None

    # ----------------------------------------------------------------------- properties

    @property
    def model(self):
        """The Keras model (loaded from the folder on first use)."""
        if self._model is None:
            self._model, _ = load_model_folder(self.folder)
        return self._model

    @property
    def is_volume(self):
        """Whether this is a 3-D net (it predicts ``ZYX[C]`` volumes)."""
        return self.config.is_volume

    @property
    def num_classes(self):
        return self.config.architecture.num_classes

    @property
    def channels(self):
        return self.config.architecture.channels

    @property
    def class_names(self):
        return list(self.config.class_names)

    @property
    def normalization(self):
        return self.config.normalization

    # ----------------------------------------------------------------------- tiles

    def tile_size(self, image_shape, batch_size=BATCH_SIZE):
        """The tile :meth:`predict` uses for an image (or window) of ``image_shape`` when none
        is given: the LiteRT export's fixed tile; for Keras, as few tiles of ``batch_size`` as
        fit the memory budget (:func:`unet_tf.memory.inference_budget`), just large enough to
        cover the image evenly (:func:`unet_tf.memory.inference_tile_size`). The training tile
        plays no part."""
        if self.fixed_tile:
            return self.fixed_tile
        a = self.config.architecture
        if a.is_volume:
            return volume_tile_shape(image_shape, a.plan, a.filters, a.channels, a.num_classes,
                                     batch_size)
        return inference_tile_size(image_shape, a.depth, a.upsampling, a.filters, a.channels,
                                   a.num_classes, batch_size, inference_budget())

    def tile_count(self, image_shape, tile_size=None, batch_size=BATCH_SIZE):
        """How many tiles :meth:`predict` runs for an image of ``image_shape``."""
        a = self.config.architecture
        tile_size = tile_size or self.tile_size(image_shape, batch_size)
        if a.is_volume:
            out = volume_output_shape(tuple(tile_size), a.plan)
            return len(overlap_tile.window_grid_nd(image_shape[:3], out, self.period)[1])
        return tile_count(image_shape, tile_size, a.depth, a.upsampling)

    def _checked_tile(self, image_shape, tile_size, batch_size):
        if tile_size and self.fixed_tile and tile_size != self.fixed_tile:
            raise ValueError(f"the LiteRT export takes {self.fixed_tile}x{self.fixed_tile} "
                             f"tiles only, got tile_size={tile_size}")
        return tile_size or self.tile_size(image_shape, batch_size)

    # ----------------------------------------------------------------------- inference

    def predict(self, image, output="probabilities", tile_size=None, batch_size=BATCH_SIZE,
                progress=False):
        """Overlap-tile prediction of a whole ``YX``/``YXC`` image with the folder's settings.

        Args:
            image: uint8/uint16/float ``YX`` or ``YXC``, raw (normalised here).
            output: ``"probabilities"`` ``(H, W, K)`` float32, ``"logits"`` or ``"labels"``
                (class ids, ``(H, W)`` int32).
            tile_size: a valid tile; default :meth:`tile_size` (any valid size gives the same
                result, up to float rounding).
            batch_size: tiles per forward pass (LiteRT: one tile per invoke).
            progress: a ``keras.utils.Progbar`` or ``True`` for a new one.

        Returns:
            The array :func:`unet_tf.predict_tiled` returns. A 3-D net takes a ``ZYX``/``ZYXC``
            volume and returns ``(Z, Y, X, K)`` (``"labels"``: ``(Z, Y, X)``), one tile a pass.
        """
        if self.is_volume:
            return self._predict_volume(image, output, tile_size, progress)
        image = check_image(image)
        tile_size = self._checked_tile(image.shape, tile_size, batch_size)
        if self.runtime == "keras":
            return predict_tiled(self.model, image, tile_size=tile_size, batch_size=batch_size,
                                 output=output, progress=progress,
                                 normalization=self.normalization)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if image.shape[2] != self.channels:
            raise ValueError(f"image has {image.shape[2]} channels, the model expects "
                             f"{self.channels}")
        a = self.config.architecture
        on_batch = tile_progress(progress, self.tile_count(image.shape, tile_size)) \
            if progress else None
        probabilities = overlap_tile.predict_image(
            image, self.predict_tiles, tile_size, output_size(tile_size, a.depth, a.upsampling),
            self.period, self.normalization, 1, on_batch=on_batch)
        return as_output(probabilities, output)

    def _predict_volume(self, volume, output, tile_shape, progress):
        from .volume_tiling import predict_volume_tiled
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        volume = check_volume(volume, "volume")
        if volume.shape[3] != self.channels:
            raise ValueError(f"volume has {volume.shape[3]} channels, the model expects "
                             f"{self.channels}")
        plan = self.config.architecture.plan
        if tile_shape and self.fixed_tile and tuple(tile_shape) != self.fixed_tile:
            raise ValueError(f"the LiteRT export takes {'x'.join(map(str, self.fixed_tile))} "
                             f"tiles only, got tile_size={tile_shape}")
        tile_shape = tuple(tile_shape or self.tile_size(volume.shape, 1))
        check_volume_shape(tile_shape, plan)
        on_batch = tile_progress(progress, self.tile_count(volume.shape, tile_shape, 1)) \
            if progress else None
        if self.runtime == "keras":
            probabilities = predict_volume_tiled(self.model, volume, plan, self.normalization,
                                                 tile_shape, 1, on_batch=on_batch)
        else:
            probabilities = overlap_tile.predict_volume(
                volume, self.predict_tiles, tile_shape, volume_output_shape(tile_shape, plan),
                self.period, overlap_tile.normalization_range(volume, self.normalization), 1,
                on_batch)
        return as_output(probabilities, output)

    def predict_window(self, image, value_range, window):
        """Probabilities ``(h, w, K)`` of ``window = (top, left, h, w)`` of a
        :class:`~unet_tf.omezarr.LazyImage` normalised with ``value_range``, one tile a
        forward pass; ``(top, left)`` on the pooling grid, so the result is exact (what
        chunked prediction puts together)."""
        a = self.config.architecture
        top, left, height, width = window
        tile = self.tile_size((height, width), 1)
        out = output_size(tile, a.depth, a.upsampling)
        margin = (tile - out) // 2
        _, corners = overlap_tile.window_grid(height, width, out, self.period)
        region = image.read_mirrored(top - margin, left - margin,
                                     max(c[0] for c in corners) + tile,
                                     max(c[1] for c in corners) + tile)
        return overlap_tile.predict_window(region, self.predict_tiles, tile, out, self.period,
                                           value_range, (margin, margin, height, width), 1)

    def predict_volume_window(self, volume, value_range, window):
        """Probabilities ``(z, y, x, K)`` of ``window = (starts, sizes)`` (``ZYX`` each) of a
        :class:`~unet_tf.omezarr.LazyVolume` normalised with ``value_range``, one tile a pass;
        ``starts`` on the pooling grid, so the result is that box of the whole volume's
        prediction (what chunked 3-D prediction puts together)."""
        plan = self.config.architecture.plan
        starts, sizes = (tuple(int(v) for v in part) for part in window)
        tile = tuple(self.tile_size(sizes, 1))
        out = volume_output_shape(tile, plan)
        margins = [(t - o) // 2 for t, o in zip(tile, out)]
        _, corners = overlap_tile.window_grid_nd(sizes, out, self.period)
        extent = [max(c[axis] for c in corners) + tile[axis] for axis in range(3)]
        region = volume.read_mirrored([s - m for s, m in zip(starts, margins)], extent)
        return overlap_tile.predict_volume(region, self.predict_tiles, tile, out, self.period,
                                           value_range, 1, window=(margins, sizes))

    def predict_tiles(self, tiles):
        """Probabilities ``(N, O, O, K)`` (numpy) of normalised tiles ``(N, T, T, C)`` (a 3-D
        net: ``(N, *output_shape, K)`` of ``(N, *tile_shape, C)``)."""
        if self._forward is None:   # loaded on first use: a process that only plans never does
            self._forward = self._keras_forward() if self.runtime == "keras" else \
                self._litert_forward()
        return self._forward(tiles)

    def _keras_forward(self):
        if self.is_volume:
            from .volume_tiling import volume_forward
            return volume_forward(self.model)
        from .tiling import forward
        probabilities = forward(self.model, "probabilities")
        return lambda tiles: probabilities(tiles).numpy()

    def _find_litert(self, variant):
        """The folder's TFLite export fastest on this CPU (or ``variant``); sets its tile, the
        choice and its reason, and the description."""
        export = self.folder / EXPORT_DIR
        available = exported_variants(export)
        if not available and variant is None:
            raise FileNotFoundError(
                f"--runtime litert needs a TFLite export in {export}: run `unet-tf export "
                f"{self.folder} --format tflite` (or tflite-int8) first")
        self.variant, self.variant_reason = choose_variant(available, cpu_flags(), variant,
                                                           self.is_volume)
        path = export / f"model_{self.variant}.tflite"
        meta = json.loads(path.with_suffix(".json").read_text())
        if hashlib.sha256(path.read_bytes()).hexdigest() != meta.get("tflite_sha256"):
            raise ValueError(f"{path.with_suffix('.json')} describes another model than {path} "
                             f"(SHA-256 differs: an export was interrupted): run `unet-tf export "
                             f"{self.folder} --format ... --overwrite` again")
        self.fixed_tile = (tuple(meta["tile_shape"]) if self.is_volume  # a 3-D net's Z, Y, X
                           else meta["tile_size"])
        check = meta.get("check", {})
        agreement = (f", {100 * check['label_agreement']:.2f} % of pixels as Keras on "
                     f"{check['tiles']} check tiles" if "label_agreement" in check else "")
        tile = "x".join(map(str, self.fixed_tile)) if self.is_volume else self.fixed_tile
        self.description = (f"LiteRT {path.name} (tile {tile}{agreement}; "
                            f"{self.variant}: {self.variant_reason})")
        return path

    def _litert_forward(self):
        interpreter = overlap_tile.allocated_interpreter(
            model_path=str(self._litert_path), num_threads=self.threads or os.cpu_count())
        return lambda tiles: overlap_tile.softmax(overlap_tile.invoke_tiles(interpreter, tiles))

    @property
    def postprocessing(self):
        """The folder's post-processing settings (see :mod:`unet_tf.instances`), tuned on the
        validation images when the model was trained."""
        return self.config.postprocessing_settings

    def postprocess(self, probabilities, **overrides):
        """Labels from :meth:`predict`'s probabilities ``(H, W, K)``: instance labels (``YX``)
        for the foreground and boundary targets, class ids for a multi-class net.
        ``overrides`` replace single settings, e.g. ``min_size=50``. A 3-D net's
        ``(Z, Y, X, K)`` give ``ZYX`` labels (:func:`unet_tf.volume_instances.label_volume`)."""
        settings = {**self.postprocessing, **overrides}
        if self.is_volume:
            from .volume_instances import label_volume
            return label_volume(probabilities, settings, self.config.voxel_size)
        return label_image(probabilities, settings)

    def segment(self, image, postprocessing=None, **options):
        """What a person uses: :meth:`postprocess` (with ``postprocessing`` overrides, a dict)
        of :meth:`predict`. ``options`` as for :meth:`predict`."""
        return self.postprocess(self.predict(image, **options), **(postprocessing or {}))

    def evaluate(self, images, masks, names=None, progress=False, postprocessing=None,
                 ignore_label=None):
        """Metrics of :meth:`segment` against true masks, per image.

        Args:
            images, masks: sequences of ``YX``/``YXC`` images and their ``YX`` masks.
            names: a name per image (default ``image 0``, ``image 1``, ...).
            ignore_label: the mask value of unannotated pixels, left out of every score.

        Returns:
            ``{name: metrics}`` with the keys of :func:`unet_tf.metrics.evaluate`; format it
            with :func:`unet_tf.metrics.metrics_table`.
        """
        names = names or [f"image {i}" for i in range(len(images))]
        if not len(names) == len(images) == len(masks):
            raise ValueError(f"got {len(images)} images, {len(masks)} masks and "
                             f"{len(names)} names")
        class_names = self.class_names if self.postprocessing["target"] == "classes" else None
        rows = {}
        for name, image, mask in zip(names, images, masks):
            mask, ignored = split_ignored(mask, ignore_label, f"mask {name}",
                                          3 if self.is_volume else 2)
            rows[name] = evaluate_image(mask, self.segment(image, postprocessing,
                                                           progress=progress),
                                        class_names, ignored)
        return rows

    def export(self, format="savedmodel", **options):
        """Export the folder (see :func:`unet_tf.exporters.export_model`); returns the path."""
        if self.folder is None:
            raise ValueError("this UNet has no model folder to export from: use "
                             "UNet.from_folder(...)")
        from .exporters import export_model
        return export_model(self.folder, format, **options)

    def __repr__(self):
        a = self.config.architecture
        return (f"UNet(folder={str(self.folder)!r}, depth={a.depth}, filters={a.filters}, "
                f"classes={a.num_classes})")


def as_output(probabilities, output):
    """``probabilities`` ``(..., K)`` as ``output`` (see :data:`unet_tf.tiling.OUTPUTS`)."""
    if output == "labels":
        return probabilities.argmax(-1).astype(np.int32)
    if output == "logits":
        return np.log(np.maximum(probabilities, 1e-30))
    return probabilities


@functools.lru_cache(maxsize=4)
def _cached(folder, runtime, threads, variant):
    return UNet.from_folder(folder, runtime, threads, lazy=True, variant=variant)
