"""Images larger than memory: read OME-Zarr, zarr and TIFF region by region; write OME-Zarr.

:class:`LazyImage` reads a 2-D image (``YX`` or ``YXC``) from disk one region at a time:
OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3; the full-resolution level), a plain zarr
array, or a TIFF through tifffile's zarr store. It pickles as its path, so Dask workers reopen
it themselves. Axes other than ``y``, ``x`` and ``c`` (``t``, ``z``) must have size 1.
:class:`LazyVolume` does the same for a 3-D volume (``ZYX`` or ``ZYXC``) box by box.

The writer makes OME-Zarr images (NGFF 0.4, zarr v2: what napari, Fiji/MoBIE and QuPath read
today) with a resolution pyramid (each level half the size of the last, nearest-neighbour)
and a labels image under ``labels/<name>``. Needs the ``[large]`` extra (zarr, ome-zarr, dask).
"""

from pathlib import Path

import numpy as np

from .errors import MissingExtra

NGFF_WRITE_VERSION = "0.4"
PYRAMID_SMALLEST = 256   # stop halving once the level fits in this many pixels across


def _require(module):
    try:
        return __import__(module)
    except ModuleNotFoundError:
        raise MissingExtra(
            f"large-image prediction needs {module}: pip install 'unet-tf[large]'") from None


def is_zarr(path):
    """Whether ``path`` names a zarr store (a folder with zarr metadata, or ``*.zarr``)."""
    path = Path(path)
    return path.suffix == ".zarr" or any((path / name).is_file() for name in
                                         (".zgroup", ".zarray", "zarr.json"))


class LazyImage:
    """A 2-D image read region by region. ``shape`` is ``(H, W, C)``; :meth:`read` returns a
    ``(h, w, C)`` numpy array. ``source`` is a path (OME-Zarr, zarr array, TIFF) or an array."""

    AXES = "yxc"   # an array's or plain zarr array's axes, by its number of dimensions

    def __init__(self, source):
        self.source = source if isinstance(source, np.ndarray) else Path(source)
        array, axes = self._open()
        self._select(array, axes)

    def _open(self):
        """``(array, axes)``: something sliceable and its axis names (lower case)."""
        if isinstance(self.source, np.ndarray):
            return self.source, self.AXES[:self.source.ndim]
        path = self.source
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes.lower().replace("s", "c")
            _require("zarr")
            import zarr
            return zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r"), axes
        if not is_zarr(path):
            raise ValueError(f"{path}: expected an OME-Zarr/zarr store or a TIFF")
        zarr = _require("zarr")
        node = zarr.open(str(path), mode="r")
        if not hasattr(node, "shape"):               # a group: OME-Zarr multiscales
            attrs = dict(node.attrs)
            multiscales = attrs.get("ome", attrs).get("multiscales")
            if not multiscales:
                raise ValueError(f"{path} is a zarr group without OME-Zarr 'multiscales' "
                                 "metadata: point at the image (or its array) instead")
            first = multiscales[0]
            axes = "".join(a["name"] if isinstance(a, dict) else a for a in first["axes"])
            return node[first["datasets"][0]["path"]], axes.lower()
        return node, self.AXES[:node.ndim]

    def _select(self, array, axes):
        if len(axes) != array.ndim or not {"y", "x"} <= set(axes):
            raise ValueError(f"{self.source}: cannot tell the y and x axes of a "
                             f"{array.ndim}-D array (axes {axes!r})")
        extra = {a: n for a, n in zip(axes, array.shape) if a not in "yxc" and n != 1}
        if extra:
            raise ValueError(f"{self.source}: expected one 2-D image (YX or YXC), got axes "
                             f"{axes!r} with shape {tuple(array.shape)}: select a single "
                             f"{'/'.join(extra)} first")
        self.axes, self.dtype = axes, np.dtype(array.dtype)
        sizes = dict(zip(axes, array.shape))
        self.shape = (sizes["y"], sizes["x"], sizes.get("c", 1))
        self._array = array

    def read(self, top, bottom, left, right):
        """Pixels ``[top:bottom, left:right]`` as ``(h, w, C)``."""
        spans = {"y": slice(top, bottom), "x": slice(left, right), "c": slice(None)}
        index = tuple(spans.get(a, 0) for a in self.axes)
        kept = [a for a in self.axes if a in spans]
        region = np.asarray(self._array[index])
        region = np.transpose(region, [kept.index(a) for a in "yxc" if a in kept])
        return region if "c" in kept else region[..., None]

    def read_band(self, start, stop):
        """Rows ``[start:stop]`` whole (what the normalisation's histogram reads)."""
        return self.read(start, stop, 0, self.shape[1])

    def read_mirrored(self, top, left, height, width):
        """Pixels ``[top:top+height, left:left+width]`` with mirrored content beyond the image
        border (as :func:`unet_tf.overlap_tile.crop_reflect`), reading one bounding box."""
        from .overlap_tile import reflect_index
        rows = reflect_index(np.arange(top, top + height), self.shape[0])
        cols = reflect_index(np.arange(left, left + width), self.shape[1])
        box = self.read(rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
        return box[(rows - rows.min())[:, None], (cols - cols.min())[None, :]]

    def pixel_size(self):
        """The ``y``/``x`` scale of an OME-Zarr's first level (a volume's: ``z``/``y``/``x``),
        or ``None``."""
        if isinstance(self.source, np.ndarray) or not is_zarr(self.source):
            return None
        import zarr
        node = zarr.open(str(self.source), mode="r")
        if hasattr(node, "shape"):
            return None
        attrs = dict(node.attrs)
        first = attrs.get("ome", attrs)["multiscales"][0]
        for transform in first["datasets"][0].get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                return {a: s for a, s in zip(self.axes, transform["scale"])
                        if a in self.AXES[:-1]}
        return None

    def __getstate__(self):  # workers reopen the file; arrays travel as they are
        return {"source": self.source}

    def __setstate__(self, state):
        self.__init__(state["source"])

    def __repr__(self):
        return f"{type(self).__name__}(" \
               f"{str(self.source) if isinstance(self.source, Path) else 'array'}, " \
               f"shape={self.shape}, dtype={self.dtype})"


class LazyVolume(LazyImage):
    """A 3-D volume read box by box: ``shape`` is ``(Z, Y, X, C)``; :meth:`read` returns a
    ``(z, y, x, C)`` numpy array. ``source`` as for :class:`LazyImage`; a TIFF stack's
    unnamed stack axis (tifffile's ``Q``/``I``) counts as ``z``, a time axis does not."""

    AXES = "zyxc"

    def _select(self, array, axes):
        if "z" not in axes and sum(a in "qi" for a in axes) == 1:
            axes = "".join("z" if a in "qi" else a for a in axes)
        if len(axes) != array.ndim or not set("zyx") <= set(axes):
            raise ValueError(f"{self.source}: expected a volume with z, y and x axes, got "
                             f"{array.ndim}-D with axes {axes!r}")
        extra = {a: n for a, n in zip(axes, array.shape) if a not in "zyxc" and n != 1}
        if extra:
            raise ValueError(f"{self.source}: expected one volume (ZYX or ZYXC), got axes "
                             f"{axes!r} with shape {tuple(array.shape)}: select a single "
                             f"{'/'.join(extra)} first")
        self.axes, self.dtype = axes, np.dtype(array.dtype)
        sizes = dict(zip(axes, array.shape))
        self.shape = (sizes["z"], sizes["y"], sizes["x"], sizes.get("c", 1))
        self._array = array

    def read(self, starts, stops):
        """Voxels ``[z0:z1, y0:y1, x0:x1]`` of ``starts = (z0, y0, x0)``, ``stops = (z1, y1,
        x1)`` as ``(z, y, x, C)``."""
        spans = {a: slice(int(s), int(e)) for a, s, e in zip("zyx", starts, stops)}
        spans["c"] = slice(None)
        index = tuple(spans.get(a, 0) for a in self.axes)
        kept = [a for a in self.axes if a in spans]
        region = np.transpose(np.asarray(self._array[index]),
                              [kept.index(a) for a in "zyxc" if a in kept])
        return region if "c" in kept else region[..., None]

    def read_band(self, start, stop):
        """Planes ``[start:stop]`` whole."""
        return self.read((start, 0, 0), (stop, *self.shape[1:3]))

    def read_mirrored(self, starts, sizes):
        """The box at ``starts`` of ``sizes`` (``ZYX``) with mirrored content beyond the
        volume's faces (as :func:`unet_tf.overlap_tile.crop_reflect_nd`), reading one box."""
        from .overlap_tile import reflect_index
        index = [reflect_index(np.arange(s, s + n), m)
                 for s, n, m in zip(starts, sizes, self.shape[:3])]
        box = self.read([i.min() for i in index], [i.max() + 1 for i in index])
        return box[np.ix_(*[i - i.min() for i in index])]

    def voxel_size(self):
        """``(z, y, x)`` from an OME-Zarr's scale or a TIFF's OME/ImageJ metadata, or ``None``."""
        if isinstance(self.source, Path) and self.source.suffix.lower() in (".tif", ".tiff"):
            from .volume_files import stack_info
            return stack_info(self.source)[1]
        scale = self.pixel_size()
        return tuple(float(scale[a]) for a in "zyx") if scale and len(scale) == 3 else None


def open_volume(source):
    """A :class:`LazyVolume` of a path or array (an existing one passes)."""
    return source if isinstance(source, LazyVolume) else LazyVolume(source)


def open_image(source):
    """A :class:`LazyImage` of a path or array (an existing :class:`LazyImage` passes)."""
    return source if isinstance(source, LazyImage) else LazyImage(source)


# --------------------------------------------------------------------------- writing

def _v04():
    from ome_zarr.format import FormatV04
    return FormatV04()


def create_group(path):
    """A new zarr v2 group at ``path`` (its folder must not exist)."""
    zarr = _require("zarr")
    _require("ome_zarr")
    return zarr.open_group(str(path), mode="w-", zarr_format=2)


def create_level(group, name, shape, dtype, chunk):
    """An empty array ``name`` in ``group`` with square ``chunk`` x ``chunk`` chunks in y/x
    (``chunk`` a ``(z, y, x)`` tuple: those chunks on the last three axes)."""
    spatial = tuple(chunk) if isinstance(chunk, (tuple, list)) else (chunk, chunk)
    chunks = (*([1] * (len(shape) - len(spatial))), *spatial)
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape))
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                              overwrite=True)


def build_pyramid(group, chunk, client=None):
    """Add levels ``1, 2, ...`` to the array ``0`` of ``group``, each half the last
    (nearest neighbour: every other pixel, so label ids stay valid), until it fits in
    ``PYRAMID_SMALLEST`` pixels; chunk by chunk, never the whole level in memory, on
    ``client``'s workers if given (else threads here). Returns the number of levels."""
    _require("dask")
    import dask.array as da
    level = 0
    while max(group[str(level)].shape[-2:]) > PYRAMID_SMALLEST:
        source = da.from_zarr(group[str(level)])
        halved = source[..., ::2, ::2]
        target = create_level(group, str(level + 1), halved.shape, halved.dtype, chunk)
        da.store(halved.rechunk(target.chunks), target, lock=False,
                 scheduler=client or "threads")
        level += 1
    return level + 1


def volume_pyramid(group, chunk, voxel_size, client=None):
    """Add levels ``1, 2, ...`` to the array ``0`` (``...ZYX``) of ``group`` that keep the
    anisotropy: y and x halve at every level, z only while its spacing is finer than the new
    in-plane one (a coarse z is not downsampled); nearest neighbour, so label ids stay valid;
    until y and x fit in ``PYRAMID_SMALLEST``. Chunk by chunk, on ``client``'s workers if given.
    Returns each level's voxel size ``[{"z":, "y":, "x":}, ...]`` (for :func:`write_multiscales`)."""
    _require("dask")
    import dask.array as da
    spacing = dict(zip("zyx", voxel_size or (1.0, 1.0, 1.0)))
    scales, level = [dict(spacing)], 0
    while max(group[str(level)].shape[-2:]) > PYRAMID_SMALLEST:
        plane = 2 * max(spacing["y"], spacing["x"])
        step_z = 2 if spacing["z"] < plane and group[str(level)].shape[-3] > 1 else 1
        source = da.from_zarr(group[str(level)])
        halved = source[..., ::step_z, ::2, ::2]
        target = create_level(group, str(level + 1), halved.shape, halved.dtype, chunk)
        da.store(halved.rechunk(target.chunks), target, lock=False,
                 scheduler=client or "threads")
        spacing = {"z": spacing["z"] * step_z, "y": spacing["y"] * 2, "x": spacing["x"] * 2}
        scales.append(dict(spacing))
        level += 1
    return scales


def write_multiscales(group, levels, axes, name, pixel_size=None):
    """NGFF ``multiscales`` metadata for ``levels`` arrays ``0..levels-1`` of ``group``, each
    twice the last's pixel size (``pixel_size``: level 0's); ``levels`` may instead be a list of
    each level's sizes (:func:`volume_pyramid`)."""
    from ome_zarr.writer import write_multiscales_metadata
    base = pixel_size or {}
    sizes = levels if isinstance(levels, list) else [
        {a: float(base.get(a, 1.0)) * 2 ** level for a in axes} for level in range(levels)]
    datasets = []
    for level, size in enumerate(sizes):
        scale = [1.0 if a == "c" else float(size[a]) for a in axes]
        datasets.append({"path": str(level),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    types = {"c": "channel", "z": "space", "y": "space", "x": "space"}
    write_multiscales_metadata(group, datasets, fmt=_v04(), name=name,
                               axes=[{"name": a, "type": types[a]} for a in axes])


def write_labels_metadata(root, name):
    """Declare ``root/labels/<name>`` (a multiscales image) as the image's labels (NGFF
    ``image-label``, listed in ``labels``)."""
    from ome_zarr.writer import write_label_metadata
    write_label_metadata(root["labels"], name, fmt=_v04(), source={"image": "../../"})


def save_image(path, image, chunk=1024, pixel_size=None):
    """Write a ``YX``/``YXC`` image (numpy or dask array) as an OME-Zarr image (``cyx``, with
    its pyramid), atomically: to a hidden sibling first, renamed when complete."""
    image = image[..., None] if image.ndim == 2 else image
    if image.ndim != 3:
        raise ValueError(f"expected a YX or YXC image, got shape {image.shape}")
    return _save(path, image, "cyx", chunk,
                 lambda root: (build_pyramid(root, chunk), pixel_size))


def save_volume(path, volume, chunk=(64, 256, 256), voxel_size=None):
    """Write a ``ZYX``/``ZYXC`` volume (numpy or dask array) as an OME-Zarr image (``czyx``,
    the voxel size as its scale, a pyramid that keeps the anisotropy), atomically."""
    volume = volume[..., None] if volume.ndim == 3 else volume
    if volume.ndim != 4:
        raise ValueError(f"expected a ZYX or ZYXC volume, got shape {volume.shape}")
    return _save(path, volume, "czyx", chunk,
                 lambda root: (volume_pyramid(root, chunk, voxel_size), None))


def _save(path, array, axes, chunk, pyramid):
    """Write channels-last ``array`` as level 0 (``axes``, channels first) of a new OME-Zarr,
    ``pyramid(root)`` -> ``(levels, pixel_size)`` for the rest, in a hidden sibling renamed
    into place when complete."""
    import os
    _require("dask")
    import dask.array as da
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists")
    partial = path.with_name(f".{path.name}.partial")
    root = create_group(partial)
    channels_first = da.moveaxis(da.asarray(array), -1, 0)
    target = create_level(root, "0", channels_first.shape, channels_first.dtype, chunk)
    da.store(channels_first.rechunk(target.chunks), target, lock=False, scheduler="threads")
    levels, pixel_size = pyramid(root)
    write_multiscales(root, levels, axes, path.name, pixel_size)
    os.replace(partial, path)
    return path
