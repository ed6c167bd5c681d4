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

Workers load the model once per process (a cached :class:`Runner`) from the model folder, with
the Keras model or its LiteRT export (``runtime="litert"``).
"""

import contextlib
import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import overlap_tile
from .errors import MissingExtra
from .omezarr import (build_pyramid, create_group, create_level, open_image,
                      write_labels_metadata, write_multiscales)

CHUNK = 1024                    # output pixels per chunk side (rounded to the pooling period)
CHUNK_MEMORY = 512 * 2 ** 20    # activations of one batch of tiles, per process
BATCH = 1        # tiles per forward pass: one large tile each (see Runner.tile_size)
RUNTIMES = ("keras", "litert")
LITERT_KINDS = ("int8", "fp16", "float32")   # preferred order of a folder's TFLite exports


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _limit_tensorflow_threads(threads):
    """Give TensorFlow ``threads`` cores; possible only before its runtime starts (any device
    query starts it), so a worker calls this first."""
    from .backend import tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running in this process: keep its pool
        pass


class Runner:
    """A model folder ready to predict windows: Keras or LiteRT, tile chosen per window.

    Args:
        folder: the model folder.
        runtime: ``"keras"`` or ``"litert"`` (the folder's ``export/model_int8.tflite``, else
            fp16, else float32: make one with ``unet-tf export M --format tflite-int8``).
        threads: CPU threads for this process (default: TensorFlow's / all cores).
    """

    def __init__(self, folder, runtime="keras", threads=None):
        from .model_folder import read_config
        from .sizes import size_rule
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.folder, self.runtime = Path(folder), runtime
        self.config = read_config(folder)
        a = self.architecture = self.config.architecture
        self.period = size_rule(a.depth, a.upsampling)[1]
        self.normalization = self.config.normalization
        self.settings = self.config.postprocessing_settings
        self.num_classes, self.channels = a.num_classes, a.channels
        self.fixed_tile, self.description = None, "Keras"
        self.threads, self._forward = threads, None
        if runtime == "litert":
            self._litert_path = self._find_litert()
        elif threads:
            _limit_tensorflow_threads(threads)

    def predict_tiles(self, tiles):
        """Probabilities ``(N, O, O, K)`` of normalised tiles ``(N, T, T, C)``."""
        if self._forward is None:   # loaded on first use: a process that only plans never does
            self._forward = self._load_keras() if self.runtime == "keras" else self._load_litert()
        return self._forward(tiles)

    def _load_keras(self):
        from .model_folder import load_model_folder
        from .tiling import forward
        self.model, _ = load_model_folder(self.folder)  # forward() holds it weakly
        probabilities = forward(self.model, "probabilities")
        return lambda tiles: probabilities(tiles).numpy()

    def _find_litert(self):
        """The folder's TFLite export (int8 first); sets its tile and the description."""
        export = self.folder / "export"
        found = [export / f"model_{kind}.tflite" for kind in LITERT_KINDS
                 if (export / f"model_{kind}.tflite").is_file()]
        if not found:
            raise FileNotFoundError(
                f"--runtime litert needs a TFLite export in {export}: run `unet-tf export "
                f"{self.folder} --format tflite-int8` (or tflite) first")
        meta = json.loads(found[0].with_suffix(".json").read_text())
        self.fixed_tile = meta["tile_size"]
        check = meta.get("check", {})
        agreement = (f", {100 * check['label_agreement']:.2f} % of pixels as Keras on "
                     f"{check['tiles']} check tiles" if "label_agreement" in check else "")
        self.description = f"LiteRT {found[0].name} (tile {self.fixed_tile}{agreement})"
        return found[0]

    def _load_litert(self):
        from ai_edge_litert.interpreter import Interpreter
        interpreter = Interpreter(model_path=str(self._litert_path),
                                  num_threads=self.threads or os.cpu_count())
        interpreter.allocate_tensors()
        return lambda tiles: overlap_tile.softmax(overlap_tile.invoke_tiles(interpreter, tiles))

    def tile_size(self, height, width):
        """The tile for a ``height`` x ``width`` window: the export's; for Keras, tiles of one
        batch each, as few as fit :data:`CHUNK_MEMORY`, just large enough to cover the window
        evenly (a chunk of 1152 px gets 2 x 2 tiles of 576 px output, not 3 x 3 of 420)."""
        if self.fixed_tile:
            return self.fixed_tile
        from .sizes import input_size_for_output, output_size
        from .tiling import inference_tile_size
        a = self.architecture
        largest = inference_tile_size((height, width), a.depth, a.upsampling,
                                      a.filters, a.channels, a.num_classes, 1,
                                      CHUNK_MEMORY)
        most = output_size(largest, a.depth, a.upsampling)
        stride = most - most % self.period          # >= one period (inference_tile_size)
        side = max(height, width)
        count = -(-side // stride)                  # tiles per side
        per_tile = _round_up(-(-side // count), self.period)
        return min(largest, input_size_for_output(per_tile, a.depth, a.upsampling))

    def predict(self, image, value_range, window):
        """Probabilities ``(h, w, K)`` of ``window = (top, left, h, w)`` of a
        :class:`LazyImage`; ``(top, left)`` on the pooling grid, so the result is exact."""
        from .sizes import output_size
        top, left, height, width = window
        tile = self.tile_size(height, width)
        out = output_size(tile, self.architecture.depth, self.architecture.upsampling)
        margin = (tile - out) // 2
        _, corners = overlap_tile.window_grid(height, width, out, self.period)
        region = image.read_mirrored(top - margin, left - margin,
                                     max(c[0] for c in corners) + tile,
                                     max(c[1] for c in corners) + tile)
        return overlap_tile.predict_window(region, self.predict_tiles, tile, out, self.period,
                                           value_range, (margin, margin, height, width), BATCH)


@functools.lru_cache(maxsize=4)
def runner(folder, runtime="keras", threads=None):
    """The :class:`Runner` of this process (workers load each model once)."""
    return Runner(folder, runtime, threads)


def value_range(image, normalization, client=None):
    """``(lo, hi)`` of a model folder's normalisation for a whole :class:`LazyImage`, read in
    bands (on ``client``'s workers, if given, for an image on disk): exact percentiles from a
    histogram for 8/16-bit images; float images larger than 16 Mpx use every k-th row."""
    if normalization is None or normalization.get("method") != "percentile":
        return overlap_tile.normalization_range(None, normalization)
    qs = (normalization["low"], normalization["high"])
    height, width, channels = image.shape
    band = max(1, 2 ** 24 // (width * channels))
    bands = [(top, min(top + band, height)) for top in range(0, height, band)]
    client = client if isinstance(image.source, Path) else None   # in memory: no reading
    if image.dtype in (np.uint8, np.uint16):
        bins = 2 ** (8 * image.dtype.itemsize)
        counts = sum(_run([(_band_histogram, (image, top, bottom, bins))
                           for top, bottom in bands], client))
        lo, hi = overlap_tile.histogram_percentiles(counts, qs)
    else:
        step = max(1, height * width * channels // 2 ** 24)
        rows = np.concatenate(_run([(_band_rows, (image, top, bottom, step))
                                    for top, bottom in bands], client))
        lo, hi = np.percentile(rows, qs)
    return float(lo), float(hi)


def _band_histogram(image, top, bottom, bins):
    return np.bincount(image.read(top, bottom, 0, image.shape[1]).reshape(-1), minlength=bins)


def _band_rows(image, top, bottom, step):
    return image.read(top, bottom, 0, image.shape[1])[::step]


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
    a = model.architecture
    out = output_size(model.fixed_tile, a.depth, a.upsampling)
    stride = out - out % model.period
    count = max(1, round((chunk + 2 * halo) / stride))
    while count * stride - 2 * halo < model.period:
        count += 1
    return count * stride - 2 * halo


def _convert(probabilities, output):
    if output == "labels":
        return probabilities.argmax(-1).astype(np.int32)
    if output == "logits":
        return np.log(np.maximum(probabilities, 1e-30))
    return probabilities


# --------------------------------------------------------------------------- lazy arrays

def _predict_block(spec, image, lohi, window, output):
    return _convert(runner(*spec).predict(image, lohi, window), output)


def predict_lazy(folder, image, output="probabilities", chunk=CHUNK, runtime="keras",
                 threads=None):
    """The folder's prediction of a whole image as a lazy dask array, chunk by chunk.

    Args:
        folder: a model folder (workers load the model from it).
        image: a path (OME-Zarr, zarr, TIFF), a ``YX``/``YXC`` array or a :class:`LazyImage`.
        output: ``"probabilities"`` ``(H, W, K)`` float32, ``"logits"`` (log-probabilities)
            or ``"labels"`` (class ids, ``(H, W)`` int32).
        chunk: output chunk side, rounded down to the pooling period.
        runtime: ``"keras"`` or ``"litert"``; threads: per process.

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
    spec = (str(folder), runtime, threads)
    local = runner(*spec)
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

def _run(calls, client, progress=None, already=0):
    """Call ``function(*args)`` for each of ``calls``: here, one after another, or spread over
    a ``distributed.Client``'s workers; ``progress(done, total)`` first and after each,
    counting ``already`` calls done before this run; the first error is raised. Returns the results,
    in the order they finished."""
    total, results = already + len(calls), []
    if progress:
        progress(already, total)   # the clock starts now, not at the first result

    def finished(result):
        results.append(result)
        if progress:
            progress(already + len(results), total)

    if client is None:
        for function, args in calls:
            finished(function(*args))
        return results
    from distributed import as_completed
    futures = [client.submit(function, *args, pure=False) for function, args in calls]
    try:
        for future in as_completed(futures):
            finished(future.result())
    finally:
        client.cancel(futures)
    return results


def edge_lines(labels, core):
    """The lines at each side of a chunk's core: its own edge line (``in``) and the line just
    outside it as labelled with this chunk's context (``out``, where the halo reaches)."""
    (t, b), (l, r) = core
    edges = {"top_in": labels[t, l:r], "bottom_in": labels[b - 1, l:r],
             "left_in": labels[t:b, l], "right_in": labels[t:b, r - 1]}
    if t > 0:
        edges["top_out"] = labels[t - 1, l:r]
    if b < labels.shape[0]:
        edges["bottom_out"] = labels[b, l:r]
    if l > 0:
        edges["left_out"] = labels[t:b, l - 1]
    if r < labels.shape[1]:
        edges["right_out"] = labels[t:b, r]
    return edges


def _segment_chunk(spec, image, lohi, window, halo, partial, with_probabilities, overrides,
                   index):
    """Predict and label one chunk (with ``halo`` pixels of context), write its core to the
    partial store, and record its edges; the record marks the chunk done."""
    import zarr
    from .instances import label_image
    model = runner(*spec)
    top, left, height, width = window
    rows, cols = image.shape[:2]
    t0, l0 = max(0, top - halo), max(0, left - halo)
    t1, l1 = min(rows, top + height + halo), min(cols, left + width + halo)
    probabilities = model.predict(image, lohi, (t0, l0, t1 - t0, l1 - l0))
    labels = label_image(probabilities, {**model.settings, **overrides}).astype(np.uint32)
    core = ((top - t0, top - t0 + height), (left - l0, left - l0 + width))
    inside = (slice(*core[0]), slice(*core[1]))
    store = zarr.open_group(str(partial), mode="r+")
    box = (slice(top, top + height), slice(left, left + width))
    store["provisional"][box] = labels[inside]
    pixels = image.read(top, top + height, left, left + width)
    store["0"][(slice(None), *box)] = np.moveaxis(pixels, -1, 0)
    if with_probabilities:
        store["probabilities/0"][(slice(None), *box)] = np.moveaxis(probabilities[inside], -1, 0)
    record = Path(partial) / "chunks" / f"{index}.npz"
    tmp = record.with_name(f".{record.name}")
    with open(tmp, "wb") as handle:
        np.savez(handle, present=np.unique(labels[inside]), top=labels.max(initial=0),
                 **edge_lines(labels, core))
    os.replace(tmp, record)


def _agreeing_pairs(mine, theirs):
    """Pairs ``(a, b)`` of labels (both > 0) that are each most of the other on one line."""
    both = (mine > 0) & (theirs > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(np.stack([mine[both], theirs[both]]), axis=1, return_counts=True)
    size_a = dict(zip(*np.unique(mine[mine > 0], return_counts=True)))
    size_b = dict(zip(*np.unique(theirs[theirs > 0], return_counts=True)))
    return [(int(a), int(b)) for (a, b), n in zip(pairs.T, counts)
            if 2 * n > size_a[a] and 2 * n > size_b[b]]


def stitch(records, grid_shape):
    """Look-up tables ``{chunk index: array}`` from each chunk's labels to global ids
    ``1..N``, joining objects cut by chunk borders. ``records`` maps ``(i, j)`` to a chunk's
    edge record (see :func:`_segment_chunk`)."""
    offsets, total = {}, 0
    for key in sorted(records):
        offsets[key] = total
        total += int(records[key]["top"]) + 1
    parent = np.arange(total)

    def find(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    rows, cols = grid_shape
    for (i, j), record in records.items():
        for below, mine_out, their_in, mine_in, their_out in (
                ((i + 1, j), "bottom_out", "top_in", "bottom_in", "top_out"),
                ((i, j + 1), "right_out", "left_in", "right_in", "left_out")):
            if below not in records:
                continue
            other = records[below]
            # the neighbour's first line, seen by both; then this chunk's last line, seen by both
            for mine, theirs in ((record[mine_out], other[their_in]),
                                 (record[mine_in], other[their_out])):
                for a, b in _agreeing_pairs(mine, theirs):
                    parent[find(offsets[(i, j)] + a)] = find(offsets[below] + b)
    final, tables = {}, {}
    for key in sorted(records):
        table = np.zeros(int(records[key]["top"]) + 1, np.uint32)
        for local in records[key]["present"]:
            if local:
                root = find(offsets[key] + int(local))
                table[local] = final.setdefault(root, len(final) + 1)
        tables[key] = table
    return tables


def _relabel_chunk(partial, window, table):
    import zarr
    store = zarr.open_group(str(partial), mode="r+")
    top, left, height, width = window
    box = (slice(top, top + height), slice(left, left + width))
    store["labels/instances/0"][box] = table[store["provisional"][box]]


def default_halo(config, period):
    """Context around each chunk for labelling: twice the largest training objects (95th
    percentile of the plan's diameters; 32 px if unknown), on the pooling grid."""
    diameters = config.fingerprint.get("diameter_p5_p50_p95")
    largest = diameters[2] if diameters else 32.0
    return _round_up(int(np.ceil(2 * largest)), period)


def _identity(image):
    """What a resumed run must find again: the file's path, or an array's SHA-1."""
    if isinstance(image.source, Path):
        return str(image.source.resolve())
    import hashlib
    return "sha1:" + hashlib.sha1(np.ascontiguousarray(image.source).data).hexdigest()


def _prepare(partial, run, image, chunk, model, with_probabilities):
    """Create the partial store, or check that the one there is this run's (to resume)."""
    record = partial / "run.json"
    if partial.exists():
        if not record.is_file() or json.loads(record.read_text()) != run:
            raise FileExistsError(
                f"{partial} holds an unfinished run with other settings: remove it, or run "
                "again with the same model, image, chunk and options to resume it")
        if not (partial / "provisional").is_dir():
            raise FileExistsError(f"{partial} was stopped while it was being finished: "
                                  "remove it and run again")
        return
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


def _finish(partial, image, chunk, class_names, with_probabilities, client):
    """Pyramids (on ``client``'s workers, if given) and NGFF metadata; the provisional labels
    go."""
    import zarr
    root = zarr.open_group(str(partial), mode="r+")
    pixel_size = image.pixel_size()
    write_multiscales(root, build_pyramid(root, chunk, client), "cyx", "image", pixel_size)
    labels = root["labels/instances"]
    write_multiscales(labels, build_pyramid(labels, chunk, client), "yx", "instances",
                      pixel_size)
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
                    postprocessing=None):
    """Instance labels of a large image, written to an OME-Zarr chunk by chunk.

    Args:
        folder: a model folder (foreground or boundary target: instances; a multi-class
            model writes class ids, no joining needed).
        image: a path (OME-Zarr, zarr, TIFF), an array or a :class:`LazyImage`.
        out: the output ``.ome.zarr`` folder: the image (``0``, ``1``, ... pyramid, ``cyx``),
            its labels under ``labels/instances`` and, with ``probabilities``, the class
            probabilities as their own multiscales image under ``probabilities``.
        chunk: output chunk side (rounded down to the pooling period); also the zarr chunks.
        runtime: ``"keras"`` or ``"litert"``; threads: per process.
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
    spec = (str(Path(folder).resolve()), runtime, threads)
    model = runner(*spec)
    if image.shape[2] != model.channels:
        raise ValueError(f"image has {image.shape[2]} channels, the model expects "
                         f"{model.channels}")
    halo = default_halo(model.config, model.period) if halo is None else \
        _round_up(halo, model.period)
    chunk = _aligned_chunk(chunk, model.period)
    if model.fixed_tile:
        chunk = _fitted_chunk(chunk, halo, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    run = {"model": spec[0], "image": _identity(image), "shape": list(image.shape),
           "chunk": chunk, "halo": halo,
           "runtime": runtime, "probabilities": bool(probabilities), "postprocessing": overrides}
    _prepare(partial, run, image, chunk, model, probabilities)
    windows = chunk_windows(image.shape, chunk)
    todo = [(i, j, w) for i, j, w in windows if not (partial / "chunks" / f"{i}_{j}.npz").exists()]
    lohi = value_range(image, model.normalization, client)
    source = image
    if client is not None and not isinstance(image.source, Path):
        source = client.scatter(image, broadcast=True)  # an array travels once, not per chunk
    _run([(_segment_chunk, (spec, source, lohi, window, halo, str(partial), probabilities,
                            overrides, f"{i}_{j}")) for i, j, window in todo],
         client, progress, already=len(windows) - len(todo))
    records = {(i, j): dict(np.load(partial / "chunks" / f"{i}_{j}.npz"))
               for i, j, _ in windows}
    grid = (max(i for i, _, _ in windows) + 1, max(j for _, j, _ in windows) + 1)
    if model.settings.get("target") == "classes":   # class ids: nothing to join
        tables = {key: np.arange(int(r["top"]) + 1, dtype=np.uint32)
                  for key, r in records.items()}
    else:
        tables = stitch(records, grid)
    _run([(_relabel_chunk, (str(partial), w, tables[(i, j)])) for i, j, w in windows], client)
    _finish(partial, image, chunk, list(model.config.class_names), probabilities, client)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    objects = max((int(t.max(initial=0)) for t in tables.values()), default=0)
    return {"out": str(out), "objects": objects, "chunks": len(windows),
            "resumed": len(windows) - len(todo), "runtime": model.description}


# --------------------------------------------------------------------------- many images

def _predict_file(spec, source, labels_path, with_probabilities, overwrite, overrides):
    """Predict and write one input file (all frames of a stack); returns its object count."""
    from .io import read_frames
    from .instances import label_image
    from .postprocess import write_prediction
    model = runner(*spec)
    frames = read_frames(source)
    results = []
    for frame in frames:
        frame = overlap_tile.as_yxc_with(frame, model.channels)
        lohi = overlap_tile.normalization_range(frame, model.normalization)
        results.append(model.predict(open_image(frame), lohi, (0, 0, *frame.shape[:2])))
    labels = [label_image(r, {**model.settings, **overrides}) for r in results]
    write_prediction(labels_path, frames, labels, results if with_probabilities else None,
                     overwrite)
    return int(labels[0].max())


def predict_files(folder, planned, probabilities=False, runtime="keras", client=None,
                  threads=None, overwrite=False, postprocessing=None, progress=None):
    """Predict many image files, one task per file, here or over a Dask cluster's workers.

    Args:
        folder: a model folder.
        planned: ``{labels path: input path}`` (see ``unet-tf predict``).
        postprocessing: overrides of the folder's post-processing, e.g. ``{"min_size": 50}``.
        progress: called as ``progress(done, total)`` at the start and after each file.

    Returns:
        ``{"objects": [count per file, in the order of planned], "runtime": description}``.
    """
    spec = (str(Path(folder).resolve()), runtime, threads)
    description = runner(*spec).description   # a folder without config or export fails here
    calls = [(_counted, (str(labels), _predict_file, spec, str(source), str(labels),
                         probabilities, overwrite, postprocessing or {}))
             for labels, source in planned.items()]
    objects = dict(_run(calls, client, progress))
    return {"objects": [objects[str(labels)] for labels in planned], "runtime": description}


def _counted(key, function, *args):
    return key, function(*args)


@contextlib.contextmanager
def dask_client(workers=None, scheduler=None, threads=None):
    """``(client, threads per worker)``: an existing cluster's (``scheduler`` address), a local
    cluster of ``workers`` processes sharing this machine's cores (``threads`` each, default
    the cores divided among them), or ``(None, None)`` to work in this process."""
    if not workers and not scheduler:
        yield None, None
        return
    try:
        from distributed import Client, LocalCluster
    except ModuleNotFoundError:
        raise MissingExtra("--workers/--scheduler need Dask's distributed: pip install "
                                  "'unet-tf[large]'") from None
    if scheduler:
        with Client(scheduler) as client:
            yield client, None
        return
    import dask
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    # Dask's default worker environment sets MALLOC_TRIM_THRESHOLD_=65536 and one OpenMP
    # thread: measured here, TensorFlow then runs a chunk ~1.5-2x slower.
    environment = {name: str(threads) for name in
                   ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environment}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        yield client, threads
