"""The ``tf.data`` input pipeline: tiles with mirror context, augmentation and weight maps.

Per image, what does not change between samples is computed once when the dataset is made:
the normalised image, the class labels and the weight map. Per sample, a ``tf.numpy_function``
cuts a tile (mirror-extrapolated where it leaves the image, as overlap-tile prediction sees it),
augments it with OpenCV (which releases the GIL, so parallel calls use every core) and returns
``(x, y, w)``; Keras ``fit`` takes ``w`` as the per-pixel ``sample_weight`` of the loss.
"""

import atexit
import dataclasses

import numpy as np
from scipy import ndimage as ndi

from .backend import tf
from .augment import Augmentation
from .images import NORMALIZATION, check_image, crop_reflect, normalize_with
from .sampling import draw_window, object_groups
from .sizes import output_size
from .masks import as_instances, check_mask, split_ignored
from .weightmaps import weight_map as compute_weight_map


def boundary_labels(instances):
    """0 background, 1 interior, 2 boundary (int32): the pixels of an instance next to
    (8-neighbours; 26 in a ``ZYX`` volume) a pixel of another instance or of the background."""
    instances = np.asarray(instances)
    edge = ((ndi.grey_erosion(instances, size=3, mode="nearest") != instances)
            | (ndi.grey_dilation(instances, size=3, mode="nearest") != instances))
    return np.where(instances > 0, np.where(edge, 2, 1), 0).astype(np.int32)


def class_labels(mask, num_classes=2, name="mask", target=None, ndim=2):
    """Class ids (int32) from a mask, for a ``target`` (default: ``"foreground"`` with 2
    classes, ``"classes"`` with more): foreground, any non-zero pixel (instance or binary
    masks); boundary, :func:`boundary_labels` of the instances; classes, the mask's values."""
    mask = check_mask(mask, name, ndim)
    target = target or ("foreground" if num_classes == 2 else "classes")
    if target == "boundary":
        return boundary_labels(as_instances(mask, name, ndim))
    if target == "foreground":
        return (mask > 0).astype(np.int32)
    values = np.unique(mask)
    if values.max() >= num_classes:
        raise ValueError(f"{name} must hold class ids 0..{num_classes - 1} for {num_classes} "
                         f"classes, found values {values[:10].tolist()}")
    return mask.astype(np.int32)


@dataclasses.dataclass
class Prepared:
    image: np.ndarray    # YXC float32, normalised
    labels: np.ndarray   # YX int32 class ids
    weights: np.ndarray  # YX float32, 0 on unannotated pixels
    groups: list         # flat pixel indices per object (or class) to centre tiles on
    annotated: np.ndarray | None  # flat indices of annotated pixels (partial annotations only)


def prepare_item(image, mask, name, num_classes, weight_map, w0, border_sigma, class_weights,
                 normalization, target, ignore_label=None, spacing=None):
    """One checked image (``YXC``; a ``ZYXC`` volume with ``spacing``, its voxel size in
    finest-axis units) and its mask as the arrays a pipeline samples from."""
    ndim = 2 if spacing is None else 3
    mask, ignored = split_ignored(mask, ignore_label, name, ndim)
    labels = class_labels(mask, num_classes, name, target, ndim)
    if weight_map:
        instances = (as_instances(labels > 0, ndim=ndim) if target == "classes"
                     else as_instances(mask, name, ndim))
        weights = compute_weight_map(instances, w0, border_sigma, class_weights, ignored=ignored,
                                     spacing=spacing)
    else:
        weights = np.ones(mask.shape, np.float32) if ignored is None else \
            (~ignored).astype(np.float32)
    annotated = (np.flatnonzero(~ignored.ravel()) if ignored is not None and ignored.any()
                 else None)
    return Prepared(normalize_with(image, normalization), labels, weights,
                    object_groups(labels if target == "classes" else mask, target), annotated)


def _prepare(images, masks, num_classes, weight_map, w0, border_sigma, class_weights,
             normalization, target, ignore_label=None):
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    if not len(images):
        raise ValueError("no images given")
    prepared, channels = [], None
    for i, (image, mask) in enumerate(zip(images, masks)):
        image = check_image(image, f"image {i}")
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {i} has shape {mask.shape}, expected the shape of image {i} "
                             f"{image.shape[:2]}")
        if channels not in (None, image.shape[2]):
            raise ValueError(f"image {i} has {image.shape[2]} channels, image 0 has {channels}")
        channels = image.shape[2]
        prepared.append(prepare_item(image, mask, f"mask {i}", num_classes, weight_map, w0,
                                     border_sigma, class_weights, normalization, target,
                                     ignore_label))
    return prepared


def _cut(item, top, left, size, margin):
    """Tile of ``size + 2*margin`` whose central ``size`` window starts at ``(top, left)``.

    Weights are zero outside the image, so mirrored context is seen but never scored.
    """
    t, l, s = top - margin, left - margin, size + 2 * margin
    height, width = item.labels.shape
    rows = (np.arange(t, t + s) >= 0) & (np.arange(t, t + s) < height)
    cols = (np.arange(l, l + s) >= 0) & (np.arange(l, l + s) < width)
    inside = rows[:, None] & cols[None, :]
    return (crop_reflect(item.image, t, l, s, s), crop_reflect(item.labels, t, l, s, s),
            crop_reflect(item.weights, t, l, s, s) * inside)


def _center(array, size):
    start = (array.shape[0] - size) // 2
    return array[start:start + size, start:start + size]


def validation_windows(shape, out):
    """Top-left corners of the output windows that cover a ``YX`` shape (last ones flush)."""
    def starts(n):
        if n <= out:
            return [0]
        return sorted(set(range(0, n - out, out)) | {n - out})
    return [(y, x) for y in starts(shape[0]) for x in starts(shape[1])]


def make_dataset(images, masks, tile_size=572, batch_size=1, depth=5, augment=True,
                 weight_map=True, w0=10.0, border_sigma=5.0, shuffle=True, seed=None, repeat=None,
                 num_parallel_calls=tf.data.AUTOTUNE, validation=False, num_classes=2,
                 upsampling="transpose", class_weights="balanced", normalization=NORMALIZATION,
                 target=None, foreground_tiles=0.0, ignore_label=None, counter=None):
    """A ``tf.data.Dataset`` of ``(x, y, w)`` batches for Keras ``fit``.

    Args:
        images: list of ``YX``/``YXC`` arrays (any numeric dtype, sizes may differ).
        masks: list of ``YX`` instance or binary masks (0 = background), or class ids when
            ``num_classes > 2``.
        tile_size: input tile ``T`` (a valid size, e.g. 572); labels cover the centred output
            window ``O = output_size(T)``.
        augment: ``True`` (the paper's set), ``False``, or an :class:`Augmentation`.
        weight_map: the paper's weight maps (``w0``, ``border_sigma`` = the paper's sigma,
            ``class_weights``) as ``w``;
            otherwise ``w`` is 1.
        shuffle: visit images in a random order each epoch (else in the given order).
        seed: makes the whole stream reproducible (tile positions, augmentation, order).
        repeat: an endless stream; otherwise one tile per image (training) or one pass over
            the tiles (validation). Default: endless for training, one pass for validation.
        validation: fixed tiles (no augmentation, no shuffling): windows that cover each image
            or, with ``foreground_tiles``, as many drawn the way training draws them (seeded),
            so sparse objects are measured too.
        target: what ``y`` holds (see :data:`unet_tf.config.TARGETS`); default
            ``"foreground"`` with 2 classes, ``"classes"`` with more.
        foreground_tiles: the share of tiles centred on a random annotated object (see
            :mod:`unet_tf.sampling`); the rest are uniform.
        ignore_label: the mask value of unannotated pixels (weight 0), or ``None``.
        counter: a :class:`~unet_tf.sampling.TileCounter` to count training tiles holding
            objects.

    Yields ``x`` (B, T, T, C) float32 normalised, ``y`` (B, O, O) int32 class ids and
    ``w`` (B, O, O) float32. Pixels outside an image get weight 0.
    """
    out = output_size(tile_size, depth, upsampling)
    if repeat is None:
        repeat = not validation
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if augment is True:
        augment = Augmentation()
    augmentation = None if validation or not augment else augment
    target = target or ("foreground" if num_classes == 2 else "classes")
    if not 0 <= foreground_tiles <= 1:
        raise ValueError(f"foreground_tiles must be a share in [0, 1], got {foreground_tiles!r}")
    prepared = _prepare(images, masks, num_classes, weight_map, w0, border_sigma, class_weights,
                        normalization, target, ignore_label)
    channels = prepared[0].image.shape[2]
    margin = (tile_size - out) // 2
    seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    draw = lambda item, rng: draw_window(rng, item.labels.shape, out, item.groups,
                                         item.annotated, foreground_tiles)

    if validation:
        if foreground_tiles or any(item.annotated is not None for item in prepared):
            tiles = [(i, *draw(item, np.random.default_rng([seed, i, j])))
                     for i, item in enumerate(prepared)
                     for j in range(len(validation_windows(item.labels.shape, out)))]
        else:
            tiles = [(i, top, left) for i, item in enumerate(prepared)
                     for top, left in validation_windows(item.labels.shape, out)]

        def sample(k):
            i, top, left = tiles[int(k)]
            x, y, w = _cut(prepared[i], top, left, out, margin)
            return x, _center(y, out), _center(w, out)
        indices = tf.data.Dataset.range(len(tiles))
    else:
        extra = augmentation.margin() if augmentation else 0

        def sample(k):
            k = int(k)
            epoch, position = divmod(k, len(prepared))
            order = (np.random.default_rng([seed, epoch]).permutation(len(prepared))
                     if shuffle else np.arange(len(prepared)))
            item = prepared[order[position]]
            rng = np.random.default_rng([seed, epoch, position])
            top, left = draw(item, rng)
            x, y, w = _cut(item, top, left, out, margin + extra)
            if augmentation:
                x, y, w = augmentation.apply(x, y, w, rng)
            y, w = _center(y, out), _center(w, out)
            if counter is not None:
                counter.count(y, w)
            return _center(x, tile_size), y, w
        indices = (tf.data.Dataset.counter() if repeat
                   else tf.data.Dataset.range(len(prepared)))

    def to_tensors(k):
        x, y, w = tf.numpy_function(lambda k: produce_sample(sample, k), [k],
                                    [tf.float32, tf.int32, tf.float32], stateful=False)
        x.set_shape((tile_size, tile_size, channels))
        y.set_shape((out, out))
        w.set_shape((out, out))
        return x, y, w

    dataset = indices.map(to_tensors, num_parallel_calls=num_parallel_calls, deterministic=True)
    if validation and repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size, drop_remainder=not validation).prefetch(tf.data.AUTOTUNE)


_exiting = False


@atexit.register
def _stop_producing():
    # tf.data keeps calling numpy functions from its prefetch threads while Python exits, and a
    # still-referenced iterator then deadlocks on the GIL; failing fast lets those threads stop.
    global _exiting
    _exiting = True


def produce_sample(sample, k):
    if _exiting:
        raise RuntimeError("the Python interpreter is exiting")
    x, y, w = sample(k)
    return (np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int32),
            np.ascontiguousarray(w, np.float32))
