"""int8 quantisation of exported components, calibrated on real activations.

``ExportConfig(quantize="int8", calibration=N)`` selects it: ``N`` calibration prompts (0 keeps onnxruntime's
dynamic, weights-only int8). Calibration is the pipeline's own sampler at work: the runtime's loop on the
PyTorch modules (``export/torch_session.py``) generates the ``N`` prompts (:func:`calibration_prompts`) at the
bundle's steps and guidance, and every feed each role receives is recorded (:func:`record_calibration`). A role
gets one sample per call: the UNet one per step (at the step policy's batch), the decoder one per prompt. One more
prompt is generated and held out: a calibrated component's parity is checked on its feeds (static int8 is accurate on
the activation ranges it was calibrated for; the fixed Gaussian parity inputs can sit at another scale, e.g. a
decoder's latents divided by the VAE scaling factor).

The scheme per role (:func:`scheme_for`), recorded in each component's ``meta.quantization``:

- **static**, for every role the calibration reached except the text encoder:
  - onnx (:func:`quantize_onnx_static`): QDQ from ``onnxruntime.quantization.quantize_static``. uint8
    activations, per tensor, with MinMax ranges over the samples; int8 weights per output channel. Only
    ``Conv``, ``MatMul`` and ``Gemm`` are quantised: norms, softmax and elementwise ops stay float (quantising the
    residual adds and the SiLU products costs far more accuracy than it saves time). The weights use the 7-bit
    range (``reduce_range``): onnxruntime's x86 uint8 x int8 kernels add pairs of products in int16, which
    saturates with full-range weights (the graph itself, run unfused, is as accurate either way).
  - executorch (:func:`pt2e_program`): PT2E with XNNPACK's quantizer, symmetric int8 (per-channel weights,
    per-tensor activations from a histogram observer), on convolutions and linear layers only, for the same
    reason; ``prepare_pt2e`` -> the samples -> ``convert_pt2e`` -> ``torch.export`` again.
- **dynamic**, for the text encoder (its input is token ids and it runs once per image) and any role no
  calibration call reached: onnxruntime's ``quantize_dynamic`` (int8 weights, activations quantised per call),
  and XNNPACK's dynamic config (int8 per-channel weights of the linear layers, activations per call).

Memory: onnxruntime calibrates in chunks of :data:`CALIBRATION_CHUNK` samples (its ``CalibMaxIntermediateOutputs``
option drops the ranges of every full chunk instead of merging them), so the held intermediate outputs stay
bounded whatever the sample count; models over 2 GB go through external-data files.
"""

from __future__ import annotations

import collections
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import torch

from pocketdiff import noise
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.sessions import Session
from pocketdiff.toyworld.world import batch

log = logging.getLogger(__name__)
EXTERNAL_DATA_BYTES = 2 * 1024**3
STATIC_OPS = ("Conv", "MatMul", "Gemm")  # onnx op types whose inputs, weights and outputs go to int8
PT2E_OPS = ("conv1d", "conv2d", "convolution", "linear", "relu")  # aten ops the XNNPACK quantizer may annotate
# (a relu only as part of a conv + relu pattern: the quantizer has no pattern of a relu alone)
DYNAMIC_ROLES = ("text_encoder",)  # never calibrated: dynamic int8 whatever the calibration
CALIBRATION_CHUNK = 16  # samples per onnxruntime calibration pass
_ORT_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT32: np.int32,
               onnx.TensorProto.INT64: np.int64, onnx.TensorProto.FLOAT16: np.float16}


@dataclass
class Calibration:
    """The feeds every role received while the pipeline's sampler generated the calibration prompts, and those
    of the held-out prompts (parity)."""

    prompts: tuple[str, ...]
    seed: int  # prompt i used seed + i
    steps: int
    guidance: float
    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    held_out: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    held_out_prompts: tuple[str, ...] = ()

    def samples(self, role: str) -> list[dict[str, np.ndarray]]:
        return self.feeds.get(role, [])

    def parity_feeds(self, role: str) -> tuple[int, list[dict[str, np.ndarray]]]:
        """(batch, feeds) of ``role`` in the held-out generations: a calibrated component's parity inputs."""
        feeds = self.held_out.get(role, [])
        if not feeds:
            raise PocketdiffError(f"the calibration holds no held-out feeds of {role}")
        first = next(iter(feeds[0].values()))
        return (int(np.shape(first)[0]) if np.ndim(first) else 1), feeds

    def record(self, role: str) -> dict:
        """What the manifest says of the calibration of ``role``."""
        return {"prompts": len(self.prompts), "seed": self.seed, "steps": self.steps, "guidance": self.guidance,
                "samples": len(self.samples(role)), "parity": {"held_out_prompts": len(self.held_out_prompts),
                                                               "samples": len(self.held_out.get(role, []))}}


def calibration_prompts(n: int, seed: int = 0, prompts_file: str = "") -> list[str]:
    """``n`` calibration prompts and one held out (``n + 1`` in all): the first ``n + 1`` lines of ``prompts_file``
    (one prompt a line), or else ``n + 1`` captions of the toy world's training split drawn from ``seed`` (plain
    English scene descriptions that any Stable Diffusion tokenizer takes)."""
    if n < 0:
        raise PocketdiffError(f"calibration must be a prompt count >= 0, got {n}")
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise PocketdiffError(f"calibration prompts file {prompts_file} does not exist")
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        if len(lines) < n + 1:
            raise PocketdiffError(f"calibration prompts file {prompts_file} has {len(lines)} prompts; calibration "
                                  f"{n} needs {n + 1} (the last one is held out for parity)")
        return lines[:n + 1]
    return [s.caption for s in batch(seed, n + 1, "train")]


class _Recorder:
    """A session that passes every call through and keeps a copy of its feeds."""

    def __init__(self, inner: Session, into: list):
        self.inner, self.into = inner, into
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.fixed_batch = getattr(inner, "fixed_batch", None)
        self.path = getattr(inner, "path", "")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.into.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run(feeds)


def record_calibration(runtime: RuntimePipeline, prompts: Sequence[str], steps: int, guidance: float,
                       seed: int = 0, held_out: int = 1) -> Calibration:
    """Generate every prompt (prompt i at seed + i) with ``runtime``'s own loop and policy, recording each role's
    feeds; the last ``held_out`` prompts' feeds are kept apart (parity). ``steps`` is overridden by a policy that
    runs a fixed count (a DDSM schedule)."""
    if len(prompts) <= held_out:
        raise PocketdiffError(f"calibration needs more than {held_out} prompts ({held_out} held out), "
                              f"got {len(prompts)}")
    steps = runtime.policy.fixed_steps() or steps
    parts: list[dict[str, list]] = [{role: [] for role in runtime.sessions} for _ in range(2)]
    for i, prompt in enumerate(prompts):
        feeds = parts[i >= len(prompts) - held_out]
        recording = runtime.with_sessions({r: _Recorder(s, feeds[r]) for r, s in runtime.sessions.items()})
        recording.generate(prompt, steps=steps, guidance=guidance, seed=seed + i, truncate=True)
    calibrate, held = ({r: f for r, f in part.items() if f} for part in parts)
    log.info("calibration: %d prompts + %d held out; samples %s", len(prompts) - held_out, held_out,
             {r: len(f) for r, f in calibrate.items()})
    return Calibration(tuple(prompts[:-held_out]), seed, steps, guidance, calibrate, held,
                       tuple(prompts[-held_out:]))


def scheme_for(role: str, calibration: Calibration | None) -> str:
    """``static`` (calibrated activations) or ``dynamic`` (weights only, activations quantised per call)."""
    static = calibration is not None and role not in DYNAMIC_ROLES and calibration.samples(role)
    return "static" if static else "dynamic"


# ---- onnxruntime -------------------------------------------------------------------------------------------------


class FeedReader:
    """An onnxruntime ``CalibrationDataReader`` (it checks for ``get_next`` only) over recorded feeds, cast to the
    graph's input dtypes; ``set_range`` and ``len`` let a caller feed it in chunks."""

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]], input_types: Mapping[str, type]):
        self.samples, self.types = list(samples), dict(input_types)
        self.start, self.end, self.served = 0, len(self.samples), 0
        self.position = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.position = start_index, min(end_index, len(self.samples)), start_index

    def get_next(self) -> dict | None:
        if self.position >= self.end:
            return None
        feeds = self.samples[self.position]
        self.position += 1
        self.served += 1
        missing = sorted(set(self.types) - set(feeds))
        if missing:
            raise PocketdiffError(f"calibration sample {self.position - 1} lacks inputs {missing}")
        return {name: np.array(feeds[name], dtype=dtype) for name, dtype in self.types.items()}  # (0-d stays 0-d)


def onnx_input_types(path: Path) -> dict[str, type]:
    """Graph input name -> numpy dtype (the weights are not read)."""
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return {i.name: _ORT_DTYPES[i.type.tensor_type.elem_type] for i in model.graph.input if i.name not in init}


def _model_bytes(path: Path) -> int:
    """The model file and the external-data files beside it."""
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file() and f.suffix != ".json")


def _plain_copy(path: Path, folder: Path) -> tuple[Path, bool]:
    """``path`` saved under ``folder`` without its recorded value infos (dynamo's recorded shapes trip the
    quantiser's shape inference); returns the copy and whether it needs external data."""
    large = _model_bytes(path) > EXTERNAL_DATA_BYTES
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    plain = folder / "fp32.onnx"
    onnx.save(model, str(plain), save_as_external_data=large, all_tensors_to_one_file=True,
              location="fp32.onnx_data" if large else None)
    return plain, large


def _replace(path: Path, quantized: Path, large: bool) -> None:
    """Write the quantised model over ``path`` (one external-data file beside it when large)."""
    for f in path.parent.iterdir():  # the old external-data file, if any
        if f.is_file() and f != path and f.suffix != ".json":
            f.unlink()
    model = onnx.load(str(quantized))
    onnx.save(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
              location="model.onnx_data" if large else None)


def calibrate_onnx(model_path: Path, samples: Sequence[Mapping[str, np.ndarray]], work: Path,
                   op_types: Sequence[str] = STATIC_OPS, chunk: int = CALIBRATION_CHUNK, large: bool = False):
    """MinMax activation ranges (``onnxruntime.quantization.TensorsData``) of ``op_types``' float inputs and outputs
    over ``samples``, run ``chunk`` samples at a time (each chunk's ranges merged into the running ones)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if not samples:
        raise PocketdiffError(f"no calibration samples for {model_path}")
    calibrator = create_calibrator(model_path, list(op_types), augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
                                   providers=["CPUExecutionProvider"])
    del calibrator.model.graph.initializer[:]  # the session has the weights; its copy of the model needs none
    reader = FeedReader(samples, onnx_input_types(model_path))
    for start in range(0, len(reader), chunk):
        reader.set_range(start, start + chunk)
        calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    del calibrator
    if reader.served != len(samples):
        raise PocketdiffError(f"calibration fed {reader.served} of {len(samples)} samples to {model_path}")
    return ranges


def quantize_onnx_static(path: Path, samples: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """Quantise ``model.onnx`` in place to QDQ int8 calibrated on ``samples`` (module docstring); returns
    the manifest's description of what was done."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="quant-", dir=path.parent.parent) as tmp:
        work = Path(tmp)
        plain, large = _plain_copy(path, work)
        ranges = calibrate_onnx(plain, samples, work, large=large)
        cache = work / "ranges.json"
        save_tensors_data(ranges, cache)
        out = work / "int8.onnx"
        with noise.native_stderr():
            quantize_static(plain, out, None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OPS),
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, use_external_data_format=large,
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=cache)
        _replace(path, out, large)
    return {"scheme": "qdq-static", "tool": "onnxruntime.quantization.quantize_static",
            "activations": "uint8 per tensor, asymmetric (MinMax over the calibration samples)",
            "weights": "int8 per output channel, symmetric, 7-bit range (reduce_range)",
            "ops": quantized_op_counts(path), "float_op_types": "every op type but Conv, MatMul, Gemm",
            "calibrated_tensors": len(ranges.data)}


def quantize_onnx_dynamic(path: Path) -> dict:
    """Quantise ``model.onnx``'s weights to int8 in place (dynamic quantisation, activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="quant-", dir=path.parent.parent) as tmp:
        plain, large = _plain_copy(path, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(plain, out, weight_type=QuantType.QInt8, use_external_data_format=large)
        _replace(path, out, large)
    return {"scheme": "dynamic", "tool": "onnxruntime.quantization.quantize_dynamic",
            "activations": "uint8, quantised per call", "weights": "int8 per tensor"}


def quantized_op_counts(path: Path) -> dict[str, dict[str, int]]:
    """Of the :data:`STATIC_OPS` nodes in the QDQ graph at ``path``: how many per op type run in int8 (every float
    input dequantised: onnxruntime fuses them into integer kernels) and how many stay float (e.g. attention's
    activation x activation ``MatMul``, which the quantiser leaves alone)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: dict[str, collections.Counter] = {"int8": collections.Counter(), "float": collections.Counter()}
    for n in graph.node:
        if n.op_type in STATIC_OPS:
            quantized = all(i in dq for i in n.input[:2])  # data and weight (a bias is int32, dequantised too)
            counts["int8" if quantized else "float"][n.op_type] += 1
    return {k: dict(sorted(v.items())) for k, v in counts.items()}


def quantize_onnx(path: Path, role: str, calibration: Calibration | None) -> dict:
    """int8 for one exported role: static with ``calibration``'s samples of ``role``, else dynamic; returns the
    manifest's ``meta.quantization``."""
    if scheme_for(role, calibration) == "static":
        log.info("quantising %s: static QDQ on %d calibration samples", role, len(calibration.samples(role)))
        return {**quantize_onnx_static(path, calibration.samples(role)), "calibration": calibration.record(role)}
    return quantize_onnx_dynamic(path)


# ---- ExecuTorch (PT2E, XNNPACK) ----------------------------------------------------------------------------------


def torch_samples(samples: Sequence[Mapping[str, np.ndarray]], names: Sequence[str],
                  example: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Recorded feeds as positional arguments like ``example`` (same dtypes); samples of another shape than
    the static example's (another batch) are refused."""
    out = []
    for i, feeds in enumerate(samples):
        args = tuple(torch.from_numpy(np.array(feeds[n])).to(x.dtype) for n, x in zip(names, example))
        bad = [(n, tuple(a.shape), tuple(x.shape)) for n, a, x in zip(names, args, example) if a.shape != x.shape]
        if bad:
            name, got, want = bad[0]
            raise PocketdiffError(f"calibration sample {i} has {name} of shape {got}; the program is exported at "
                                  f"{want}")
        out.append(args)
    return out


def _pt2e_filter(node) -> bool:
    """The quantizer's node filter: conv and linear patterns (their weight and bias nodes pass), nothing else."""
    if node.op != "call_function":
        return True
    return getattr(getattr(node.target, "overloadpacket", None), "__name__", "") in PT2E_OPS


def pt2e_program(module: torch.nn.Module, example: tuple, samples: Sequence[tuple] | None):
    """``module`` exported with XNNPACK int8 (PT2E): static, observed on ``samples`` (positional argument
    tuples), or dynamic when ``samples`` is None. Returns the quantised ``torch.export.ExportedProgram``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if samples is not None and not samples:
        raise PocketdiffError("static PT2E quantisation needs at least one calibration sample")
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=samples is None)
    quantizer = XNNPACKQuantizer().set_global(config).set_filter_function(_pt2e_filter)
    with torch.no_grad():
        graph = torch.export.export(module.eval(), example).module()
        prepared = prepare_pt2e(graph, quantizer)
        for args in samples or [example]:
            prepared(*args)
        return torch.export.export(convert_pt2e(prepared), example)


def pt2e_meta(scheme: str, calibration: Calibration | None, role: str) -> dict:
    """The manifest's ``meta.quantization`` of an ExecuTorch program quantised by :func:`pt2e_program`."""
    base = {"tool": "torchao.quantization.pt2e + executorch XNNPACKQuantizer", "ops": list(PT2E_OPS),
            "weights": "int8 per output channel, symmetric"}
    if scheme == "static":
        return {**base, "scheme": "pt2e-static", "activations": "int8 per tensor (histogram observer)",
                "calibration": calibration.record(role)}
    return {**base, "scheme": "pt2e-dynamic", "activations": "int8, quantised per call (linear layers only)"}
