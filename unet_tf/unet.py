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

from pathlib import Path

from .metrics import evaluate as evaluate_image
from .model_folder import load_model_folder
from .instances import label_image
from .memory import BATCH_SIZE
from .tiling import predict_tiled, tile_count, tile_for
from .weightmaps import split_ignored


class UNet:
    """A Keras U-Net and its model folder's ``config.json``.

    Args:
        model: a Keras model from :func:`unet_tf.build_unet` (logits out).
        config: the folder's :class:`~unet_tf.model_folder.ModelConfig`.
        folder: the model folder (needed by :meth:`export`).
    """

    def __init__(self, model, config, folder=None):
        self.model, self.config = model, config
        self.folder = Path(folder) if folder is not None else None

    @classmethod
    def from_folder(cls, folder):
        """Load a model folder written by :func:`unet_tf.train`.

        Raises:
            FileNotFoundError: the folder, ``model.keras`` or ``config.json`` is missing.
            ValueError: the folder is broken or from a newer unet-tf.

        Example:
            >>> unet = UNet.from_folder("my-model")  # doctest: +SKIP
        """
        model, config = load_model_folder(folder)
        return cls(model, config, folder)

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
    def num_classes(self):
        return self.config.architecture.num_classes

    @property
    def class_names(self):
        return list(self.config.class_names)

    @property
    def normalization(self):
        return self.config.normalization

    def tile_size(self, image_shape, batch_size=BATCH_SIZE):
        """The tile :meth:`predict` uses for an image of ``image_shape`` when none is given:
        the largest that fits the memory budget (the training tile plays no part)."""
        return tile_for(self.model, image_shape, batch_size)

    def tile_count(self, image_shape, tile_size=None, batch_size=BATCH_SIZE):
        """How many tiles :meth:`predict` runs for an image of ``image_shape``."""
        a = self.config.architecture
        tile_size = tile_size or self.tile_size(image_shape, batch_size)
        return tile_count(image_shape, tile_size, a.depth, a.upsampling)

    # ----------------------------------------------------------------------- inference

    def predict(self, image, output="probabilities", tile_size=None, batch_size=BATCH_SIZE,
                progress=False):
        """Overlap-tile prediction of a whole ``YX``/``YXC`` image with the folder's settings.

        Args:
            image: uint8/uint16/float ``YX`` or ``YXC``, raw (normalised here).
            output: ``"probabilities"`` ``(H, W, K)`` float32, ``"logits"`` or ``"labels"``
                (class ids, ``(H, W)`` int32).
            tile_size: a valid tile; default the largest that fits memory (any valid size gives
                the same result, up to float rounding).
            batch_size: tiles per forward pass.
            progress: a ``keras.utils.Progbar`` or ``True`` for a new one.

        Returns:
            The array :func:`unet_tf.predict_tiled` returns.
        """
        return predict_tiled(self.model, image, tile_size=tile_size, batch_size=batch_size,
                             output=output, progress=progress, normalization=self.normalization)

    @property
    def postprocessing(self):
        """The folder's post-processing settings (see :mod:`unet_tf.instances`), tuned on the
        validation images when the model was trained."""
        return self.config.postprocessing_settings

    def postprocess(self, probabilities, **overrides):
        """Labels from :meth:`predict`'s probabilities ``(H, W, K)``: instance labels (``YX``)
        for the foreground and boundary targets, class ids for a multi-class net.
        ``overrides`` replace single settings, e.g. ``min_size=50``."""
        return label_image(probabilities, {**self.postprocessing, **overrides})

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
            mask, ignored = split_ignored(mask, ignore_label, f"mask {name}")
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
