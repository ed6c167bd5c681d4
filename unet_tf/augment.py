"""Data augmentation as in the paper: elastic deformation, plus flips/rotations and gray values
(gamma, uneven gain, contrast, brightness, blur, noise).

Shifts come from the random tile positions of the input pipeline (``unet_tf.data``).
"""

import dataclasses
import functools

import cv2
import numpy as np

from .images import reflect_index

_INTERPOLATION = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}
_REMAP_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def displacement_field(shape, grid=3, sigma=10.0, rng=None):
    """Smooth random ``(dy, dx)`` float32 fields of ``shape``: Gaussian vectors (std ``sigma``
    pixels) on a ``grid x grid`` coarse grid, bicubically interpolated to every pixel."""
    if not (isinstance(grid, int) and grid >= 2):
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
    rng = np.random.default_rng(rng)
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid)).astype(np.float32)
    height, width = shape
    return tuple(cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse)


def _remap(image, map_y, map_x, order):
    """``cv2.remap`` with mirror borders, for any channel count and numeric dtype."""
    dtype = image.dtype
    if dtype.type not in _REMAP_DTYPES:
        image = image.astype(np.float32)
    flags = dict(interpolation=_INTERPOLATION[order], borderMode=cv2.BORDER_REFLECT_101)
    if image.ndim == 3 and image.shape[2] > 4:  # cv2 handles at most 4 channels at once
        out = np.stack([cv2.remap(image[..., c], map_x, map_y, **flags)
                        for c in range(image.shape[2])], axis=-1)
    else:
        out = cv2.remap(image, map_x, map_y, **flags)
        if image.ndim == 3 and out.ndim == 2:
            out = out[..., None]
    return out.astype(dtype, copy=False)


def elastic_deform(image, *label_like, grid=3, sigma=10.0, rng=None, order=3):
    """Deform ``image`` and any label-like arrays with one random smooth displacement field.

    Args:
        image: ``YX`` or ``YXC`` array, uint8/uint16/float (other dtypes work as float32).
        *label_like: arrays with the same ``YX`` shape (instance/class labels, weight maps).
            They are sampled with **nearest** neighbour, so no new label values appear.
        grid, sigma: the paper's coarse grid (3x3) and displacement std (10 pixels).
        rng: ``numpy.random.Generator`` or seed; the same seed gives the same deformation.
        order: interpolation of ``image``: 3 bicubic (paper), 1 bilinear, 0 nearest.

    Borders are mirrored. Returns the deformed image, or a tuple ``(image, *label_like)``.

    Weight maps are passed here as label-like and warped with the same field rather than
    recomputed from the deformed labels: recomputing costs ~50 ms per 512x512 tile against <1 ms
    for the warp, and the field is smooth (3x3 control points), so cell-to-cell distances change
    only by the small local stretch while the peaks stay exactly on the warped gaps.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (YX) or 3-D (YXC), got shape {image.shape}")
    if order not in _INTERPOLATION:
        raise ValueError(f"order must be 0, 1 or 3, got {order!r}")
    height, width = image.shape[:2]
    for i, label in enumerate(label_like):
        if np.shape(label)[:2] != (height, width):
            raise ValueError(f"label-like array {i} has shape {np.shape(label)}, "
                             f"expected the image's YX shape {(height, width)}")
    dy, dx = displacement_field((height, width), grid, sigma, rng)
    rows, cols = _pixel_grid(height, width)
    map_y, map_x = rows + dy, cols + dx
    deformed = _remap(image, map_y, map_x, order)
    if not label_like:
        return deformed
    return (deformed, *(_remap_labels(np.asarray(label), map_y, map_x) for label in label_like))


@functools.lru_cache(maxsize=8)
def _pixel_grid(height, width):
    grid = np.mgrid[:height, :width].astype(np.float32)
    grid.setflags(write=False)
    return grid[0], grid[1]


def _remap_labels(label, map_y, map_x):
    """Nearest-neighbour warp that returns exactly the input's values, for any dtype."""
    if label.dtype.type in _REMAP_DTYPES:
        return _remap(label, map_y, map_x, 0)
    if np.issubdtype(label.dtype, np.integer) and label.size and 0 <= label.min() <= label.max() < 2 ** 16:
        return _remap(label.astype(np.uint16), map_y, map_x, 0).astype(label.dtype)
    height, width = label.shape[:2]  # e.g. int64 labels beyond uint16: index by hand
    source = (reflect_index(np.rint(map_y).astype(np.int64), height) * width
              + reflect_index(np.rint(map_x).astype(np.int64), width))
    return label.reshape(height * width, *label.shape[2:])[source]


def flip_rotate(arrays, rng):
    """Apply one random element of the 8 flips/90-degree rotations to every ``YX[C]`` array."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
    return out


def vary_intensity(image, rng, brightness=0.1, contrast=0.5, gamma=0.4, field=0.4, blur=1.0,
                   noise=0.05):
    """Random gray-value change of a normalised float ``YXC`` image (or ``ZYXC`` volume: one
    gain field for every slice, in-plane blur), as real images vary
    (the paper's "gray value variations"; 0 switches a part off):

    - gamma ``exp(U(-gamma, gamma))`` on the image rescaled to [0, 1] by its own min/max;
    - a smooth gain field ``exp(N(0, field))`` (4 x 4 control points, bicubic) multiplying the
      signal above the tile's minimum: uneven staining or illumination, some objects dim and
      others bright in one tile (a global change is undone by per-image normalisation, a local
      one is not);
    - contrast ``1 + U(-contrast, contrast)`` and brightness ``U(-brightness, brightness)``;
    - half the time a Gaussian blur of ``U(0, blur)`` px (focus), half the time Gaussian noise
      of std ``U(0, noise)``.
    """
    image = np.asarray(image, np.float32)
    lo, hi = float(image.min()), float(image.max())
    if gamma and hi > lo:
        g = np.float32(np.exp(rng.uniform(-gamma, gamma)))
        image = lo + (hi - lo) * ((image - lo) / (hi - lo)) ** g
    if field:
        coarse = np.exp(rng.normal(0.0, field, (4, 4))).astype(np.float32)
        gain = cv2.resize(coarse, (image.shape[-2], image.shape[-3]),
                          interpolation=cv2.INTER_CUBIC)
        image = lo + (image - lo) * np.maximum(gain, 0.05)[..., None]
    scale = np.float32(1.0 + rng.uniform(-contrast, contrast))
    shift = np.float32(rng.uniform(-brightness, brightness))
    image = image * scale + shift
    if blur and rng.random() < 0.5:
        sigma = float(rng.uniform(0.1, blur))
        planes = image.reshape(-1, *image.shape[-3:])
        image = np.stack([cv2.GaussianBlur(p, (0, 0), sigma).reshape(p.shape) for p in planes]
                         ).reshape(image.shape)
    if noise and rng.random() < 0.5:
        image = image + rng.normal(0.0, rng.uniform(0, noise), image.shape).astype(np.float32)
    return image.astype(np.float32)


@dataclasses.dataclass
class Augmentation:
    """Which augmentations the training pipeline applies, and how strongly."""
    elastic: bool = True
    grid: int = 3
    elastic_sigma: float = 10.0   # std of the displacement vectors, pixels
    flip_rotate: bool = True
    intensity: bool = True        # gray values: see vary_intensity
    brightness: float = 0.1
    contrast: float = 0.5
    gamma: float = 0.4
    field: float = 0.4            # std of the log gain of the smooth intensity field
    blur: float = 1.0             # largest Gaussian blur, pixels
    noise: float = 0.05           # largest noise std (normalised units)

    def margin(self):
        """Extra context (pixels per side) to deform so that tile borders see real image."""
        return int(np.ceil(3 * self.elastic_sigma)) if self.elastic else 0

    def apply(self, image, labels, weights, rng):
        """Augment a ``YXC`` float image with its ``YX`` labels and weights (same size)."""
        if self.flip_rotate:
            image, labels, weights = flip_rotate((image, labels, weights), rng)
        if self.elastic and self.elastic_sigma > 0:
            image, labels, weights = elastic_deform(image, labels, weights, grid=self.grid,
                                                    sigma=self.elastic_sigma, rng=rng)
        if self.intensity:
            image = vary_intensity(image, rng, self.brightness, self.contrast, self.gamma,
                                   self.field, self.blur, self.noise)
        return image, labels, weights

    def volume_margin(self, voxel_size):
        """:meth:`margin` per axis of a volume: ``elastic_sigma`` is in the finest voxels."""
        sigma = self.volume_sigma(voxel_size)
        return tuple(int(np.ceil(3 * s)) if self.elastic else 0 for s in sigma)

    def volume_sigma(self, voxel_size):
        """The displacement std per axis, in voxels: the same physical std on every axis."""
        finest = min(voxel_size)
        return tuple(self.elastic_sigma * finest / s for s in voxel_size)

    def apply_volume(self, volume, labels, weights, rng, voxel_size):
        """Augment a ``ZYXC`` float volume with its ``ZYX`` labels and weights: flips along
        every axis, right-angle rotations in the plane (where its pixels are square) and in
        the other planes only where the voxels are cubes, 3-D elastic deformation with one
        physical std on every axis, gray values (:func:`vary_intensity`)."""
        arrays = [volume, labels, weights]
        if self.flip_rotate:
            arrays = flip_rotate_volume(arrays, rng, voxel_size)
        if self.elastic and self.elastic_sigma > 0:
            arrays = list(elastic_deform_3d(*arrays, grid=self.grid,
                                            sigma=self.volume_sigma(voxel_size), rng=rng))
        volume, labels, weights = arrays
        if self.intensity:
            volume = vary_intensity(volume, rng, self.brightness, self.contrast, self.gamma,
                                    self.field, self.blur, self.noise)
        return volume, labels, weights


def flip_rotate_volume(arrays, rng, voxel_size):
    """One random flip per axis and right-angle rotations of ``ZYX[C]`` arrays, in a plane only
    where its two axes have the same spacing (so the voxel grid is kept); a plane whose two
    extents differ turns by 0 or 180 degrees only (the shape is kept)."""
    flips = rng.integers(2, size=3).astype(bool)
    shape = np.shape(arrays[0])
    planes = [(a, b) for a, b in ((1, 2), (0, 1), (0, 2))
              if np.isclose(voxel_size[a], voxel_size[b])]
    turns = [(plane, int(rng.integers(4)) if shape[plane[0]] == shape[plane[1]]
              else 2 * int(rng.integers(2))) for plane in planes]
    out = []
    for a in arrays:
        a = a[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        for plane, k in turns:
            a = np.rot90(a, k, axes=plane)
        out.append(np.ascontiguousarray(a))
    return out


# --------------------------------------------------------------------------- volumes (ZYX)

def displacement_field_3d(shape, grid=3, sigma=(2.0, 10.0, 10.0), rng=None):
    """Smooth random ``(dz, dy, dx)`` float32 fields of a ``ZYX`` ``shape``: Gaussian vectors
    (std ``sigma`` voxels per axis: the physical std over the voxel size) on a ``grid`` cube,
    interpolated bicubically to every voxel (OpenCV, in-plane, then along z)."""
    if not (isinstance(grid, int) and grid >= 2):
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (3,))
    if not (np.all(np.isfinite(sigma)) and np.all(sigma >= 0)):
        raise ValueError(f"sigma must be finite numbers >= 0 (voxels), got {sigma!r}")
    rng = np.random.default_rng(rng)
    depth, height, width = shape
    fields = []
    for std in sigma:
        coarse = rng.normal(0.0, std, size=(grid, grid, grid)).astype(np.float32)
        planes = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC)
                           for c in coarse])                       # (grid, Y, X)
        along_z = cv2.resize(planes.reshape(grid, -1), (height * width, depth),
                             interpolation=cv2.INTER_CUBIC)         # (Z, Y*X)
        fields.append(along_z.reshape(depth, height, width))
    return tuple(fields)


def elastic_deform_3d(volume, *label_like, grid=3, sigma=(2.0, 10.0, 10.0), rng=None):
    """Deform a ``ZYX[C]`` volume and any label-like ``ZYX`` arrays with one smooth random
    field (:func:`displacement_field_3d`, ``sigma`` in voxels per axis), mirrored at the faces.

    Voxel ``(z, y, x)`` takes the value at ``(z + dz(z, y', x'), y', x')`` with ``(y', x') =
    (y + dy, x + dx)``: a resampling along z (linear: z is the coarse axis of most stacks, where
    a cubic overshoots), then one in-plane warp per slice (bicubic, OpenCV). ``dz`` read at the
    displaced in-plane position is as smooth and random as at the voxel's own, and splitting the
    axes makes it a fraction of a 3-D spline's time (``benchmarks/bench_elastic.py``).
    Label-like arrays take the nearest voxel in both steps, so their values are kept.
    """
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"volume must be ZYX or ZYXC, got shape {volume.shape}")
    for i, label in enumerate(label_like):
        if np.shape(label)[:3] != volume.shape[:3]:
            raise ValueError(f"label-like array {i} has shape {np.shape(label)}, expected the "
                             f"volume's ZYX shape {volume.shape[:3]}")
    depth, height, width = volume.shape[:3]
    dz, dy, dx = displacement_field_3d(volume.shape[:3], grid, sigma, rng)
    planes = volume.reshape(depth * height * width, -1)          # row z*P + p: voxel p of z
    label_planes = [np.asarray(label).reshape(depth * height * width) for label in label_like]
    pixel = np.arange(height * width)
    rows, cols = _pixel_grid(height, width)
    deformed = np.empty(volume.shape, volume.dtype)
    labels = [np.empty_like(np.asarray(label)) for label in label_like]
    for z in range(depth):   # slice by slice: every temporary fits in the cache
        source = z + dz[z].reshape(-1)
        lower = np.floor(source)
        fraction = (source - lower)[:, None]
        lower = lower.astype(np.int64)
        below = planes[_mirrored(lower, depth) * pixel.size + pixel].astype(np.float32)
        above = planes[_mirrored(lower + 1, depth) * pixel.size + pixel].astype(np.float32)
        along_z = (below + (above - below) * fraction).reshape(height, width, -1)
        map_y, map_x = rows + dy[z], cols + dx[z]
        warped = _remap(along_z if volume.ndim == 4 else along_z[..., 0], map_y, map_x, 3)
        deformed[z] = _cast_like(warped, volume.dtype)
        nearest = _mirrored(np.rint(source).astype(np.int64), depth) * pixel.size + pixel
        for flat, result in zip(label_planes, labels):
            result[z] = _remap_labels(flat[nearest].reshape(height, width), map_y, map_x)
    return deformed if not label_like else (deformed, *labels)


def _mirrored(index, size):
    """:func:`reflect_index`, skipped where every index is inside already (most slices)."""
    return index if index.min() >= 0 and index.max() < size else reflect_index(index, size)


def _cast_like(values, dtype):
    """Float results back in ``dtype``: integer types rounded and clipped to their range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)
