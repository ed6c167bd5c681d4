#!/usr/bin/env python3
"""Segment images with an exported unet-tf ``.tflite`` model, without TensorFlow.

Needs numpy, ai-edge-litert (the LiteRT interpreter), opencv-python-headless for PNG/JPEG and
connected components, and tifffile for TIFF. Copy this folder to the device::

    pip install numpy ai-edge-litert opencv-python-headless tifffile
    python edge_predict.py my-model/export cells.tif more/*.png --out predictions
    python edge_predict.py model_int8.tflite cells.tif --out predictions
    python edge_predict.py model_int8_edgetpu.tflite cells.tif --out predictions \\
        --delegate libedgetpu.so.1

Given the export folder, it runs the variant fastest on this CPU (``variants.py``, a byte copy of
``unet_tf/variants.py``: int8 where the CPU has int8 dot products, else float32), or
``--variant``; the choice and its reason are printed and kept in ``OUT/edge_predict.json``.

The model's JSON sidecar (``model_int8.json`` next to ``model_int8.tflite``, written by
``unet-tf export``) gives the tile geometry, normalisation and classes. Each image is predicted
overlap-tile (mirrored context, windows on the pooling grid) exactly like ``unet-tf predict``;
int8 models get quantised input and dequantised logits. Writes ``NAME.tif``/``NAME.png``: instance
labels made by ``instances.py`` (a byte copy of ``unet_tf/instances.py``) with the model
folder's post-processing settings from the sidecar, or class ids for a multi-class model.

A 3-D net's export (its sidecar has ``tile_shape``) takes ``ZYX``/``ZYXC`` TIFF stacks, predicts
them tile by tile in 3-D (``overlap_tile.predict_volume``, as ``unet-tf predict``) and labels
them in 3-D with ``volume_instances.py`` (the library's code; it needs SciPy: ``pip install
scipy``), using the voxel size in the sidecar.
Exit codes: 0 done, 2 bad input (one line on stderr), 1 anything else.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagefiles import IMAGE_SUFFIXES, read_image  # noqa: E402
from instances import label_image  # noqa: E402
from overlap_tile import (allocated_interpreter, as_yxc_with, as_zyxc_with,  # noqa: E402
                          invoke_tiles, normalization_range, predict_image, predict_volume,
                          softmax)
from variants import VARIANTS, choose_variant, cpu_flags, exported_variants  # noqa: E402

PROG = "edge_predict"


class EdgeModel:
    """A unet-tf TFLite export and its sidecar, run by the LiteRT interpreter.

    Args:
        model_path: the ``.tflite`` file.
        metadata_path: its JSON sidecar (default: same name, ``.json``; an Edge TPU compiled
            ``NAME_edgetpu.tflite`` falls back to ``NAME.json``).
        delegate: path of a delegate library (e.g. ``libedgetpu.so.1``); default XNNPACK on CPU.
        threads: CPU threads for the interpreter.
    """

    def __init__(self, model_path, metadata_path=None, delegate=None, threads=2):
        from ai_edge_litert.interpreter import load_delegate
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"model file not found: {model_path}")
        self.meta = _read_metadata(model_path, metadata_path)
        delegates = [load_delegate(delegate)] if delegate else None
        try:
            self.interpreter = allocated_interpreter(model_path=str(model_path),
                                                     num_threads=threads,
                                                     experimental_delegates=delegates)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"cannot load {model_path} as a TFLite model: {err}") from None

    @property
    def is_volume(self):
        """Whether this is a 3-D net (it takes ``ZYX``/``ZYXC`` volumes)."""
        return "tile_shape" in self.meta

    def predict_tiles(self, tiles):
        """Logits ``(B, O, O, K)`` float32 for normalised float32 tiles ``(B, T, T, C)`` (a 3-D
        net: ``(B, *output_shape, K)`` for ``(B, *tile_shape, C)``)."""
        return invoke_tiles(self.interpreter, tiles)

    def segment(self, image):
        """What ``unet-tf predict`` writes for a ``YX``/``YXC`` image (a 3-D net: ``ZYX``/``ZYXC``
        volume): instance labels, or class ids (uint8) for a multi-class model."""
        return labels_from(self.predict(image, "probabilities"), self.meta)

    def predict(self, image, output="labels"):
        """``"logits"``/``"probabilities"`` ``(H, W, K)`` or class ``"labels"`` ``(H, W)`` int32
        for a whole ``YX``/``YXC`` image of any size (a 3-D net: ``(Z, Y, X, ...)`` for a
        ``ZYX``/``ZYXC`` volume, normalised over the whole volume as in training)."""
        meta = self.meta
        if self.is_volume:
            volume = as_zyxc_with(image, meta["channels"])
            logits = predict_volume(volume, self.predict_tiles, meta["tile_shape"],
                                    meta["output_shape"], meta["pooling_periods"],
                                    normalization_range(volume, meta["normalization"]))
        else:
            image = as_yxc_with(image, meta["channels"])
            logits = predict_image(image, self.predict_tiles, meta["tile_size"],
                                   meta["output_size"], meta["pooling_period"],
                                   meta["normalization"])
        if output == "logits":
            return logits
        if output == "probabilities":
            return softmax(logits)
        return logits.argmax(-1).astype(np.int32)


def choose_model(model, variant=None, flags=None):
    """``(path, variant, reason)``: ``model`` itself if it is a ``.tflite`` file, else the
    export in folder ``model`` (``model_<variant>.tflite``) fastest on a CPU with ``flags``
    (default: this one's), or ``variant``."""
    model = Path(model)
    if model.is_file():
        if variant is not None:
            raise ValueError(f"--variant chooses among the exports in a folder; {model} is one "
                             "file: give its folder")
        return model, None, "the file given"
    if not model.is_dir():
        raise FileNotFoundError(f"model not found: {model} (a .tflite file or an export folder)")
    available = exported_variants(model)
    volume = any("tile_shape" in json.loads(sidecar.read_text())   # a 3-D net's exports
                 for sidecar in (model / f"model_{v}.json" for v in available)
                 if sidecar.is_file())
    variant, reason = choose_variant(available, cpu_flags() if flags is None else flags,
                                     variant, volume)
    return model / f"model_{variant}.tflite", variant, reason


def _read_metadata(model_path, metadata_path):
    candidates = [Path(metadata_path)] if metadata_path else [
        model_path.with_suffix(".json"),
        model_path.with_name(model_path.stem.removesuffix("_edgetpu") + ".json")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no metadata for {model_path}: expected {candidates[0]} "
                                "(written by `unet-tf export` next to the .tflite)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if meta.get("format") != "unet-tf tflite":
        raise ValueError(f"{path} is not a unet-tf TFLite sidecar (format {meta.get('format')!r})")
    compiled = model_path.stem.endswith("_edgetpu")  # edgetpu_compiler rewrites the file
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if not compiled and digest != meta["tflite_sha256"]:
        raise ValueError(f"{path} describes another model than {model_path} (SHA-256 differs): "
                         "export again")
    return meta


# --------------------------------------------------------------------------- files

def labels_from(probabilities, meta):
    """Labels from probabilities ``(H, W, K)`` (``(Z, Y, X, K)``) with the sidecar's
    post-processing, as ``unet-tf predict`` makes them (``instances.label_image`` and
    ``volume_instances.label_volume``, the library's own code); sidecars from before
    post-processing was stored mean connected components of the foreground (2 classes) or
    class ids."""
    settings = meta.get("postprocessing") or (
        {"target": "classes"} if meta["num_classes"] > 2 else {})
    if "tile_shape" in meta:
        return volume_labeller()(probabilities, settings, meta.get("voxel_size") or (1, 1, 1))
    return label_image(probabilities, settings)


def volume_labeller():
    """``volume_instances.label_volume``, or a ``ValueError`` saying SciPy is missing."""
    try:
        from volume_instances import label_volume
    except ImportError as err:
        raise ValueError(f"3-D instance labels need SciPy: pip install scipy ({err})") from None
    return label_volume


def write_text(path, text):
    """Write atomically (see :func:`write_labels`)."""
    _write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_labels(path, labels):
    """Write atomically: a temporary sibling, then a rename."""
    _write_atomically(path, lambda tmp: _write_labels(tmp, path.suffix, labels))


def _write_atomically(path, write):
    # mkstemp's file is private (0600); the result is read like any file the user writes.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_labels(tmp, suffix, labels):
    if suffix == ".tif":
        import tifffile
        tifffile.imwrite(tmp, labels, compression="zlib")
    else:
        import cv2
        if not cv2.imwrite(tmp, labels.astype(np.uint16)):
            raise ValueError(f"cannot write {tmp}")


def _inputs(items):
    files = []
    for item in map(Path, items):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif not item.is_file():
            raise FileNotFoundError(f"input not found: {item}")
        elif item.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{item}: expected one of {'/'.join(IMAGE_SUFFIXES)}")
        else:
            files.append(item)
    if not files:
        raise FileNotFoundError(f"no images in {' '.join(items)}")
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model folder's export/ (the variant fastest here is "
                        "run), or one .tflite exported by `unet-tf export` (JSON beside it)")
    parser.add_argument("inputs", nargs="+", help="image files (TIFF/PNG/JPEG) or folders "
                        "(a 3-D net: ZYX TIFF stacks)")
    parser.add_argument("--out", required=True, help="folder for the label masks")
    parser.add_argument("--metadata", help="the JSON sidecar, if not next to the model")
    parser.add_argument("--delegate", help="delegate library, e.g. libedgetpu.so.1")
    parser.add_argument("--variant", choices=VARIANTS, help="with an export folder: run this "
                        "export instead of the fastest")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    try:
        files = _inputs(args.inputs)
        out = Path(args.out)
        targets = [out / f"{f.stem}{'.tif' if f.suffix.lower() in ('.tif', '.tiff') else '.png'}"
                   for f in files]
        clash = [t for t in targets if t.exists()]
        if clash and not args.overwrite:
            raise FileExistsError(f"{clash[0]} exists (use --overwrite to replace it)")
        path, variant, reason = choose_model(args.model, args.variant)
        print(f"model: {path} ({reason})")
        model = EdgeModel(path, args.metadata, args.delegate, args.threads)
        if model.is_volume:
            volume_labeller()   # before any prediction: SciPy is there
        out.mkdir(parents=True, exist_ok=True)
        for source, target in zip(files, targets):
            labels = model.segment(read_image(source))
            write_labels(target, labels)
            print(f"{source} -> {target}")
        record = {"model": str(path), "variant": variant, "reason": reason,
                  "inputs": [str(f) for f in files], "outputs": [str(t) for t in targets]}
        write_text(out / "edge_predict.json", json.dumps(record, indent=2))
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
