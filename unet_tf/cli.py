"""The ``unet-tf`` command line.

Exit codes: 0 success, 2 the user's input is wrong (one line on stderr, no traceback unless
``--debug``), 1 an internal failure.
"""

import argparse
import os
import sys
import tempfile
import textwrap

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


def _add_architecture_args(p):
    p.add_argument("--depth", type=int, default=5, help="resolution levels (default 5, the paper)")
    p.add_argument("--upsampling", choices=("transpose", "resize_conv"), default="transpose",
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


# --------------------------------------------------------------------------- main

def _import_tensorflow_quietly():
    """Import TensorFlow with its C++ start-up lines (oneDNN, absl) kept off the user's stderr.

    TF_CPP_MIN_LOG_LEVEL does not silence them in TF 2.21; what was written is replayed if the
    import fails, so a broken installation is still explained.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_formatter,
        description="U-Net segmentation for microscopy: train, predict, evaluate, export.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_sizes, _add_summary):
        add(subparsers)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    args = build_parser().parse_args(argv)
    if not args.debug:
        _import_tensorflow_quietly()
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
            PermissionError) as err:
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
