"""Prediction beyond one machine's memory: chunk by chunk, in this process or on a Dask cluster.

The overlap-tile prediction is exact (windows on the pooling grid, see :mod:`unet_tf.tiling`),
so an image can be cut into chunks whose corners lie on that grid and each chunk predicted on
its own from the input around it (mirrored only at the image border): put back together, the
chunks equal :func:`unet_tf.predict_tiled` of the whole image, with no seams.

- :func:`predict_lazy` returns the probabilities (or logits, class ids) as a lazy dask array.
- :func:`segment_to_zarr` writes instance labels (and probabilities on request) to an OME-Zarr
  chunk by chunk. Each chunk is labelled with a ``halo`` of context around it; objects cut by a
  chunk border are joined across it where both chunks agree on the pixels of the border lines
  (each object is most of the other). It keeps its work in a hidden ``.NAME.partial`` folder:
  a killed run started again with the same settings skips the chunks already done, and the
  output appears under its name only when complete.
- :func:`predict_files` spreads many ordinary images over the workers.

Workers load the model once per process (:meth:`unet_tf.UNet.cached`) from the model folder,
with the Keras model or its LiteRT export (``runtime="litert"``), and predict through it.
Objects cut by chunk borders are joined in :mod:`unet_tf.stitching`; the calls are spread over
a cluster by :mod:`unet_tf.cluster`.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import overlap_tile
from .cluster import run_calls
from .omezarr import (build_pyramid, create_group, create_level, open_image,
                      write_labels_metadata, write_multiscales)
from .stitching import edge_lines, stitch

CHUNK = 1024                    # output pixels per chunk side (rounded to the pooling period)
# A volume's output voxels per chunk, Z, Y, X (rounded down to the pooling periods). The halo
# and the net's context come on top (a 24-voxel halo makes a 96x256x256 chunk a 144x304x304
# box): deep chunks waste less on them, but a worker's peak follows the box: at 1 Gvoxel on 2
# Dask workers (2 classes) 2123 MiB at 128x256x256 (a 176x304x304 box), 1872 MiB at this one
# with the lean 3-D labelling (and faster).
VOLUME_CHUNK = (96, 256, 256)
RECORDS = 2   # the chunk records' layout (2: stitching's per-axis names): a partial run of
              # another layout is not resumed


def round_up(value, multiple):
    return -(-value // multiple) * multiple


def value_range(image, normalization, client=None):
    """``(lo, hi)`` of a model folder's normalisation for a whole :class:`LazyImage` (or
    :class:`LazyVolume`), read in bands of rows (planes) on ``client``'s workers, if given,
    for an image on disk: exact percentiles from a histogram for 8/16-bit images; float images
    larger than 16 Mpx use every k-th row (plane)."""
    if normalization is None or normalization.get("method") != "percentile":
        return overlap_tile.normalization_range(None, normalization)
    qs = (normalization["low"], normalization["high"])
    height, per_row = image.shape[0], int(np.prod(image.shape[1:]))
    band = max(1, 2 ** 24 // per_row)
    bands = [(top, min(top + band, height)) for top in range(0, height, band)]
    client = client if isinstance(image.source, Path) else None   # in memory: no reading
    if image.dtype in (np.uint8, np.uint16):
        bins = 2 ** (8 * image.dtype.itemsize)
        counts = sum(run_calls([(_band_histogram, (image, top, bottom, bins))
                           for top, bottom in bands], client))
        lo, hi = overlap_tile.histogram_percentiles(counts, qs)
    else:
        step = max(1, height * per_row // 2 ** 24)
        rows = np.concatenate(run_calls([(_band_rows, (image, top, bottom, step))
                                    for top, bottom in bands], client))
        lo, hi = np.percentile(rows, qs)
    return float(lo), float(hi)


def _band_histogram(image, top, bottom, bins):
    return np.bincount(image.read_band(top, bottom).reshape(-1), minlength=bins)


def _band_rows(image, top, bottom, step):
    return image.read_band(top, bottom)[::step].reshape(-1)


def chunk_windows(shape, chunk):
    """``[(row, column, (top, left, height, width)), ...]`` of ``chunk``-sized windows."""
    height, width = shape[:2]
    return [(i, j, (top, left, min(chunk, height - top), min(chunk, width - left)))
            for i, top in enumerate(range(0, height, chunk))
            for j, left in enumerate(range(0, width, chunk))]


def _aligned_chunk(chunk, period):
    if chunk < period:
        raise ValueError(f"chunk must be at least the pooling period {period}, got {chunk}")
    return chunk - chunk % period


def _fitted_chunk(chunk, halo, model):
    """For a fixed tile (LiteRT): the chunk near ``chunk`` whose window with its halo is a
    whole number of tile strides, so no tile is spent on pixels past the window."""
    from .sizes import output_size
    a = model.config.architecture
    out = output_size(model.fixed_tile, a.depth, a.upsampling)
    stride = out - out % model.period
    count = max(1, round((chunk + 2 * halo) / stride))
    while count * stride - 2 * halo < model.period:
        count += 1
    return count * stride - 2 * halo


# --------------------------------------------------------------------------- lazy arrays

def _unet(spec):
    """This process's :class:`unet_tf.UNet` of ``spec = (folder, runtime, threads, variant)``;
    imported here: planning chunks loads no TensorFlow."""
    from .unet import UNet
    return UNet.cached(*spec)


def _chosen(folder, runtime, threads, variant):
    """``(spec, model)`` with the LiteRT variant chosen here, once: workers on other CPUs run
    the same export, so chunks agree."""
    model = _unet((folder, runtime, threads, variant))
    return (folder, runtime, threads, model.variant), model


def _predict_block(spec, image, lohi, window, output):
    from .unet import as_output
    return as_output(_unet(spec).predict_window(image, lohi, window), output)


def predict_lazy(folder, image, output="probabilities", chunk=CHUNK, runtime="keras",
                 threads=None, variant=None):
    """The folder's prediction of a whole image as a lazy dask array, chunk by chunk.

    Args:
        folder: a model folder (workers load the model from it).
        image: a path (OME-Zarr, zarr, TIFF), a ``YX``/``YXC`` array or a :class:`LazyImage`.
        output: ``"probabilities"`` ``(H, W, K)`` float32, ``"logits"`` (log-probabilities)
            or ``"labels"`` (class ids, ``(H, W)`` int32).
        chunk: output chunk side, rounded down to the pooling period.
        runtime: ``"keras"`` or ``"litert"``; threads: per process; variant: the LiteRT
            export (default: the fastest here, :func:`unet_tf.variants.choose_variant`).

    Returns:
        A ``dask.array.Array``; ``.compute()`` (on any scheduler, e.g. a ``distributed.Client``)
        equals :func:`unet_tf.predict_tiled` up to float rounding. The image's normalisation
        range is measured now (one pass over the image for the ``percentile`` method).
    """
    import dask
    import dask.array as da
    if output not in ("probabilities", "logits", "labels"):
        raise ValueError(f"output must be probabilities, logits or labels, got {output!r}")
    image = open_image(image)
    spec, local = _chosen(str(folder), runtime, threads, variant)
    if image.shape[2] != local.channels:
        raise ValueError(f"image has {image.shape[2]} channels, the model expects "
                         f"{local.channels}")
    chunk = _aligned_chunk(chunk, local.period)
    lohi = value_range(image, local.normalization)
    tail = () if output == "labels" else (local.num_classes,)
    dtype = np.int32 if output == "labels" else np.float32
    rows, source = {}, dask.delayed(image, pure=True)   # one key, not a copy per chunk
    for i, _, window in chunk_windows(image.shape, chunk):
        block = dask.delayed(_predict_block, pure=True)(spec, source, lohi, window, output)
        rows.setdefault(i, []).append(da.from_delayed(block, (*window[2:], *tail), dtype))
    return da.concatenate([da.concatenate(row, axis=1) for _, row in sorted(rows.items())],
                          axis=0)


# --------------------------------------------------------------------------- OME-Zarr out

def _segment_chunk(spec, image, lohi, window, halo, partial, with_probabilities, overrides,
                   index):
    """Predict and label one chunk (with ``halo`` pixels of context), write its core to the
    partial store, and record its edges; the record marks the chunk done."""
    import zarr
    from .instances import label_image
    model = _unet(spec)
    top, left, height, width = window
    rows, cols = image.shape[:2]
    t0, l0 = max(0, top - halo), max(0, left - halo)
    t1, l1 = min(rows, top + height + halo), min(cols, left + width + halo)
    probabilities = model.predict_window(image, lohi, (t0, l0, t1 - t0, l1 - l0))
    labels = label_image(probabilities, {**model.postprocessing, **overrides}).astype(np.uint32)
    core = ((top - t0, top - t0 + height), (left - l0, left - l0 + width))
    inside = (slice(*core[0]), slice(*core[1]))
    store = zarr.open_group(str(partial), mode="r+")
    box = (slice(top, top + height), slice(left, left + width))
    store["provisional"][box] = labels[inside]
    pixels = image.read(top, top + height, left, left + width)
    store["0"][(slice(None), *box)] = np.moveaxis(pixels, -1, 0)
    if with_probabilities:
        store["probabilities/0"][(slice(None), *box)] = np.moveaxis(probabilities[inside], -1, 0)
    write_chunk_record(partial, index, labels, core)


def write_chunk_record(partial, name, labels, core):
    """``chunks/NAME.npz`` of the partial store: the labels in the chunk's ``core`` (``(start,
    stop)`` per axis of ``labels``), the largest label and the core's edge lines (planes); written
    last and renamed into place, it marks the chunk done."""
    record = Path(partial) / "chunks" / f"{name}.npz"
    tmp = record.with_name(f".{record.name}")
    inside = tuple(slice(*c) for c in core)
    with open(tmp, "wb") as handle:
        np.savez(handle, present=np.unique(labels[inside]), top=labels.max(initial=0),
                 **edge_lines(labels, core))
    os.replace(tmp, record)


def join_chunks(records, postprocessing):
    """Each chunk's table from its labels to the global ids (:func:`unet_tf.stitching.stitch`);
    class ids (a multi-class net) need no joining."""
    if postprocessing.get("target") == "classes":
        return {key: np.arange(int(r["top"]) + 1, dtype=np.uint32) for key, r in records.items()}
    return stitch(records)


def relabel_chunk(partial, box, table):
    """The chunk at ``box`` (slices) of the final labels: its provisional ids through ``table``."""
    import zarr
    store = zarr.open_group(str(partial), mode="r+")
    store["labels/instances/0"][box] = table[store["provisional"][box]]


def publish(partial, out, tables):
    """Move the finished partial store to ``out`` (replacing what is there); returns the number
    of objects the ``tables`` give."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return max((int(t.max(initial=0)) for t in tables.values()), default=0)


def default_halo(config, period):
    """Context around each chunk for labelling: twice the largest training objects (95th
    percentile of the plan's diameters; 32 px if unknown), on the pooling grid."""
    diameters = config.fingerprint.get("diameter_p5_p50_p95")
    largest = diameters[2] if diameters else 32.0
    return round_up(int(np.ceil(2 * largest)), period)


def source_identity(image):
    """What a resumed run must find again: the file's path, or an array's SHA-1."""
    if isinstance(image.source, Path):
        return str(image.source.resolve())
    import hashlib
    return "sha1:" + hashlib.sha1(np.ascontiguousarray(image.source).data).hexdigest()


def resumable(partial, run):
    """Whether ``partial`` holds an unfinished run of the same ``run`` settings (resume it);
    ``False`` if there is none; ``FileExistsError`` if it holds another one."""
    record = partial / "run.json"
    if not partial.exists():
        return False
    if not record.is_file() or json.loads(record.read_text()) != run:
        raise FileExistsError(
            f"{partial} holds an unfinished run with other settings: remove it, or run "
            "again with the same model, image, chunk and options to resume it")
    if not (partial / "provisional").is_dir():
        raise FileExistsError(f"{partial} was stopped while it was being finished: "
                              "remove it and run again")
    return True


def _prepare(partial, run, image, chunk, model, with_probabilities):
    """Create the partial store, or check that the one there is this run's (to resume)."""
    if resumable(partial, run):
        return
    record = partial / "run.json"
    root = create_group(partial)
    height, width, channels = image.shape
    create_level(root, "0", (channels, height, width), image.dtype, chunk)
    create_level(root, "provisional", (height, width), np.uint32, chunk)
    create_level(root.require_group("labels").require_group("instances"), "0",
                 (height, width), np.uint32, chunk)
    if with_probabilities:
        create_level(root.require_group("probabilities"), "0",
                     (model.num_classes, height, width), np.float32, chunk)
    (partial / "chunks").mkdir()
    record.write_text(json.dumps(run, indent=2))


def _finish(partial, image, chunk, class_names, with_probabilities, client, provenance):
    """Pyramids (on ``client``'s workers, if given), NGFF metadata and the labels'
    ``provenance`` (which model and runtime made them); the provisional labels go."""
    import zarr
    root = zarr.open_group(str(partial), mode="r+")
    pixel_size = image.pixel_size()
    write_multiscales(root, build_pyramid(root, chunk, client), "cyx", "image", pixel_size)
    labels = root["labels/instances"]
    write_multiscales(labels, build_pyramid(labels, chunk, client), "yx", "instances",
                      pixel_size)
    labels.attrs["unet_tf"] = provenance   # first: this handle, written later, drops image-label
    write_labels_metadata(root, "instances")
    if with_probabilities:
        probabilities = root["probabilities"]
        write_multiscales(probabilities, build_pyramid(probabilities, chunk, client), "cyx",
                          "probabilities", pixel_size)
        probabilities.attrs["class_names"] = class_names
    del root["provisional"]
    shutil.rmtree(partial / "chunks")
    (partial / "run.json").unlink()


def segment_to_zarr(folder, image, out, chunk=CHUNK, probabilities=False, runtime="keras",
                    client=None, threads=None, halo=None, overwrite=False, progress=None,
                    postprocessing=None, variant=None):
    """Instance labels of a large image, written to an OME-Zarr chunk by chunk.

    Args:
        folder: a model folder (foreground or boundary target: instances; a multi-class
            model writes class ids, no joining needed).
        image: a path (OME-Zarr, zarr, TIFF), an array or a :class:`LazyImage`.
        out: the output ``.ome.zarr`` folder: the image (``0``, ``1``, ... pyramid, ``cyx``),
            its labels under ``labels/instances`` and, with ``probabilities``, the class
            probabilities as their own multiscales image under ``probabilities``.
        chunk: output chunk side (rounded down to the pooling period); also the zarr chunks.
        runtime: ``"keras"`` or ``"litert"``; threads: per process; variant: the LiteRT
            export (default: the fastest here; the choice and its reason are kept in the
            labels' attributes, ``labels/instances`` ``unet_tf``).
        client: a ``distributed.Client`` to spread the chunks over; ``None``: this process.
        halo: context for labelling, pixels (default :func:`default_halo`).
        overwrite: replace an existing ``out``.
        progress: called as ``progress(done, total)`` at the start and after each chunk.
        postprocessing: overrides of the folder's post-processing, e.g. ``{"min_size": 50}``.

    Returns:
        ``{"out", "objects", "chunks", "resumed", "runtime"}``.
    """
    out, overrides = Path(out), dict(postprocessing or {})
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite / overwrite=True to replace it)")
    image = open_image(image)
    spec, model = _chosen(str(Path(folder).resolve()), runtime, threads, variant)
    if image.shape[2] != model.channels:
        raise ValueError(f"image has {image.shape[2]} channels, the model expects "
                         f"{model.channels}")
    halo = default_halo(model.config, model.period) if halo is None else \
        round_up(halo, model.period)
    chunk = _aligned_chunk(chunk, model.period)
    if model.fixed_tile:
        chunk = _fitted_chunk(chunk, halo, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    run = {"records": RECORDS, "model": spec[0], "image": source_identity(image),
           "shape": list(image.shape),
           "chunk": chunk, "halo": halo,
           "runtime": runtime, "variant": model.variant, "variant_reason": model.variant_reason,
           "probabilities": bool(probabilities), "postprocessing": overrides}
    _prepare(partial, run, image, chunk, model, probabilities)
    windows = chunk_windows(image.shape, chunk)
    todo = [(i, j, w) for i, j, w in windows if not (partial / "chunks" / f"{i}_{j}.npz").exists()]
    lohi = value_range(image, model.normalization, client)
    source = image
    if client is not None and not isinstance(image.source, Path):
        source = client.scatter(image, broadcast=True)  # an array travels once, not per chunk
    run_calls([(_segment_chunk, (spec, source, lohi, window, halo, str(partial), probabilities,
                            overrides, f"{i}_{j}")) for i, j, window in todo],
         client, progress, already=len(windows) - len(todo))
    records = {(i, j): dict(np.load(partial / "chunks" / f"{i}_{j}.npz"))
               for i, j, _ in windows}
    tables = join_chunks(records, model.postprocessing)
    run_calls([(relabel_chunk, (str(partial), (slice(top, top + h), slice(left, left + w)),
                                tables[(i, j)])) for i, j, (top, left, h, w) in windows], client)
    provenance = {"model": spec[0], "runtime": model.description, "variant": model.variant,
                  "variant_reason": model.variant_reason}
    _finish(partial, image, chunk, list(model.config.class_names), probabilities, client,
            provenance)
    objects = publish(partial, out, tables)
    return {"out": str(out), "objects": objects, "chunks": len(windows),
            "resumed": len(windows) - len(todo), "runtime": model.description}


# --------------------------------------------------------------------------- many images

def _predict_file(spec, source, labels_path, with_probabilities, overwrite, overrides):
    """Predict and write one input file (all frames of a stack); returns its object count."""
    from .io import read_frames
    from .instances import label_image
    from .postprocess import write_prediction
    model = _unet(spec)
    frames = read_frames(source)
    results = []
    for frame in frames:
        frame = overlap_tile.as_yxc_with(frame, model.channels)
        lohi = overlap_tile.normalization_range(frame, model.normalization)
        results.append(model.predict_window(open_image(frame), lohi, (0, 0, *frame.shape[:2])))
    labels = [label_image(r, {**model.postprocessing, **overrides}) for r in results]
    write_prediction(labels_path, frames, labels, results if with_probabilities else None,
                     overwrite)
    return int(labels[0].max())


def predict_files(folder, planned, probabilities=False, runtime="keras", client=None,
                  threads=None, overwrite=False, postprocessing=None, progress=None,
                  variant=None):
    """Predict many image files, one task per file, here or over a Dask cluster's workers.

    Args:
        folder: a model folder.
        planned: ``{labels path: input path}`` (see ``unet-tf predict``).
        postprocessing: overrides of the folder's post-processing, e.g. ``{"min_size": 50}``.
        progress: called as ``progress(done, total)`` at the start and after each file.
        variant: the LiteRT export (default: the fastest here, chosen once for all workers).

    Returns:
        ``{"objects": [count per file, in the order of planned], "runtime": description,
        "variant", "variant_reason"}`` (the LiteRT choice; ``None`` for Keras).
    """
    # a folder without config or export fails here
    spec, model = _chosen(str(Path(folder).resolve()), runtime, threads, variant)
    description = model.description
    calls = [(_counted, (str(labels), _predict_file, spec, str(source), str(labels),
                         probabilities, overwrite, postprocessing or {}))
             for labels, source in planned.items()]
    objects = dict(run_calls(calls, client, progress))
    return {"objects": [objects[str(labels)] for labels in planned], "runtime": description,
            "variant": model.variant, "variant_reason": model.variant_reason}


def _counted(key, function, *args):
    return key, function(*args)


