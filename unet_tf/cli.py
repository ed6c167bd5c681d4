"""The ``unet-tf`` command line.

Exit codes: 0 success, 2 the user's input is wrong (one line on stderr, no traceback unless
``--debug``), 1 an internal failure, 3 ``train`` finished but the model found almost none of
the objects of its tuning images (the folder is kept; the message says what to try).
"""

import argparse
import contextlib
import logging
import sys
import textwrap
from pathlib import Path

from .chunked import CHUNK, VOLUME_CHUNK
from .config import (LR_SCHEDULES, OPTIMIZERS, PRESETS, STRATEGIES, NothingLearned, TrainConfig,
                     class_id_settings)
from .demo import DEMO_BUDGET
from .errors import USER_ERRORS
from .exporters import FORMATS as EXPORT_FORMATS
from .images import NORMALIZATION_CHOICES
from .memory import BATCH_SIZE
from .model_folder import RUNTIMES
from .native import stderr_captured
from .sizes import UPSAMPLING_MODES
from .variants import VARIANTS
from .volume_sizes import voxel_text

PROG = "unet-tf"
EXIT_INTERNAL, EXIT_USER_ERROR, EXIT_NOTHING_LEARNED = 1, 2, 3
DEFAULTS = TrainConfig()  # the CLI's defaults are the config's: one place for each


def _progress_verbosity(quiet):
    """Keras verbosity: bars on a terminal, one plain line per epoch in a log file (no
    backspaces or escape codes for nohup, Slurm or CI logs), nothing with --quiet."""
    if quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _progress_bar(total, quiet):
    """A tile counter for long predictions, or ``None`` with --quiet."""
    from .backend import keras
    verbose = _progress_verbosity(quiet)
    return keras.utils.Progbar(total, unit_name="tile", verbose=verbose) if verbose else None


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
    from .sizes import is_valid_input_size, next_valid_input_size, output_size, size_rule
    if args.voxel_size:
        return _volume_sizes(args)
    sizes = [_number(text, int, "size") for text in args.size]
    smallest, step, shrink = size_rule(args.depth, args.upsampling)
    print(f"depth {args.depth}, {args.upsampling}: valid inputs are {smallest} + k*{step}, "
          f"output = input - {shrink}")
    for size in sizes:
        if is_valid_input_size(size, args.depth, args.upsampling):
            print(f"{size}: valid, output {output_size(size, args.depth, args.upsampling)}")
        else:
            nearest = next_valid_input_size(size, args.depth, args.upsampling)
            print(f"{size}: not valid, next valid input {nearest} "
                  f"(output {output_size(nearest, args.depth, args.upsampling)})")


def _volume_sizes(args):
    """The 3-D net's plan for a voxel size and, per ZYX shape asked, its verdict."""
    from .volume_sizes import (AXIS_NAMES, axis_rule, next_valid_volume_shape, per_axis,
                               plan_axes, shape_problems, volume_output_shape)
    voxel = _triple(args.voxel_size, float, "--voxel-size")
    shapes = [_triple(text, int, "a ZYX shape") for text in args.size]
    shortest = tuple(min(axis) for axis in zip(*shapes)) if shapes else None
    plan = plan_axes(voxel, args.depth, shape=shortest)
    print(f"3-D, depth {args.depth}, voxel size {voxel_text(voxel)}")
    for level, (pool, kernel) in enumerate(zip(plan["pools"] + [None], plan["kernels"])):
        pooled = f", then pool {'x'.join(map(str, pool))}" if pool else " (bottom)"
        print(f"  level {level}: kernels {'x'.join(map(str, kernel))}{pooled}")
    for name, axis in zip(AXIS_NAMES, per_axis(plan)):
        smallest, step, shrink = axis_rule(*axis)
        print(f"  {name}: valid {smallest} + k*{step}, output = input - {shrink}")
    for shape in shapes:
        problems = shape_problems(shape, plan)
        if not problems:
            print(f"{_joined(shape)}: valid, output {_joined(volume_output_shape(shape, plan))}")
            continue
        nearest = next_valid_volume_shape(shape, plan)
        print(f"{_joined(shape)}: not valid ({'; '.join(problems)}); next valid input "
              f"{_joined(nearest)} (output {_joined(volume_output_shape(nearest, plan))})")


def _joined(shape):
    return ",".join(map(str, shape))


def _number(text, kind, what):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{what} must be {'an integer' if kind is int else 'a number'}, got "
                         f"{text!r}") from None


def _triple(text, kind, what):
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"{what} must be three comma-separated values Z,Y,X, got {text!r}")
    return tuple(_number(part, kind, what) for part in parts)


def _size_or_zyx(text, what):
    """One integer size (a 2-D net's) or ``Z,Y,X`` (a 3-D net's); ``None`` stays ``None``. The
    caller checks which the net needs."""
    if text is None:
        return None
    return _triple(text, int, what) if "," in text else _number(text, int, what)


def _add_sizes(subparsers):
    p = _add(subparsers, "sizes", "show which tile sizes the network accepts and what they give", """
        unet-tf sizes 572 570
        unet-tf sizes --depth 4 --upsampling resize_conv 300
        unet-tf sizes --voxel-size 1,0.2,0.2 --depth 4 5,100,100 5,101,101
        """, _cmd_sizes)
    p.add_argument("size", nargs="*",
                   help="input sizes to check (with --voxel-size: Z,Y,X shapes)")
    _add_architecture_args(p)
    p.add_argument("--voxel-size", metavar="Z,Y,X",
                   help="a 3-D net for this voxel size (per-axis pools and kernels, planned "
                   "for the shortest extent asked per axis)")


def _add_architecture_args(p, defaults=True):
    paper = PRESETS["paper"]
    p.add_argument("--depth", type=int, default=paper["depth"] if defaults else None,
                   help=f"resolution levels (paper {paper['depth']}, edge preset "
                   f"{PRESETS['edge']['depth']})")
    p.add_argument("--upsampling", choices=UPSAMPLING_MODES,
                   default=paper["upsampling"] if defaults else None,
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
    p.add_argument("--filters", type=int, default=PRESETS["paper"]["filters"],
                   help="channels of the first level (default %(default)s)")
    p.add_argument("--tile-size", type=int, default=PRESETS["paper"]["tile_size"],
                   help="input tile size (default %(default)s)")
    p.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    p.add_argument("--classes", type=int, default=2, help="output classes (default 2)")


# --------------------------------------------------------------------------- train

# CLI option -> TrainConfig field, for the options given explicitly (they beat the preset)
TRAIN_OPTIONS = {"tile_size": "tile_size", "depth": "depth", "filters": "filters",
                 "upsampling": "upsampling", "epochs": "epochs",
                 "steps_per_epoch": "steps_per_epoch", "batch_size": "batch_size",
                 "optimizer": "optimizer", "lr": "learning_rate", "lr_schedule": "lr_schedule",
                 "val_split": "val_split", "w0": "w0", "border_sigma": "border_sigma",
                 "elastic_sigma": "elastic_sigma", "early_stopping": "early_stopping",
                 "strategy": "strategy", "seed": "seed", "target": "target",
                 "normalization": "normalization", "ignore_label": "ignore_label",
                 "foreground_tiles": "foreground_tiles", "start_from": "start_from"}


def _given_settings(args):
    """The TrainConfig settings given explicitly on the command line."""
    given = {field: getattr(args, option) for option, field in TRAIN_OPTIONS.items()
             if getattr(args, option, None) is not None}
    if args.no_augment:
        given["augment"] = False
    if args.no_weight_map:
        given["weight_map"] = False
    if args.mixed_precision:
        given["mixed_precision"] = True
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    given.update(class_id_settings(args.classes, names))
    return given


def _percent(fraction):
    return f"{100 * fraction:.1f} %" if fraction < 0.1 else f"{100 * fraction:.0f} %"


def _print_plan(plan, images_dir):
    from .planner import format_duration
    fp = plan.fingerprint
    if "voxel_size" in fp:
        print(f"data: {fp['volumes']} volume(s) in {images_dir} (ZYX, a 3-D net), voxel size "
              f"{voxel_text(fp['voxel_size'])} (anisotropy "
              f"{fp['anisotropy']:g}), {fp['objects']} objects (median "
              f"{fp['object_voxels_median']} voxels, diameter {fp['diameter_median']:g} in the "
              "voxel size's unit)")
    else:
        _print_image_data(fp, images_dir)
    hw = plan.hardware
    gpus = ", ".join(g["name"] for g in hw["gpus"]) or "no GPU"
    print(f"machine: {gpus}, {hw['cpu_cores']} CPU cores, {hw['available_ram_gib']} GiB free")
    print(plan.table())
    if plan.time_budget:
        print(f"estimated training time {format_duration(plan.estimated_seconds)} of a "
              f"{format_duration(plan.time_budget)} budget")


def _print_image_data(fp, images_dir):
    print(f"data: {fp['images']} image(s) in {images_dir}, {fp['objects']} objects "
          f"(diameter {fp['diameter_p5_p50_p95'][1]:g} px median, "
          f"{fp['diameter_p5_p50_p95'][2]:g} px 95th percentile), "
          f"{100 * fp['touching_fraction']:.0f} % touching, "
          f"{_percent(fp['foreground_fraction'])} foreground"
          + (f" ({_percent(fp['annotated_fraction'])} of the pixels annotated)"
             if fp.get("annotated_fraction", 1) < 1 else ""))


def _volume_run(args, given):
    """``(config, plan, data)`` of a 3-D run when the data are volumes (``--axes ZYX``, a
    ``--voxel-size`` or the files' axes say Z), else ``None``."""
    from .io import list_images
    from .volume_files import is_volume_stack, parse_voxel_size
    voxel = parse_voxel_size(args.voxel_size) if args.voxel_size else None
    if args.axes == "TYX" and voxel:
        raise ValueError("--axes TYX trains a 2-D net over the frames; --voxel-size is for "
                         "volumes (--axes ZYX)")
    if not is_volume_stack(list_images(args.images, "images")[0], args.axes, voxel):
        return None
    if args.preset:
        raise ValueError("the presets are 2-D nets; a volume run is planned (leave --preset out)")
    from .volume_files import load_volume_pairs, volume_voxel_size
    from .volume_planner import make_volume_plan
    volumes, masks, names, paths = load_volume_pairs(args.images, args.masks)
    voxel = volume_voxel_size(paths, voxel)
    if isinstance(given.get("tile_size"), int):
        raise ValueError("a volume's --tile-size is planned (Z,Y,X); leave it out")
    plan = make_volume_plan(volumes, masks, voxel, args.time_budget, given)
    return (plan.config(out=args.out, images=args.images, masks=args.masks), plan,
            (volumes, masks, names))


def _refuse_unclear_stacks(images):
    """A TIFF stack whose axes say neither Z nor T could be a volume or frames: ask."""
    from .io import list_images
    from .volume_files import stack_info
    for path in list_images(images, "images"):
        axes, _ = stack_info(path)
        if len(axes.replace("S", "").replace("C", "")) == 3 and not set(axes) & set("TZ"):
            raise ValueError(
                f"{path} is a stack whose axes ({axes}) do not say whether its pages are a "
                "volume or frames: give --axes ZYX (a volume: a 3-D net; with its --voxel-size "
                "if the file has none) or --axes TYX (frames: a 2-D net)")


def _planned_run(args):
    """``(config, plan, data)`` of a train/plan command: from --config, a preset, or the plan."""
    from .planner import configure_run, repeat_run
    given = _given_settings(args)
    if not getattr(args, "config", None) and args.images and args.masks:
        volume = _volume_run(args, given)
        if volume:
            return volume
    if getattr(args, "config", None):
        return repeat_run(args.config, given,
                          fixed=dict(out=args.out, images=args.images, masks=args.masks))
    if not (args.images and args.masks):
        raise ValueError("give --images and --masks (or --config of an earlier run)")
    from .io import load_pairs
    if not args.axes:
        _refuse_unclear_stacks(args.images)
    data = load_pairs(args.images, args.masks)
    if any("#" in name for name in data[2]):   # pages of stacks: say which dimension they are
        why = "--axes TYX" if args.axes else "their axes say T"
        print(f"stacks: their pages train a 2-D net as frames ({why}; --axes ZYX or "
              "--voxel-size trains a 3-D net on them)")
    config, plan = configure_run(data[0], data[1], given, args.time_budget, args.preset,
                                 fixed=dict(out=args.out, images=args.images, masks=args.masks))
    return config, plan, data


def _cmd_train(args):
    import time
    from .planner import format_duration
    start = time.perf_counter()
    config, plan, (images, masks, names) = _planned_run(args)
    from .training import train  # TensorFlow: after the inputs have been checked
    if plan is not None and not args.config:
        _print_plan(plan, args.images)
    train(config, images, masks, names, overwrite=args.overwrite,
          verbose=_progress_verbosity(args.quiet), plan=plan)
    elapsed = time.perf_counter() - start
    budget = plan.time_budget if plan is not None and not args.config else None
    print(f"trained in {format_duration(elapsed)}"
          + (f" (budget {format_duration(budget)})" if budget else ""))
    if (Path(args.out) / "model.keras").exists():
        print(f"model folder: {args.out}")
    else:  # a multi-worker run's other workers
        print("done; the chief (worker 0) writes the model folder")


def _cmd_plan(args):
    _, plan, _ = _planned_run(args)
    _print_plan(plan, args.images)


def _add_train_settings(p):
    """The options shared by train and plan."""
    d, paper, edge = DEFAULTS, PRESETS["paper"], PRESETS["edge"]
    p.add_argument("--time-budget", metavar="DURATION",
                   help="training time to plan for, e.g. 90s, 10m, 1h (default 10m without a "
                   "GPU, 30m with one; a fine-tune: 2m / 5m, a 3-D one at least its shortest "
                   "useful run)")
    p.add_argument("--from", dest="start_from", metavar="MODEL_DIR",
                   help="fine-tune a trained model folder: its architecture, weights and "
                   "normalisation (a new classifier head if the classes differ), planned with "
                   "fewer steps and a lower learning rate")
    p.add_argument("--tile-size", type=int, help="input tile, a valid size (planned; preset: "
                   f"{paper['tile_size']} / {edge['tile_size']})")
    _add_architecture_args(p, defaults=False)
    p.add_argument("--filters", type=int, help="channels of the first level (planned; preset: "
                   f"{paper['filters']} / {edge['filters']})")
    p.add_argument("--epochs", type=int, help="epochs (planned from the time budget)")
    p.add_argument("--steps-per-epoch", type=int, help="batches per epoch (planned)")
    p.add_argument("--batch-size", type=int, help="tiles per batch and replica (planned)")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=f"SGD with momentum {d.momentum} (paper) or Adam (planned)")
    p.add_argument("--lr", type=float, help="learning rate (planned)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant (paper) or cosine decay to 0 over the run (planned)")
    p.add_argument("--val-split", type=float,
                   help="fraction of whole images held out for validation (planned)")
    p.add_argument("--target", choices=("foreground", "boundary"),
                   help="foreground: 2 classes, touching objects split afterwards (the paper); "
                   "boundary: 3 classes (background, interior, cell boundary), objects grown from "
                   "the interiors (planned)")
    p.add_argument("--classes", type=int, metavar="N",
                   help="masks hold class ids 0..N-1 (0 = background) instead of instances; "
                   "the output is class ids")
    p.add_argument("--class-names", metavar="A,B,...",
                   help="names of the classes, background first (implies --classes)")
    p.add_argument("--normalization", choices=NORMALIZATION_CHOICES,
                   help="image: each image's 1-99.8 percentiles to 0-1; dataset: one range, the "
                   "training set's percentiles, for every image (planned)")
    p.add_argument("--w0", type=float, help=f"weight map border weight ({d.w0})")
    p.add_argument("--border-sigma", type=float,
                   help="weight map border width, the paper's sigma, px (planned)")
    p.add_argument("--elastic-sigma", type=float,
                   help="elastic deformation: displacement std, px (planned)")
    _add_ignore_label(p)
    p.add_argument("--foreground-tiles", type=float, metavar="SHARE",
                   help="share of training tiles centred on a random annotated object, 0-1 "
                   f"(planned from how sparse the objects are; preset: {d.foreground_tiles:g})")
    p.add_argument("--no-augment", action="store_true", help="no elastic/flip/intensity augmentation")
    p.add_argument("--no-weight-map", action="store_true", help="uniform pixel weights")
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE "
                   "epochs without improvement")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="default: one device; mirrored: all GPUs of this host (Keras fit); "
                   "multiworker: hosts listed in TF_CONFIG (custom loop). --batch-size is per "
                   "replica")
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 compute on GPUs (logits and loss stay float32)")
    p.add_argument("--seed", type=int, help=f"random seed ({d.seed})")
    p.add_argument("--axes", choices=("ZYX", "TYX"),
                   help="what a TIFF stack's first axis is: ZYX, a volume (a 3-D net); TYX, "
                   "frames (a 2-D net). Default: the files' OME/ImageJ axes; stacks that do not "
                   "say train a 2-D net over their frames")
    p.add_argument("--voxel-size", metavar="Z,Y,X",
                   help="the volumes' voxel size (implies --axes ZYX; default: their OME-TIFF "
                   "or ImageJ metadata)")


def _add_ignore_label(p):
    p.add_argument("--ignore-label", type=int, metavar="V",
                   help="mask value of pixels nobody annotated (partial annotations): not "
                   "learned, not scored; e.g. the unannotated part of a frame")


def _add_train(subparsers):
    p = _add(subparsers, "train", "train a U-Net on a folder of images and a folder of masks; "
             "without settings, a plan fits it to the data and this machine in a time budget", """
        unet-tf train --images data/images --masks data/masks --out my-model
        unet-tf train --images data/images --masks data/masks --out my-model --time-budget 30m
        unet-tf train --images data/images --masks data/masks --out my-model --filters 32
        unet-tf train --images data/images --masks data/masks --out paper-model --preset paper
        unet-tf train --images imgs --masks class_ids --out m --class-names background,nucleus,mitosis
        unet-tf train --config my-model/config.json --out my-model-again   # the same run
        unet-tf train --images new/images --masks new/masks --out tuned --from my-model
        # killed? the same command resumes from the last completed epoch
        """, _cmd_train)
    paper, edge = PRESETS["paper"], PRESETS["edge"]
    p.add_argument("--images", help="folder of images (TIFF/PNG, 8/16-bit, stacks)")
    p.add_argument("--masks", help="folder of masks with the images' file names (instance or 0/255)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--config", metavar="CONFIG_JSON",
                   help="repeat the run of a model folder's config.json (same settings and steps, "
                   "seeded); options given beside it override its settings")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"fixed settings instead of a plan: paper (depth {paper['depth']}, "
                   f"{paper['filters']} filters, up-conv, {paper['tile_size']}, SGD 0.99, "
                   f"{DEFAULTS.epochs}x{DEFAULTS.steps_per_epoch} steps) or edge (depth "
                   f"{edge['depth']}, {edge['filters']} filters, resize_conv, {edge['tile_size']}: "
                   "int8 / Edge TPU ready); the options below override it")
    _add_train_settings(p)
    p.add_argument("--overwrite", action="store_true", help="replace a finished model folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_plan(subparsers):
    p = _add(subparsers, "plan", "show what `unet-tf train` would choose for this data on this "
             "machine, and why, without training", """
        unet-tf plan --images data/images --masks data/masks
        unet-tf plan --images data/images --masks data/masks --time-budget 30m --filters 32
        """, _cmd_plan)
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--masks", required=True, help="folder of masks (same file names)")
    _add_train_settings(p)
    p.set_defaults(config=None, preset=None, out="model")


# --------------------------------------------------------------------------- predict

def _output_path(out_dir, source):
    suffix = ".tif" if source.suffix.lower() in (".tif", ".tiff") else ".png"
    return Path(out_dir) / f"{source.stem}{suffix}"


def _prediction_inputs(items):
    from .io import IMAGE_SUFFIXES, list_images
    from .omezarr import is_zarr
    inputs = []
    for item in map(Path, items):
        if is_zarr(item):
            inputs.append(item)
        elif item.is_dir():
            inputs.extend(list_images(item, "input"))
        elif not item.is_file():
            raise FileNotFoundError(f"input not found: {item}")
        elif item.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{item}: expected one of {'/'.join(IMAGE_SUFFIXES)} or an "
                             "OME-Zarr (.zarr)")
        else:
            inputs.append(item)
    return inputs


def _planned_outputs(inputs, args):
    """``{labels path: source}``, refusing clashes before any work starts."""
    from .postprocess import prediction_paths
    planned = {}
    for source in inputs:
        labels = _output_path(args.out, source)
        clash = [p for p in prediction_paths(labels, args.probabilities) if p.exists()]
        if clash and not args.overwrite:
            raise FileExistsError(f"{clash[0]} exists (use --overwrite to replace it)")
        if labels in planned:
            raise ValueError(f"{source} and {planned[labels]} would both write {labels}")
        planned[labels] = source
    return planned


def _cmd_predict(args):
    from .io import check_writable
    from .omezarr import is_zarr
    inputs = _prediction_inputs(args.inputs)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    large = str(args.out).endswith(".zarr") or any(is_zarr(item) for item in inputs)
    if large and len(inputs) != 1:
        raise ValueError(f"an OME-Zarr prediction takes one input image, got {len(inputs)}: "
                         "run one command per image, or write TIFF/PNG files to a folder")
    if args.variant and args.runtime != "litert":
        raise ValueError(f"--variant {args.variant} chooses among TFLite exports: add "
                         "--runtime litert")
    spread = bool(args.workers or args.scheduler or args.runtime != "keras")
    if (large or spread) and (args.tile_size or args.batch_size):
        raise ValueError("--tile-size/--batch-size apply to Keras prediction in this process; "
                         "OME-Zarr, --workers, --scheduler and --runtime litert choose their tiles "
                         "per chunk or image (the result is the same for any valid tile)")
    check_writable(Path(args.out).parent if large else args.out)
    from .model_folder import read_config
    volume_net = read_config(args.model).is_volume
    if volume_net and (args.workers or args.scheduler) and not large:
        raise ValueError("a 3-D net spread over --workers/--scheduler writes OME-Zarr: give "
                         "one volume and --out NAME.ome.zarr")
    if large:
        return _predict_large(inputs[0], args, volume_net)
    planned = _planned_outputs(inputs, args)
    if spread and not volume_net:
        return _predict_spread(planned, args)
    from .postprocess import write_prediction
    from .unet import UNet
    from .io import read_frames
    unet = UNet.from_folder(args.model, args.runtime, variant=args.variant)
    if unet.is_volume:
        return _predict_volumes(unet, planned, args)
    batch_size = args.batch_size or BATCH_SIZE
    for labels_path, source in planned.items():
        frames = read_frames(source)
        tiles = sum(unet.tile_count(f.shape, args.tile_size, batch_size) for f in frames)
        bar = _progress_bar(tiles, args.quiet)  # one bar for all frames of a stack
        options = dict(tile_size=args.tile_size, batch_size=batch_size, progress=bar or False)
        results = [unet.predict(frame, **options) for frame in frames]
        masks = [unet.postprocess(r, **_postprocessing(args)) for r in results]
        write_prediction(labels_path, frames, masks, results if args.probabilities else None,
                         args.overwrite)
        print(f"{source} -> {labels_path} ({int(masks[0].max())} objects"
              f"{' in frame 0' if len(masks) > 1 else ''})")


def _predict_volumes(unet, planned, args):
    """A 3-D model: each input a ``ZYX[C]`` volume, its labels a ``ZYX`` TIFF."""
    from .postprocess import write_volume_prediction
    from .volume_files import check_volume_file, read_volume
    if args.tile_size or args.batch_size:
        raise ValueError("a 3-D model chooses its tiles by memory (the result is the same for "
                         "any valid tile): leave --tile-size/--batch-size out")
    for source in planned.values():   # every input checked before the first is predicted
        check_volume_file(source, unet.channels)
    for labels_path, source in planned.items():
        volume = read_volume(source)
        bar = _progress_bar(unet.tile_count(volume.shape[:3], None, 1), args.quiet)
        probabilities = unet.predict(volume, progress=bar or False)
        labels = unet.postprocess(probabilities, **_postprocessing(args))
        write_volume_prediction(labels_path, volume, labels,
                                probabilities if args.probabilities else None, args.overwrite)
        print(f"{source} -> {labels_path} ({int(labels.max())} objects in 3-D)")
    if args.runtime == "litert":
        print(f"runtime: {unet.description}")
        _write_runtime_record(args, planned, unet.description, unet.variant,
                              unet.variant_reason)


def _counter(quiet, unit):
    """``progress(done, total)`` for chunked work: a bar on a terminal, lines in a log."""
    verbose, bars = _progress_verbosity(quiet), []

    def progress(done, total):
        if verbose and not bars:
            from .backend import keras
            bars.append(keras.utils.Progbar(total, unit_name=unit, verbose=verbose))
        if verbose:
            bars[0].update(done)
    return progress


def _predict_large(source, args, volume_net):
    from .chunked import segment_to_zarr
    from .cluster import dask_client
    from .volume_chunked import segment_volume_to_zarr
    if not str(args.out).endswith(".zarr"):
        raise ValueError(f"an OME-Zarr input is written as OME-Zarr: give --out NAME.ome.zarr, "
                         f"got {args.out}")
    chunk = args.chunk
    if volume_net:
        chunk = VOLUME_CHUNK if chunk is None else _size_or_zyx(chunk, "--chunk")
        segment = segment_volume_to_zarr
    else:
        chunk = CHUNK if chunk is None else _number(chunk, int, "--chunk (a 2-D net's side)")
        segment = segment_to_zarr
    with dask_client(args.workers, args.scheduler) as (client, threads):
        summary = segment(args.model, source, args.out, chunk=chunk,
                          probabilities=args.probabilities, runtime=args.runtime,
                          client=client, threads=threads, overwrite=args.overwrite,
                          progress=_counter(args.quiet, "chunk"),
                          postprocessing=_postprocessing(args), variant=args.variant)
    resumed = f", {summary['resumed']} resumed from an earlier run" if summary["resumed"] else ""
    print(f"{source} -> {summary['out']} ({summary['objects']} objects in "
          f"{summary['chunks']} chunks{resumed}; {summary['runtime']})")


def _predict_spread(planned, args):
    from .chunked import predict_files
    from .cluster import dask_client
    with dask_client(args.workers, args.scheduler) as (client, threads):
        results = predict_files(args.model, planned, args.probabilities, args.runtime, client,
                                threads, args.overwrite, _postprocessing(args),
                                _counter(args.quiet, "image"), args.variant)
    for (labels_path, source), objects in zip(planned.items(), results["objects"]):
        print(f"{source} -> {labels_path} ({objects} objects)")
    print(f"runtime: {results['runtime']}")
    if args.runtime == "litert":
        _write_runtime_record(args, planned, results["runtime"], results["variant"],
                              results["variant_reason"])


def _write_runtime_record(args, planned, runtime, variant, reason):
    """``OUT/predict.json``: which export made these labels, and why it was chosen."""
    import json
    from .io import write_atomically
    record = {"model": str(Path(args.model).resolve()), "runtime": runtime,
              "variant": variant, "variant_reason": reason,
              "outputs": {str(labels): str(source) for labels, source in planned.items()}}
    write_atomically(Path(args.out) / "predict.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))


def _add_predict(subparsers):
    p = _add(subparsers, "predict", "segment images of any size with a trained model folder", """
        unet-tf predict my-model cells.tif --out predictions
        unet-tf predict my-model data/new/ --out predictions --probabilities
        unet-tf predict my-model slide.ome.zarr --out slide-labels.ome.zarr --workers 2
        unet-tf predict volume-model stack.ome.zarr --out stack-labels.ome.zarr --workers 2
        unet-tf predict my-model data/new/ --out predictions --runtime litert
        unet-tf predict my-model screen/ --out predictions --scheduler tcp://10.0.0.5:8786
        """, _cmd_predict)
    p.add_argument("model", help="model folder written by `unet-tf train`")
    p.add_argument("inputs", nargs="+", help="image files, folders of images, or one OME-Zarr")
    p.add_argument("--out", required=True, help="folder for label masks (same names as the "
                   "inputs), NAME_overlay.png and NAME_probabilities.tif; or NAME.ome.zarr: "
                   "the image and its labels as OME-Zarr, written chunk by chunk")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    _add_min_size(p)
    p.add_argument("--tile-size", type=int, help="input tile (default: the largest that fits "
                   "memory; the result is the same for any valid tile)")
    p.add_argument("--batch-size", type=int, help=f"tiles per forward pass ({BATCH_SIZE})")
    p.add_argument("--runtime", choices=RUNTIMES, default="keras", help="keras, or litert: a "
                   "TFLite export of the model folder, the fastest on this CPU (int8 where it has "
                   "int8 dot products: AVX-512 VNNI, AVX-VNNI, ARM dotprod; else float32), "
                   "faster than Keras on CPUs (%(default)s)")
    p.add_argument("--variant", choices=VARIANTS, help="with --runtime litert: run this "
                   "export instead of the fastest")
    p.add_argument("--workers", type=int, help="spread chunks or images over N local Dask "
                   "worker processes (sharing this machine's cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask cluster's scheduler, "
                   "e.g. tcp://host:8786 (its workers need unet-tf and the model folder's path)")
    p.add_argument("--chunk", metavar="N|Z,Y,X", help=f"OME-Zarr output: pixels per chunk "
                   f"side ({CHUNK}); a 3-D net: voxels per chunk, Z,Y,X "
                   f"({','.join(map(str, VOLUME_CHUNK))})")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_min_size(p):
    p.add_argument("--min-size", type=int, metavar="PIXELS",
                   help="drop objects smaller than this (default: the model folder's, tuned on "
                   "validation images)")


def _postprocessing(args):
    """Post-processing settings given on the command line (they beat the model folder's)."""
    if args.min_size is None:
        return {}
    if args.min_size < 0:
        raise ValueError(f"--min-size must be >= 0 pixels, got {args.min_size}")
    return {"min_size": args.min_size}


# --------------------------------------------------------------------------- evaluate

def _cmd_evaluate(args):
    import json
    from .io import check_writable, load_pairs, write_atomically
    from .metrics import metrics_table
    from .unet import UNet
    if args.json:
        check_writable(Path(args.json).parent, "--json folder")
    unet = UNet.from_folder(args.model, lazy=True)
    if unet.is_volume:
        from .volume_files import load_volume_pairs
        images, masks, names, _ = load_volume_pairs(args.images, args.masks)
    else:
        images, masks, names = load_pairs(args.images, args.masks)
    rows = unet.evaluate(images, masks, names, progress=_progress_verbosity(args.quiet) == 1,
                         postprocessing=_postprocessing(args), ignore_label=args.ignore_label)
    table, mean = metrics_table(rows)
    print(table)
    if args.json:
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
    _add_ignore_label(p)
    _add_min_size(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- export

def _cmd_export(args):
    import json
    from .exporters import export_model
    from .exporters.edgetpu import export_edgetpu
    args.tile_size = _size_or_zyx(args.tile_size, "--tile-size")
    quiet = stderr_captured() if not args.debug else contextlib.nullcontext()
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
        tile, out = ((meta["tile_size"], meta["output_size"]) if "tile_size" in meta else
                     ("x".join(map(str, meta["tile_shape"])), "x".join(map(str, meta["output_shape"]))))
        print(f"  tile {tile} -> {out} ({meta['tile_choice']}), "
              f"input {meta['input_tensor']['dtype']}, metadata {path.with_suffix('.json')}")
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
    from .exporters.edgetpu import check_tflite
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
        unet-tf export volume-model --format tflite --tile-size 44,92,92   # a 3-D net
        unet-tf export edge-model --format edgetpu      # int8 + op check (+ edgetpu_compiler)
        unet-tf export my-model --format onnx           # needs pip install 'unet-tf[onnx]'
        unet-tf export my-model --format bioimageio     # Fiji/deepImageJ, napari, ilastik
        python export/edge_predict.py my-model/export/model_int8.tflite cells.tif --out masks
        """, _cmd_export)
    p.add_argument("model", help="model folder written by `unet-tf train`")
    p.add_argument("--format", required=True,
                   choices=EXPORT_FORMATS,
                   help="SavedModel (any size, dynamic batch), a TFLite tile model, or the int8 "
                   "one checked (and compiled, if edgetpu_compiler is installed) for the Edge TPU")
    p.add_argument("--tile-size", metavar="T|Z,Y,X", help="TFLite input tile, Z,Y,X for a 3-D "
                   "net (default: the largest whose activations fit 256 MiB, for devices; "
                   "stated in the sidecar)")
    p.add_argument("--calibration-images", metavar="DIR",
                   help="int8: images like the training data (default: the training images)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export")


# --------------------------------------------------------------------------- demo

def _cmd_demo(args):
    from .demo import run_demo
    run_demo(args.out, time_budget=args.time_budget, overwrite=args.overwrite, quiet=args.quiet)


def _add_demo(subparsers):
    p = _add(subparsers, "demo", "train, predict and evaluate on the bundled nuclei sample", """
        unet-tf demo                          # writes ./unet-tf-demo, about 2 minutes on 2 CPU cores
        unet-tf demo --out /tmp/demo --overwrite
        """, _cmd_demo)
    p.add_argument("--out", default="unet-tf-demo", help="folder for data, model and results")
    p.add_argument("--time-budget", default=DEMO_BUDGET, metavar="DURATION",
                   help="training time for the planner (%(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- main

# each command's parser, in the order `unet-tf --help` lists them
COMMANDS = {"demo": _add_demo, "plan": _add_plan, "train": _add_train, "predict": _add_predict,
            "evaluate": _add_evaluate, "export": _add_export, "check-edgetpu": _add_check_edgetpu,
            "sizes": _add_sizes, "summary": _add_summary}


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_formatter,
        description="U-Net segmentation for microscopy: train, predict, evaluate, export.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS.values():
        add(subparsers)
    return parser


def main(argv=None):
    # tifffile logs a warning before it fails on a corrupt file; our error says it in one line.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        code, message = _exit_for(err)
        print(f"{PROG}: {message}", file=sys.stderr)
        return code
    return 0


def _exit_for(err):
    """``(exit code, message)`` for an exception that ended a command (see the module's doc)."""
    if isinstance(err, NothingLearned):
        return EXIT_NOTHING_LEARNED, str(err)
    if isinstance(err, USER_ERRORS):
        return EXIT_USER_ERROR, f"error: {err}"
    return EXIT_INTERNAL, (f"internal error: {type(err).__name__}: {err} (rerun with --debug for "
                           "the traceback, and please report it)")


if __name__ == "__main__":
    sys.exit(main())
