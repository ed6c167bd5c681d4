"""Will a ``.tflite`` model map onto the Coral Edge TPU? An op-by-op check, and the compiler.

``edgetpu_compiler`` runs only on x86-64 Debian/Ubuntu and is not installable everywhere, so the
int8 flatbuffer is checked against the Edge TPU's documented requirements and operation table
(kept as data in ``edgetpu_ops.json``, with its source). The compiler maps operations in graph
order up to the first one it cannot map; that one and every later one run on the CPU, so the
report names the first blocker and how much falls back. When ``edgetpu_compiler`` is on PATH,
:func:`compile_model` runs it and its own log is the final word.
"""

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from . import tflite
from .common import NOT_FOR_VOLUMES
from ..model_folder import read_config

OPS_FILE = Path(__file__).with_name("edgetpu_ops.json")
# Activations beyond the ~8 MB on-chip SRAM stream through the host's memory: the default tile
# stays small (about the edge preset's 252 tile, 75 MiB).
EDGETPU_MEMORY = 80 * 2 ** 20
QUANTIZED = ("INT8", "UINT8")


@dataclasses.dataclass
class OpReport:
    index: int
    op: str
    mapped: bool
    why: str = ""


@dataclasses.dataclass
class EdgeTPUReport:
    ops: list
    parameter_bytes: int
    budget_bytes: int
    source: str

    @property
    def unmapped(self):
        return [op for op in self.ops if not op.mapped]

    @property
    def fits_on_chip(self):
        return self.parameter_bytes <= self.budget_bytes

    @property
    def ok(self):
        return not self.unmapped and self.fits_on_chip

    @property
    def advice(self):
        """What to do about it, in a few words."""
        if any("float" in op.why for op in self.unmapped):
            return "export it full-integer (unet-tf export --format tflite-int8)"
        if self.unmapped or not self.fits_on_chip:
            return "use an edge-friendly architecture (unet-tf train --preset edge)"
        return ""

    def table(self):
        """The report as text: one line per op kind and verdict, then the summary."""
        rows = {}
        for op in self.ops:
            key = (op.op, op.mapped, op.why)
            rows[key] = rows.get(key, 0) + 1
        width = max(len(op) for op, _, _ in rows) + 2
        lines = [f"{'operation':{width}s}{'count':>6s}  status"]
        for (op, mapped, why), count in sorted(rows.items(), key=lambda r: (r[0][1], r[0][0])):
            status = "mapped" if mapped else f"NOT mapped: {why}"
            lines.append(f"{op:{width}s}{count:6d}  {status}")
        lines.append(f"parameters: {self.parameter_bytes / 2 ** 20:.2f} MiB of the "
                     f"~{self.budget_bytes / 2 ** 20:.0f} MiB on-chip budget"
                     + ("" if self.fits_on_chip else " (too big: streamed from host memory)"))
        if self.unmapped:
            first = self.unmapped[0]
            lines.append(f"first unmapped op: #{first.index} {first.op}; it and the "
                         f"{len(self.ops) - first.index - 1} ops after it would run on the CPU")
        lines.append(f"verdict: {'fully mappable' if self.ok else 'NOT fully mappable'} "
                     f"(checked against {self.source})")
        return "\n".join(lines)


def _rules():
    return json.loads(OPS_FILE.read_text())


def _names(enum):
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


def check_tflite(model):
    """Check a ``.tflite`` (path or bytes) against the Edge TPU's requirements.

    Returns an :class:`EdgeTPUReport`: per op whether it maps and why not, and the int8
    parameter bytes against the on-chip budget.
    """
    from ai_edge_litert import schema_py_generated as schema
    name = "model bytes"
    if isinstance(model, (str, Path)):
        name = str(model)
        if not Path(model).is_file():
            raise FileNotFoundError(f"TFLite file not found: {model}")
        model = Path(model).read_bytes()
    data = bytes(model)
    if data[4:8] != b"TFL3":  # the flatbuffer file identifier of every .tflite
        raise ValueError(f"{name} is not a TFLite model (no TFL3 identifier)")
    try:
        flat = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as err:  # the flatbuffer reader raises assorted errors on garbage
        raise ValueError(f"{name} is not a readable TFLite model: {err}") from None
    rules = _rules()
    op_names, type_names = _names(schema.BuiltinOperator), _names(schema.TensorType)
    graph = flat.subgraphs[0]
    tensors, buffers = graph.tensors, flat.buffers

    def constant_data(tensor):
        data = buffers[tensor.buffer].data
        return None if data is None or len(data) == 0 else np.asarray(data)

    reports = []
    for index, operator in enumerate(graph.operators):
        code = flat.operatorCodes[operator.opcodeIndex]
        name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        reports.append(OpReport(index, name, *_op_verdict(
            name, operator, tensors, constant_data, type_names, rules, len(flat.subgraphs))))
    parameter_bytes = sum(
        len(buffers[t.buffer].data) for t in tensors
        if buffers[t.buffer].data is not None and len(buffers[t.buffer].data))
    return EdgeTPUReport(reports, parameter_bytes, rules["on_chip_parameter_budget_bytes"],
                         rules["source"])


def _op_verdict(name, operator, tensors, constant_data, type_names, rules, subgraphs):
    """``(mapped, why)`` for one operator; ``why`` names every reason, not just the first."""
    if subgraphs > 1:
        return False, "more than one subgraph is not supported"
    if name not in rules["operations"]:
        return False, "not in the Edge TPU operation table"
    reasons = []
    for tensor in [tensors[i] for i in [*operator.inputs, *operator.outputs] if i >= 0]:
        kind = type_names.get(tensor.type, str(tensor.type))
        is_constant = tensor.buffer > 0 and constant_data(tensor) is not None
        if kind not in QUANTIZED and not (kind == "INT32" and is_constant) and name != "QUANTIZE":
            reasons.append(f"{kind.lower()} tensors: the Edge TPU runs int8/uint8 only")
        signature = tensor.shapeSignature
        if signature is not None and any(int(s) < 0 for s in signature):
            reasons.append("dynamic shapes: sizes must be fixed at compile time")
        shape = [int(s) for s in (tensor.shape if tensor.shape is not None else [])]
        if not is_constant and len(shape) > 3 and any(s > 1 for s in shape[:-3]):
            reasons.append("only the 3 innermost dimensions may exceed 1 (batch must be 1)")
    options = operator.builtinOptions
    if name == "STRIDED_SLICE":
        strides = constant_data(tensors[operator.inputs[3]])
        if strides is None or np.any(strides.view(np.int32) != 1):
            reasons.append("strides must all be 1")
        if options.ellipsisMask or options.newAxisMask:
            reasons.append("ellipsis/new-axis masks must be 0")
    problem = rules["known_problems"].get(name, {})
    if "half_pixel_centers" in problem and getattr(options, "halfPixelCenters", False):
        reasons.append(problem["why"])
    if "stride" in problem and getattr(options, "strideH", 1) == problem["stride"]:
        reasons.append(problem["why"])
    reasons = list(dict.fromkeys(reasons))  # once each, in the order found
    return not reasons, "; ".join(reasons)


def compile_model(tflite_path, out_dir):
    """Run ``edgetpu_compiler`` if it is on PATH: ``(output path, log)``, or ``None``."""
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        return None
    result = subprocess.run([compiler, "--show_operations", "--out_dir", str(out_dir),
                             str(tflite_path)], capture_output=True, text=True)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"edgetpu_compiler failed on {tflite_path}:\n{log}")
    return Path(out_dir) / f"{Path(tflite_path).stem}_edgetpu.tflite", log


@dataclasses.dataclass
class EdgeTPUExport:
    model: Path        # the full-integer model that was checked
    report: EdgeTPUReport
    compiled: Path | None = None   # NAME_edgetpu.tflite, when edgetpu_compiler is on PATH
    compiler_log: str | None = None


def export_edgetpu(model_dir, tile_size=None, calibration_images=None, overwrite=False):
    """The int8 TFLite export, checked op by op against the Edge TPU's requirements and,
    when ``edgetpu_compiler`` is on PATH, compiled (``export/model_int8_edgetpu.tflite``).

    An existing int8 export of the same tile size is checked as it is unless ``overwrite``.
    A 3-D net is refused (``ValueError``): the chip has no 3-D convolution.
    """
    if read_config(model_dir).is_volume:
        raise ValueError(f"{model_dir} is a 3-D net, which cannot run on the Edge TPU: "
                         f"{NOT_FOR_VOLUMES['edgetpu']}")
    target = tflite.tflite_path(model_dir, "int8")
    sidecar = target.with_suffix(".json")
    if target.exists() and sidecar.exists() and not overwrite:
        exported = json.loads(sidecar.read_text())["tile_size"]
        if tile_size not in (None, exported):
            raise FileExistsError(f"{target} was exported with tile {exported}, not {tile_size} "
                                  "(use --overwrite / overwrite=True to export it again)")
    else:
        tflite.export(model_dir, "int8", tile_size, calibration_images, overwrite,
                      device_memory=EDGETPU_MEMORY)
    report = check_tflite(target)
    compiled = compile_model(target, target.parent)
    return EdgeTPUExport(target, report, *(compiled or (None, None)))
