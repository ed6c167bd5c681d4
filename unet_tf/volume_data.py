"""The ``tf.data`` input pipeline of volumes (``ZYX[C]``): the 2-D pipeline's
(:mod:`unet_tf.data`) in three dimensions.

Per volume, once: the normalised volume, its class labels, its weight map with anisotropic
distances (the voxel size, in units of the finest axis, so ``border_sigma`` stays in in-plane
pixels) and the objects to centre tiles on. Per sample, in a ``tf.numpy_function``: a tile cut
with mirrored context (weight 0 outside the volume), augmented in 3-D
(:meth:`unet_tf.augment.Augmentation.apply_volume`), as ``(x, y, w)`` for Keras ``fit``.
Tiles are drawn as in 2-D (:mod:`unet_tf.sampling`): a share centred on annotated objects and,
with partial annotations (sparse slices, an ignore label), the rest on annotated voxels.
"""


import numpy as np

from .augment import Augmentation
from .backend import tf
from .data import prepare_item, produce_sample
from .images import NORMALIZATION, check_volume
from .overlap_tile import crop_reflect_nd
from .sampling import draw_window
from .volume_sizes import volume_output_shape


def relative_spacing(voxel_size):
    """The voxel size in units of its finest axis (so distances count in-plane pixels)."""
    finest = min(voxel_size)
    return tuple(float(s) / finest for s in voxel_size)


def prepare_volumes(volumes, masks, voxel_size, num_classes=2, weight_map=True, w0=10.0,
                    border_sigma=5.0, class_weights="balanced", normalization=NORMALIZATION,
                    target="foreground", ignore_label=None):
    """The per-volume arrays the pipeline samples from (checked; ``ValueError`` naming the
    first volume or mask that does not fit)."""
    if len(volumes) != len(masks):
        raise ValueError(f"got {len(volumes)} volumes but {len(masks)} masks")
    if not len(volumes):
        raise ValueError("no volumes given")
    spacing = relative_spacing(voxel_size)
    prepared, channels = [], None
    for i, (volume, mask) in enumerate(zip(volumes, masks)):
        volume = check_volume(volume, f"volume {i}")
        mask = np.asarray(mask)
        if mask.shape != volume.shape[:3]:
            raise ValueError(f"mask {i} has shape {mask.shape}, expected the ZYX shape of "
                             f"volume {i} {volume.shape[:3]}")
        if channels not in (None, volume.shape[3]):
            raise ValueError(f"volume {i} has {volume.shape[3]} channels, volume 0 has "
                             f"{channels}")
        channels = volume.shape[3]
        prepared.append(prepare_item(volume, mask, f"mask {i}", num_classes, weight_map, w0,
                                     border_sigma, class_weights, normalization, target,
                                     ignore_label, spacing))
    return prepared


def _cut(item, corner, size, margin):
    """Tile of ``size + 2 margin`` (per axis) whose central ``size`` window starts at
    ``corner``; weights are 0 outside the volume (mirrored context is seen, never scored)."""
    starts = [c - m for c, m in zip(corner, margin)]
    extent = [s + 2 * m for s, m in zip(size, margin)]
    inside = np.ones(extent, bool)
    for axis, (start, n, full) in enumerate(zip(starts, extent, item.labels.shape)):
        index = np.arange(start, start + n)
        shape = [1, 1, 1]
        shape[axis] = n
        inside &= ((index >= 0) & (index < full)).reshape(shape)
    return (crop_reflect_nd(item.image, starts, extent),
            crop_reflect_nd(item.labels, starts, extent),
            crop_reflect_nd(item.weights, starts, extent) * inside)


def _center(array, size):
    starts = [(n - s) // 2 for n, s in zip(array.shape, size)]
    return array[tuple(slice(b, b + s) for b, s in zip(starts, size))]


def covering_windows(shape, out):
    """Corners of the output windows that cover a ``ZYX`` shape (the last ones flush)."""
    def starts(n, o):
        return [0] if n <= o else sorted(set(range(0, n - o, o)) | {n - o})
    axes = [starts(n, o) for n, o in zip(shape, out)]
    return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def make_volume_dataset(volumes, masks, tile_shape, plan, voxel_size, batch_size=1,
                        augment=True, shuffle=True, seed=None, validation=False,
                        foreground_tiles=0.0, counter=None,
                        num_parallel_calls=tf.data.AUTOTUNE, **prepare):
    """A ``tf.data.Dataset`` of ``(x, y, w)`` batches of volume tiles for Keras ``fit``.

    Args:
        volumes, masks: ``ZYX``/``ZYXC`` volumes and their ``ZYX`` masks (sizes may differ).
        tile_shape: the input tile ``(Z, Y, X)``, valid for ``plan``; labels cover its output.
        plan: the net's pools and kernels (:func:`unet_tf.volume_sizes.plan_axes`).
        voxel_size: ``(z, y, x)``: distances of the weight map, augmentation's axes.
        augment: ``True``, ``False`` or an :class:`~unet_tf.augment.Augmentation`.
        validation: fixed tiles, one pass: windows covering each volume or, with
            ``foreground_tiles`` or partial annotations, as many drawn as training draws them.
        foreground_tiles, counter: as for :func:`unet_tf.data.make_dataset`.
        prepare: the settings of :func:`prepare_volumes` (``num_classes``, ``weight_map``,
            ``w0``, ``border_sigma``, ``class_weights``, ``normalization``, ``target``,
            ``ignore_label``).

    Yields ``x`` (B, Z, Y, X, C) float32, ``y`` (B, *out) int32 and ``w`` (B, *out) float32.
    """
    tile_shape = tuple(int(t) for t in tile_shape)
    out = volume_output_shape(tile_shape, plan)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    augmentation = None if validation or not augment else (
        Augmentation() if augment is True else augment)
    prepared = prepare_volumes(volumes, masks, voxel_size, **prepare)
    channels = prepared[0].image.shape[3]
    margin = [(t - o) // 2 for t, o in zip(tile_shape, out)]
    seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    draw = lambda item, rng: draw_window(rng, item.labels.shape, out, item.groups,
                                         item.annotated, foreground_tiles)

    if validation:
        if foreground_tiles or any(item.annotated is not None for item in prepared):
            tiles = [(i, draw(item, np.random.default_rng([seed, i, j])))
                     for i, item in enumerate(prepared)
                     for j in range(len(covering_windows(item.labels.shape, out)))]
        else:
            tiles = [(i, corner) for i, item in enumerate(prepared)
                     for corner in covering_windows(item.labels.shape, out)]

        def sample(k):
            i, corner = tiles[int(k)]
            x, y, w = _cut(prepared[i], corner, out, margin)
            return x, _center(y, out), _center(w, out)
        indices = tf.data.Dataset.range(len(tiles))
    else:
        extra = augmentation.volume_margin(voxel_size) if augmentation else (0, 0, 0)

        def sample(k):
            epoch, position = divmod(int(k), len(prepared))
            order = (np.random.default_rng([seed, epoch]).permutation(len(prepared))
                     if shuffle else np.arange(len(prepared)))
            item = prepared[order[position]]
            rng = np.random.default_rng([seed, epoch, position])
            corner = draw(item, rng)
            x, y, w = _cut(item, corner, out, [m + e for m, e in zip(margin, extra)])
            if augmentation:
                x, y, w = augmentation.apply_volume(x, y, w, rng, voxel_size)
            y, w = _center(y, out), _center(w, out)
            if counter is not None:
                counter.count(y, w)
            return _center(x, tile_shape), y, w
        indices = tf.data.Dataset.counter()

    def to_tensors(k):
        x, y, w = tf.numpy_function(lambda k: produce_sample(sample, k), [k],
                                    [tf.float32, tf.int32, tf.float32], stateful=False)
        x.set_shape((*tile_shape, channels))
        y.set_shape(out)
        w.set_shape(out)
        return x, y, w

    dataset = indices.map(to_tensors, num_parallel_calls=num_parallel_calls, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=not validation).prefetch(tf.data.AUTOTUNE)
