"""The ``unet-tf`` command line.

Exit codes: 0 success, 2 the user's input is wrong (one line on stderr, no traceback unless
``--debug``), 1 an internal failure.
"""

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import textwrap
from pathlib import Path

PROG = "unet-tf"


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add(subparsers, name, help, examples, func):
    parser = subparsers.add_parser(
        name, help=help, description=help, formatter_class=_formatter,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "))
    parser.set_defaults(func=func)
    return parser


# --------------------------------------------------------------------------- sizes

def _cmd_sizes(args):
    from .model import is_valid_input_size, output_size, size_rule, valid_input_size
    smallest, step, shrink = size_rule(args.depth, args.upsampling)
    print(f"depth {args.depth}, {args.upsampling}: valid inputs are {smallest} + k*{step}, "
          f"output = input - {shrink}")
    for size in args.size:
        if is_valid_input_size(size, args.depth, args.upsampling):
            print(f"{size}: valid, output {output_size(size, args.depth, args.upsampling)}")
        else:
            nearest = valid_input_size(size, args.depth, args.upsampling)
            print(f"{size}: not valid, next valid input {nearest} "
                  f"(output {output_size(nearest, args.depth, args.upsampling)})")


def _add_sizes(subparsers):
    p = _add(subparsers, "sizes", "show which tile sizes the network accepts and what they give", """
        unet-tf sizes 572 570
        unet-tf sizes --depth 4 --upsampling resize_conv 300
        """, _cmd_sizes)
    p.add_argument("size", type=int, nargs="*", help="input sizes to check")
    _add_architecture_args(p)


def _add_architecture_args(p, defaults=True):
    p.add_argument("--depth", type=int, default=5 if defaults else None,
                   help="resolution levels (default 5, the paper; edge preset 4)")
    p.add_argument("--upsampling", choices=("transpose", "resize_conv"),
                   default="transpose" if defaults else None,
                   help="up-conv (paper) or nearest resize + conv (edge friendly)")


# --------------------------------------------------------------------------- summary

def _cmd_summary(args):
    from .model import build_unet
    model = build_unet((args.tile_size, args.tile_size, args.channels), args.classes, args.depth,
                       args.filters, upsampling=args.upsampling)
    model.summary(line_length=100)


def _add_summary(subparsers):
    p = _add(subparsers, "summary", "print the layers and parameter count of a U-Net", """
        unet-tf summary                      # the paper network, 31,030,658 parameters
        unet-tf summary --filters 16 --tile-size 252
        """, _cmd_summary)
    _add_architecture_args(p)
    p.add_argument("--filters", type=int, default=64, help="channels of the first level (default 64)")
    p.add_argument("--tile-size", type=int, default=572, help="input tile size (default 572)")
    p.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    p.add_argument("--classes", type=int, default=2, help="output classes (default 2)")


# --------------------------------------------------------------------------- train

def _cmd_train(args):
    from .training import TrainConfig, train
    architecture = {name: getattr(args, name) for name in ("tile_size", "depth", "filters",
                                                           "upsampling")
                    if getattr(args, name) is not None}   # given explicitly: beats the preset
    config = TrainConfig.from_preset(
        args.preset, **architecture,
        out=args.out, images=args.images, masks=args.masks, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        optimizer=args.optimizer, learning_rate=args.lr, lr_schedule=args.lr_schedule,
        val_split=args.val_split, w0=args.w0,
        sigma=args.sigma, augment=not args.no_augment, weight_map=not args.no_weight_map,
        early_stopping=args.early_stopping, strategy=args.strategy,
        mixed_precision=args.mixed_precision, seed=args.seed)
    train(config, overwrite=args.overwrite, verbose=0 if args.quiet else "auto")
    if (Path(args.out) / "model.keras").exists():
        print(f"model folder: {args.out}")
    else:  # a multi-worker run's other workers
        print("done; the chief (worker 0) writes the model folder")


def _add_train(subparsers):
    p = _add(subparsers, "train", "train a U-Net on a folder of images and a folder of masks", """
        unet-tf train --images data/images --masks data/masks --out my-model
        unet-tf train --images data/images --masks data/masks --out my-model \\
            --tile-size 252 --depth 4 --filters 16 --epochs 20 --optimizer adam --lr 0.001
        unet-tf train --images data/images --masks data/masks --out edge-model --preset edge
        # killed? the same command resumes from the last completed epoch
        """, _cmd_train)
    p.add_argument("--images", required=True, help="folder of images (TIFF/PNG, 8/16-bit, stacks)")
    p.add_argument("--masks", required=True,
                   help="folder of masks with the images' file names (instance or 0/255)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--preset", choices=("paper", "edge"), default="paper",
                   help="architecture and tile: paper (depth 5, 64 filters, up-conv, 572) or "
                   "edge (depth 4, 32 filters, resize_conv, 252: int8 / Edge TPU ready); "
                   "the options below override it")
    p.add_argument("--tile-size", type=int, help="input tile, a valid size (preset: 572 / 252)")
    _add_architecture_args(p, defaults=False)
    p.add_argument("--filters", type=int, help="channels of the first level (preset: 64 / 32)")
    p.add_argument("--epochs", type=int, default=50, help="epochs (50)")
    p.add_argument("--steps-per-epoch", type=int, default=100, help="batches per epoch (100)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="tiles per batch and replica (1, as the paper)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="SGD with momentum 0.99 (paper) or Adam")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate (0.01)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant (paper) or cosine decay to 0 over the run")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="fraction of whole images held out for validation (0.2)")
    p.add_argument("--w0", type=float, default=10.0, help="weight map border weight (10)")
    p.add_argument("--sigma", type=float, default=5.0, help="weight map border width, px (5)")
    p.add_argument("--no-augment", action="store_true", help="no elastic/flip/intensity augmentation")
    p.add_argument("--no-weight-map", action="store_true", help="uniform pixel weights")
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE "
                   "epochs without improvement")
    p.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default="default",
                   help="one device; mirrored: all GPUs of this host (Keras fit); multiworker: "
                   "hosts listed in TF_CONFIG (custom loop). --batch-size is per replica")
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 compute on GPUs (logits and loss stay float32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished model folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- predict

def _output_path(out_dir, source):
    suffix = ".tif" if source.suffix.lower() in (".tif", ".tiff") else ".png"
    return Path(out_dir) / f"{source.stem}{suffix}"


def _cmd_predict(args):
    from .io import IMAGE_SUFFIXES, check_writable, list_images, read_frames, write_image
    from .postprocess import label_image, overlay
    from .tiling import predict_tiled, tile_count
    from .training import load_model_folder
    import keras
    import numpy as np

    inputs = []
    for item in map(Path, args.inputs):
        if item.is_dir():
            inputs.extend(list_images(item, "input"))
        elif not item.is_file():
            raise FileNotFoundError(f"input not found: {item}")
        elif item.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{item}: expected one of {'/'.join(IMAGE_SUFFIXES)}")
        else:
            inputs.append(item)
    check_writable(args.out)
    planned = {}
    for source in inputs:
        labels = _output_path(args.out, source)
        paths = [labels, labels.with_name(f"{source.stem}_overlay.png")]
        if args.probabilities:
            paths.append(labels.with_name(f"{source.stem}_probabilities.tif"))
        clash = [p for p in paths if p.exists()] if not args.overwrite else []
        if clash:
            raise FileExistsError(f"{clash[0]} exists (use --overwrite to replace it)")
        if labels in planned:
            raise ValueError(f"{source} and {planned[labels]} would both write {labels}")
        planned[labels] = source
    model, config = load_model_folder(args.model)
    for labels_path, source in planned.items():
        frames = read_frames(source)
        tile_size = args.tile_size or config["tile_size"]
        architecture = config["architecture"]
        tiles = sum(tile_count(f.shape, tile_size, architecture["depth"],
                               architecture["upsampling"]) for f in frames)
        bar = None if args.quiet else keras.utils.Progbar(tiles, unit_name="tile")  # one per stack
        results = [predict_tiled(model, frame, tile_size=tile_size, batch_size=args.batch_size,
                                 output="probabilities", progress=bar or False,
                                 normalization=config["normalization"])
                   for frame in frames]
        masks = [label_image(r.argmax(-1), config["architecture"]["num_classes"]) for r in results]
        stack = lambda arrays: arrays[0] if len(arrays) == 1 else np.stack(arrays)
        write_image(labels_path, stack(masks), overwrite=args.overwrite)
        write_image(labels_path.with_name(f"{source.stem}_overlay.png"),
                    overlay(frames[0], masks[0]), overwrite=args.overwrite)
        if args.probabilities:
            write_image(labels_path.with_name(f"{source.stem}_probabilities.tif"),
                        stack(results), overwrite=args.overwrite)
        print(f"{source} -> {labels_path} ({int(masks[0].max())} objects"
              f"{' in frame 0' if len(masks) > 1 else ''})")


def _add_predict(subparsers):
    p = _add(subparsers, "predict", "segment images of any size with a trained model folder", """
        unet-tf predict my-model cells.tif --out predictions
        unet-tf predict my-model data/new/ --out predictions --probabilities
        """, _cmd_predict)
    p.add_argument("model", help="model folder written by `unet-tf train`")
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, help="folder for label masks (same names as the "
                   "inputs), NAME_overlay.png and NAME_probabilities.tif")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--tile-size", type=int, help="input tile (default: the training tile size)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (4)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- evaluate

def _metric_table(rows):
    columns = ("foreground_iou", "pixel_error", "rand_error", "f1", "ap50", "mean_ap", "merged",
               "split")
    width = max(len(name) for name in [*rows, "mean"]) + 2
    lines = ["image".ljust(width) + "".join(c.rjust(15) for c in columns)]
    mean = {c: sum(r[c] for r in rows.values()) / len(rows) for c in columns}
    for name, row in [*rows.items(), ("mean", mean)]:
        lines.append(name.ljust(width) + "".join(
            (f"{row[c]:15.4f}" if isinstance(row[c], float) else f"{row[c]:15d}") for c in columns))
    return "\n".join(lines), mean


def evaluate_folder(model, config, images, masks, names, progress=False):
    """Metrics per image (dict name -> metrics) of a model on image/mask pairs."""
    from .metrics import evaluate
    from .tiling import predict_tiled
    rows = {}
    for name, image, mask in zip(names, images, masks):
        labels = predict_tiled(model, image, tile_size=config["tile_size"], output="labels",
                               progress=progress, normalization=config["normalization"])
        rows[name] = evaluate(mask, labels)
    return rows


def _cmd_evaluate(args):
    import json
    from .io import load_pairs
    from .training import load_model_folder
    images, masks, names = load_pairs(args.images, args.masks)
    if args.json:
        from .io import check_writable
        check_writable(Path(args.json).parent, "--json folder")
    model, config = load_model_folder(args.model)
    rows = evaluate_folder(model, config, images, masks, names, progress=not args.quiet)
    table, mean = _metric_table(rows)
    print(table)
    if args.json:
        from .io import write_atomically
        write_atomically(args.json, lambda tmp: Path(tmp).write_text(
            json.dumps({"images": rows, "mean": mean}, indent=2)))
        print(f"metrics: {args.json}")


def _add_evaluate(subparsers):
    p = _add(subparsers, "evaluate", "score a model folder against ground-truth masks", """
        unet-tf evaluate my-model --images data/test/images --masks data/test/masks
        unet-tf evaluate my-model --images imgs --masks masks --json metrics.json
        """, _cmd_evaluate)
    p.add_argument("model", help="model folder written by `unet-tf train`")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--masks", required=True, help="folder of true masks (same file names)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- export

def _cmd_export(args):
    import json
    from .convert import export_edgetpu, export_model
    quiet = _native_stderr_captured() if not args.debug else contextlib.nullcontext()
    if args.format == "edgetpu":
        with quiet:
            result = export_edgetpu(args.model, args.tile_size, args.calibration_images,
                                    args.overwrite)
        _report_edgetpu(result.model, result.report, result.compiled, result.compiler_log)
        return
    with quiet:
        path = export_model(args.model, args.format, tile_size=args.tile_size,
                            calibration_images=args.calibration_images, overwrite=args.overwrite)
    size = (sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir()
            else path.stat().st_size)
    print(f"{args.format}: {path} ({size / 1e6:.2f} MB)")
    if path.suffix == ".tflite":
        meta = json.loads(path.with_suffix(".json").read_text())
        check = meta["check"]
        print(f"  tile {meta['tile_size']} -> {meta['output_size']}, input {meta['input_tensor']['dtype']}"
              f", metadata {path.with_suffix('.json')}")
        print(f"  vs the Keras model on {check['tiles']} tiles: max |logit diff| "
              f"{check['max_abs_logit_diff']:.3g}, same label {100 * check['label_agreement']:.2f}%")


def _report_edgetpu(path, report, compiled=None, compiler_log=None):
    print(f"Edge TPU check of {path}:")
    print(report.table())
    if compiled is None:
        print("edgetpu_compiler is not on PATH: the checker's verdict above is the result "
              "(compile on an x86-64 Linux host: see export/edgetpu/README.md)")
    else:
        print(f"edgetpu_compiler wrote {compiled}:\n{compiler_log}")
    if not report.ok:
        raise ValueError(f"{path} would not run fully on the Edge TPU ({len(report.unmapped)} "
                         "ops not mapped" + ("" if report.fits_on_chip else ", parameters too big")
                         + f"): {report.advice}")


def _cmd_check_edgetpu(args):
    from .edgetpu import check_tflite
    _report_edgetpu(args.tflite, check_tflite(args.tflite))


def _add_check_edgetpu(subparsers):
    p = _add(subparsers, "check-edgetpu", "check any .tflite op by op against the Edge TPU's "
             "requirements", """
        unet-tf check-edgetpu my-model/export/model_int8.tflite
        unet-tf check-edgetpu someone-elses-model.tflite     # lists the ops that would not map
        """, _cmd_check_edgetpu)
    p.add_argument("tflite", help="a .tflite file")


def _add_export(subparsers):
    p = _add(subparsers, "export", "export a model folder for TF Serving, TFLite or devices", """
        unet-tf export my-model --format savedmodel     # my-model/export/savedmodel/1/
        unet-tf export my-model --format tflite-int8    # calibrated on the training images
        unet-tf export my-model --format tflite --tile-size 252 --overwrite
        unet-tf export edge-model --format edgetpu      # int8 + op check (+ edgetpu_compiler)
        unet-tf export my-model --format onnx           # needs pip install 'unet-tf[onnx]'
        unet-tf export my-model --format bioimageio     # Fiji/deepImageJ, napari, ilastik
        python export/edge_predict.py my-model/export/model_int8.tflite cells.tif --out masks
        """, _cmd_export)
    p.add_argument("model", help="model folder written by `unet-tf train`")
    p.add_argument("--format", required=True,
                   choices=("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "edgetpu",
                            "onnx", "bioimageio"),
                   help="SavedModel (any size, dynamic batch), a TFLite tile model, or the int8 "
                   "one checked (and compiled, if edgetpu_compiler is installed) for the Edge TPU")
    p.add_argument("--tile-size", type=int, help="TFLite input tile (default: the training tile)")
    p.add_argument("--calibration-images", metavar="DIR",
                   help="int8: images like the training data (default: the training images)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export")


# --------------------------------------------------------------------------- demo

def _cmd_demo(args):
    from .demo import run_demo
    run_demo(args.out, epochs=args.epochs, overwrite=args.overwrite, quiet=args.quiet)


def _add_demo(subparsers):
    p = _add(subparsers, "demo", "train, predict and evaluate on the bundled nuclei sample", """
        unet-tf demo                          # writes ./unet-tf-demo, about 3 minutes on 2 CPU cores
        unet-tf demo --out /tmp/demo --overwrite
        """, _cmd_demo)
    p.add_argument("--out", default="unet-tf-demo", help="folder for data, model and results")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (demo default)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- main

@contextlib.contextmanager
def _native_stderr_captured():
    """Keep what native code (TensorFlow, the TFLite converter) writes to fd 2 off the user's
    stderr; it is replayed if the block fails, so an error is still explained."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _import_tensorflow_quietly():
    """TF_CPP_MIN_LOG_LEVEL does not silence TF 2.21's oneDNN/absl start-up lines, nor, with a
    CUDA build on a machine without a GPU, the cuInit error of the first device lookup: both
    happen here, with stderr captured."""
    with _native_stderr_captured():
        import keras  # noqa: F401
        import tensorflow
        tensorflow.config.list_physical_devices()


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_formatter,
        description="U-Net segmentation for microscopy: train, predict, evaluate, export.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_demo, _add_train, _add_predict, _add_evaluate, _add_export,
                _add_check_edgetpu, _add_sizes, _add_summary):
        add(subparsers)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    # tifffile logs a warning before it fails on a corrupt file; our error says it in one line.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    if not args.debug:
        _import_tensorflow_quietly()
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
            PermissionError, ModuleNotFoundError) as err:  # the last: an optional extra is missing
        if args.debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
