"""Which TFLite export runs fastest here: int8 where the CPU has int8 dot-product instructions,
float32 (XNNPACK) where it has not.

Standard library only: ``export/variants.py`` is a byte copy that the TensorFlow-free runtime
(``export/edge_predict.py``) imports, so a device chooses as ``unet-tf predict --runtime litert``
does. Measured (``benchmarks/bench_export.py``): on a 2-core AVX2 EPYC without VNNI int8 ran at
0.8x float32 per tile; on AVX-512 VNNI 3.3-4.5x. fp16 exports compute in float32 on a CPU (their
weights are widened at load), so they run like float32 and are taken only when no float32 is.
"""

import platform
import sys
from pathlib import Path

VARIANTS = ("int8", "fp16", "float32")
# CPU flags (Linux /proc/cpuinfo names) of int8 dot-product instructions XNNPACK uses.
INT8_DOT_PRODUCT = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                    "asimddp": "ARM dotprod"}


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (lower case): Linux ``flags`` (x86) or ``Features`` (ARM) lines;
    on an Apple-silicon Mac, ``asimddp`` (every one has dotprod); else an empty set."""
    path = Path(cpuinfo)
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return set(value.lower().split())
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return {"asimddp"}
    return set()


def exported_variants(folder):
    """The variants with a ``model_<variant>.tflite`` in export folder ``folder``."""
    return [v for v in VARIANTS if (Path(folder) / f"model_{v}.tflite").is_file()]


def int8_dot_product(flags):
    """The name of the first int8 dot-product instruction set among ``flags``, or ``None``."""
    return next((name for flag, name in INT8_DOT_PRODUCT.items() if flag in flags), None)


def choose_variant(available, flags, requested=None, volume=False):
    """``(variant, reason)``: the export to run among ``available`` (names from
    :data:`VARIANTS`) on a CPU with ``flags``, or the ``requested`` one. ``volume``: the
    exports are a 3-D net's, which has no int8 variant (TFLite has no int8 3-D convolution).

    Raises:
        ValueError: ``requested`` is not a variant, or is not among ``available``; or none is.
    """
    available = [v for v in VARIANTS if v in set(available)]
    if requested is not None:
        if requested not in VARIANTS:
            raise ValueError(f"variant must be one of {'/'.join(VARIANTS)}, got {requested!r}")
        if requested not in available:
            raise ValueError(f"no {requested} export (found: {', '.join(available) or 'none'}):"
                             f" run `unet-tf export MODEL --format "
                             f"{'tflite' if requested == 'float32' else 'tflite-' + requested}`")
        return requested, "asked for"
    if not available:
        raise ValueError("no TFLite export: run `unet-tf export MODEL --format tflite` "
                         "(or tflite-int8) first")
    found = int8_dot_product(flags)
    order = ("int8", "float32", "fp16") if found else ("float32", "fp16", "int8")
    variant = next(v for v in order if v in available)
    if volume:
        return variant, (f"a 3-D net (TFLite has no int8 3-D convolution): {variant}"
                         + (" runs fastest" if variant == "float32" else
                            f"; only {', '.join(available)} exported"))
    if found:
        why = f"this CPU has {found} (int8 dot products)"
    else:
        why = "this CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, ARM dotprod)"
    best = order[0]
    if variant == best:
        return variant, f"{why}: {variant} runs fastest"
    return variant, f"{why}, which favour {best}; only {', '.join(available)} exported"
