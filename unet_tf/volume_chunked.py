"""Volumes beyond memory: a 3-D net's labels of a ``ZYX`` OME-Zarr (or zarr array, a TIFF stack
read lazily, an array) chunk by chunk, in this process or on a Dask cluster, written as OME-Zarr.

What :mod:`unet_tf.chunked` does for images, in 3-D. Chunks start on the pooling grid of every
axis, so a chunk's prediction from the volume around it (mirrored only at the volume's faces)
is that box of the whole volume's prediction: together they equal in-memory prediction. Each
chunk is labelled in 3-D (:func:`unet_tf.volume_instances.label_volume`) with a halo of context;
objects cut by a chunk face are joined where both chunks agree on the face planes
(:mod:`unet_tf.stitching`) and numbered 1..N. The work lives in a hidden ``.NAME.partial``
folder with a record per finished chunk: a killed run started again with the same settings
skips the chunks done. The output is NGFF 0.4: the volume (``czyx``), ``labels/instances``
(``zyx``) and, on request, ``probabilities`` (``czyx``), with the voxel size as the scale of
level 0 and pyramids that keep the anisotropy (:func:`unet_tf.omezarr.volume_pyramid`).
Memory per process: one chunk with its halo and the network's context, whatever the volume.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from .chunked import (RECORDS, VOLUME_CHUNK, join_chunks, publish, relabel_chunk, resumable,
                      round_up, source_identity, value_range, write_chunk_record)
from .cluster import run_calls
from .omezarr import (create_group, create_level, open_volume, volume_pyramid,
                      write_labels_metadata, write_multiscales)


def volume_chunk_windows(shape, chunk):
    """``[(index, starts, sizes), ...]``: the ``chunk``-shaped boxes covering a ``ZYX`` shape,
    ``index`` their position in the grid."""
    grids = [range(0, n, c) for n, c in zip(shape[:3], chunk)]
    return [((a, b, c), (z, y, x), (min(chunk[0], shape[0] - z), min(chunk[1], shape[1] - y),
                                    min(chunk[2], shape[2] - x)))
            for a, z in enumerate(grids[0]) for b, y in enumerate(grids[1])
            for c, x in enumerate(grids[2])]


def aligned_volume_chunk(chunk, periods):
    """``chunk`` (``Z,Y,X``, or one size for all three) rounded down to the pooling periods."""
    chunk = (chunk,) * 3 if isinstance(chunk, int) else tuple(int(c) for c in chunk)
    if len(chunk) != 3 or any(c < p for c, p in zip(chunk, periods)):
        raise ValueError(f"a volume chunk is Z,Y,X sizes of at least the pooling periods "
                         f"{'x'.join(map(str, periods))}, got {chunk}")
    return tuple(c - c % p for c, p in zip(chunk, periods))


def default_volume_halo(config, periods):
    """Context around each chunk for labelling, per axis: 1.5 times the training objects'
    median diameter (16 finest-axis voxels if unknown) in that axis's voxels, on the pooling
    grid: an object cut by a face is seen whole from both sides, so both label it alike."""
    voxel = config.voxel_size or (1.0, 1.0, 1.0)
    diameter = config.fingerprint.get("diameter_median") or 16 * min(voxel)
    return tuple(round_up(int(np.ceil(1.5 * diameter / v)), p) for v, p in zip(voxel, periods))


def _unet(spec):
    from .unet import UNet   # here: planning the chunks loads no TensorFlow
    return UNet.cached(*spec)


def _segment_chunk(spec, volume, lohi, box, halo, partial, with_probabilities, overrides,
                   voxel_size, name):
    """Predict and label one chunk (``box = (starts, sizes)``) with ``halo`` voxels of context,
    write its core to the partial store and record its faces; the record marks it done."""
    import zarr
    from .volume_instances import label_volume
    model = _unet(spec)
    starts, sizes = box
    lower = [max(0, s - h) for s, h in zip(starts, halo)]
    upper = [min(n, s + k + h) for s, k, h, n in zip(starts, sizes, halo, volume.shape)]
    probabilities = model.predict_volume_window(volume, lohi, (lower, [u - lo for u, lo in
                                                                        zip(upper, lower)]))
    labels = label_volume(probabilities, {**model.postprocessing, **overrides},
                          voxel_size).astype(np.uint32)
    core = [(s - lo, s - lo + k) for s, lo, k in zip(starts, lower, sizes)]
    inside = tuple(slice(*c) for c in core)
    target = _slices(box)
    store = zarr.open_group(str(partial), mode="r+")
    store["provisional"][target] = labels[inside]
    voxels = volume.read(starts, [s + k for s, k in zip(starts, sizes)])
    store["0"][(slice(None), *target)] = np.moveaxis(voxels, -1, 0)
    if with_probabilities:
        store["probabilities/0"][(slice(None), *target)] = np.moveaxis(probabilities[inside],
                                                                         -1, 0)
    write_chunk_record(partial, name, labels, core)


def _slices(box):
    """``(starts, sizes)`` as slices."""
    return tuple(slice(s, s + k) for s, k in zip(*box))


def _prepare(partial, run, volume, chunk, num_classes, with_probabilities):
    """Create the partial store, or find the one there is this run's (to resume)."""
    if resumable(partial, run):
        return
    root = create_group(partial)
    depth, height, width, channels = volume.shape
    create_level(root, "0", (channels, depth, height, width), volume.dtype, chunk)
    create_level(root, "provisional", (depth, height, width), np.uint32, chunk)
    create_level(root.require_group("labels").require_group("instances"), "0",
                 (depth, height, width), np.uint32, chunk)
    if with_probabilities:
        create_level(root.require_group("probabilities"), "0",
                     (num_classes, depth, height, width), np.float32, chunk)
    (partial / "chunks").mkdir()
    (partial / "run.json").write_text(json.dumps(run, indent=2))


def _finish(partial, chunk, voxel_size, class_names, with_probabilities, client, provenance):
    """Pyramids (on ``client``'s workers, if given), NGFF metadata with the voxel size, and
    the labels' ``provenance``; the provisional labels and the records go."""
    import zarr
    root = zarr.open_group(str(partial), mode="r+")
    write_multiscales(root, volume_pyramid(root, chunk, voxel_size, client), "czyx", "volume")
    labels = root["labels/instances"]
    write_multiscales(labels, volume_pyramid(labels, chunk, voxel_size, client), "zyx",
                      "instances")
    labels.attrs["unet_tf"] = provenance   # first: this handle, written later, drops image-label
    write_labels_metadata(root, "instances")
    if with_probabilities:
        probabilities = root["probabilities"]
        write_multiscales(probabilities, volume_pyramid(probabilities, chunk, voxel_size, client),
                          "czyx", "probabilities")
        probabilities.attrs["class_names"] = class_names
    del root["provisional"]
    shutil.rmtree(partial / "chunks")
    (partial / "run.json").unlink()


def segment_volume_to_zarr(folder, volume, out, chunk=VOLUME_CHUNK, probabilities=False,
                           runtime="keras", client=None, threads=None, halo=None,
                           overwrite=False, progress=None, postprocessing=None, variant=None,
                           voxel_size=None):
    """Instance labels of a large volume from a 3-D model folder, written to an OME-Zarr chunk
    by chunk (see the module docstring).

    Args:
        folder: a 3-D model folder.
        volume: a path (OME-Zarr, zarr, TIFF stack), a ``ZYX``/``ZYXC`` array or a
            :class:`~unet_tf.omezarr.LazyVolume`.
        out: the output ``.ome.zarr`` folder.
        chunk: output voxels per chunk, ``(Z, Y, X)`` (rounded down to the pooling periods);
            also the zarr chunks.
        runtime, threads, variant: as :func:`unet_tf.chunked.segment_to_zarr`.
        client: a ``distributed.Client`` to spread the chunks over; ``None``: this process.
        halo: context for labelling, voxels per axis (default :func:`default_volume_halo`).
        overwrite: replace an existing ``out``.
        progress: ``progress(done, total)`` at the start and after each chunk.
        postprocessing: overrides of the folder's post-processing, e.g. ``{"min_size": 50}``.
        voxel_size: ``(z, y, x)`` for the labels and the metadata; default: the volume's own
            (OME-Zarr scale, TIFF metadata), else the model's training voxel size.

    Returns:
        ``{"out", "objects", "chunks", "resumed", "runtime"}``.
    """
    out, overrides = Path(out), dict(postprocessing or {})
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite / overwrite=True to replace it)")
    volume = open_volume(volume)
    spec = (str(Path(folder).resolve()), runtime, threads, variant)
    model = _unet(spec)
    if not model.is_volume:
        raise ValueError(f"{folder} is a 2-D net: chunked 3-D prediction needs a 3-D net "
                         "(unet_tf.chunked.segment_to_zarr predicts images)")
    spec = (*spec[:3], model.variant)   # the LiteRT export chosen here, for every worker
    if volume.shape[3] != model.channels:
        raise ValueError(f"volume has {volume.shape[3]} channels, the model expects "
                         f"{model.channels}")
    voxel_size = tuple(voxel_size or volume.voxel_size() or model.config.voxel_size
                       or (1.0, 1.0, 1.0))
    chunk = aligned_volume_chunk(chunk, model.period)
    halo = default_volume_halo(model.config, model.period) if halo is None else tuple(
        round_up(int(h), p) for h, p in zip((halo,) * 3 if np.isscalar(halo) else halo,
                                            model.period))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    run = {"records": RECORDS, "model": spec[0], "image": source_identity(volume),
           "shape": list(volume.shape), "chunk": list(chunk), "halo": list(halo),
           "voxel_size": list(voxel_size), "runtime": runtime, "variant": model.variant,
           "probabilities": bool(probabilities), "postprocessing": overrides}
    _prepare(partial, run, volume, chunk, model.num_classes, probabilities)
    windows = volume_chunk_windows(volume.shape, chunk)
    names = {index: "_".join(map(str, index)) for index, _, _ in windows}
    todo = [(index, box) for index, *box in windows
            if not (partial / "chunks" / f"{names[index]}.npz").exists()]
    lohi = value_range(volume, model.normalization, client)
    source = volume
    if client is not None and not isinstance(volume.source, Path):
        source = client.scatter(volume, broadcast=True)   # an array travels once
    run_calls([(_segment_chunk, (spec, source, lohi, box, halo, str(partial), probabilities,
                                 overrides, voxel_size, names[index])) for index, box in todo],
              client, progress, already=len(windows) - len(todo))
    records = {index: dict(np.load(partial / "chunks" / f"{names[index]}.npz"))
               for index, _, _ in windows}
    tables = join_chunks(records, model.postprocessing)
    run_calls([(relabel_chunk, (str(partial), _slices(box), tables[index]))
               for index, *box in windows], client)
    provenance = {"model": spec[0], "runtime": model.description, "variant": model.variant,
                  "variant_reason": model.variant_reason, "voxel_size": list(voxel_size)}
    _finish(partial, chunk, voxel_size, list(model.config.class_names), probabilities, client,
            provenance)
    objects = publish(partial, out, tables)
    return {"out": str(out), "objects": objects, "chunks": len(windows),
            "resumed": len(windows) - len(todo), "runtime": model.description}
