"""Export a pipeline's text encoder, UNet and VAE decoder to ONNX in optimum's Stable Diffusion layout.

Layout of the output folder (what ``optimum.onnxruntime.ORTStableDiffusionPipeline`` and the
pocketdiff runtime both read)::

    model_index.json
    text_encoder/model.onnx  config.json     input_ids[B,77] int32 -> last_hidden_state, pooler_output
    unet/model.onnx          config.json     sample[B,C,h,w], timestep[] float32, encoder_hidden_states[B,77,D]
                                             -> out_sample
    vae_decoder/model.onnx   config.json     latent_sample[B,C,h,w] -> sample[B,3,H,W]
    tokenizer/  scheduler/                   copied from the pipeline

The exporter is ``torch.onnx.export(dynamo=True)``; batch is dynamic (1 without guidance, 2 with
CFG). Models over 2 GB keep their weights in one external-data file beside ``model.onnx``.

Precision fp16 converts the fp32 graph with onnxruntime's ``convert_float_to_float16`` keeping
float32 inputs and outputs; ``int8`` is onnxruntime's quantisation (``export/quantize.py``): static QDQ calibrated on
recorded activations when the export has a calibration, else dynamic (weights only).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnx
import torch

from pocketdiff.export.components import ComponentSpec, component_record, component_specs
from pocketdiff.export.parity import component_parity, parity_level
from pocketdiff.export.quantize import EXTERNAL_DATA_BYTES, Calibration, quantize_onnx
from pocketdiff.export.roles import ROLES
from pocketdiff.pipedir import atomic_output_dir, inspect_pipeline, load_pipeline
from pocketdiff.runtime.sessions import OnnxSession

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("int8",)


def export_component(spec: ComponentSpec, out_dir: Path) -> Path:
    """Export one component to its role's ONNX file under ``out_dir``; returns the path."""
    path = out_dir / ROLES[spec.name].onnx_file
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch_size", min=1, max=64)
    dynamic = tuple({0: batch} if n in spec.batch_inputs else {} for n in spec.input_names)
    spec.module.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            spec.module, spec.example, input_names=list(spec.input_names), output_names=list(spec.output_names),
            dynamic_shapes=dynamic, dynamo=True, verbose=False,
        )
    n_bytes = sum(p.numel() * p.element_size() for p in spec.module.parameters())
    program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_BYTES)
    return path


def _write_configs(pipe, info, out_dir: Path) -> None:
    (out_dir / "unet" / "config.json").write_text(json.dumps(dict(pipe.unet.config), indent=2, default=list))
    (out_dir / "vae_decoder" / "config.json").write_text(json.dumps(dict(pipe.vae.config), indent=2, default=list))
    pipe.text_encoder.config.to_json_file(str(out_dir / "text_encoder" / "config.json"))
    shutil.copytree(info.path / "tokenizer", out_dir / "tokenizer")
    shutil.copytree(info.path / "scheduler", out_dir / "scheduler")
    index = {
        "_class_name": "ORTStableDiffusionPipeline",
        "text_encoder": ["optimum", "ORTTextEncoder"],
        "unet": ["optimum", "ORTUnet"],
        "vae_decoder": ["optimum", "ORTVaeDecoder"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", info.scheduler_config["_class_name"]],
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))


def export_onnx_into(pipe, info, target: Path, progress=None) -> Path:
    """Write the fp32 ONNX folder (layout in the module docstring) into an existing, empty ``target``."""
    for spec in component_specs(pipe):
        log.info("exporting %s to ONNX", spec.name)
        if progress:
            progress(f"onnx: {spec.name}")
        export_component(spec, target)
    _write_configs(pipe, info, target)
    return target


def export_onnx(pipeline_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Export a pipeline folder to an ONNX folder, atomically."""
    info = inspect_pipeline(pipeline_dir)
    pipe = load_pipeline(pipeline_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        export_onnx_into(pipe, info, tmp)
    return Path(out_dir)


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _save(model, path: Path) -> None:
    large = model.ByteSize() > EXTERNAL_DATA_BYTES
    for f in path.parent.iterdir():  # the old external-data file, if any (the model is in memory)
        if f.is_file() and f != path and f.suffix != ".json":
            f.unlink()
    onnx.save(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
              location="model.onnx_data" if large else None)


def _dedupe_and_sort(graph) -> None:
    """Repair two defects of ``convert_float_to_float16`` on dynamo graphs, in place.

    A constant feeding two blocked ops (e.g. the ``scales`` of two ``Resize`` nodes) gets one
    identical Cast per consumer, all with the same name; and input casts are appended after their
    consumers. Drop exact duplicates, then restore topological order.
    """
    seen, unique = set(), []
    for node in graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            unique.append(node)
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], unique
    while pending:
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise RuntimeError(f"fp16 graph has nodes with unresolved inputs: {waiting[0].name}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(path: Path) -> None:
    """Convert an exported fp32 ``model.onnx`` to fp16 in place, keeping float32 I/O.

    The converter's own shape inference serialises the model in memory, which protobuf refuses
    above 2 GB (the SD1.5 UNet); the dynamo exporter already records every value's type, so the
    converter is told to use those instead.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    model16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    _dedupe_and_sort(model16.graph)
    onnx.checker.check_model(model16)
    _save(model16, path)


def export_onnx_target(pipe, info, folder: Path, precision: str, quantization: str | None, progress=None,
                       calibration: Calibration | None = None) -> list[dict]:
    """Write the bundle's ``onnx/`` folder component by component, each checked for parity right after its export
(a parity failure stops at the first bad component, not after them all); return manifest records. ``int8`` is
static for the roles ``calibration`` recorded (``export/quantize.py``), dynamic for the rest."""
    records = []
    for spec in component_specs(pipe):
        log.info("exporting %s to ONNX", spec.name)
        if progress:
            progress(f"onnx: {spec.name}")
        rel = ROLES[spec.name].onnx_file
        path = export_component(spec, folder)
        if precision == "fp16":
            convert_fp16(path)
        quant = quantize_onnx(path, spec.name, calibration) if quantization == "int8" else None
        session = OnnxSession(path)
        level = parity_level(precision, quantization)
        if quant and "calibration" in quant:  # calibrated: checked on the held-out generation's feeds
            batch, feeds = calibration.parity_feeds(spec.name)
            parity = {batch: component_parity(pipe, spec.name, session.run, level, batch, feeds)}
        else:
            parity = {b: component_parity(pipe, spec.name, session.run, level, b) for b in (1, 2)}
        opset = _opset(onnx.load(str(path), load_external_data=False))
        records.append(component_record(
            spec.name, "onnx", f"{folder.name}/{rel}", precision, quantization,
            [i.to_dict() for i in session.inputs], [o.to_dict() for o in session.outputs],
            {f"batch{b}": r for b, r in parity.items()},
            {"opset": opset, "exporter": "torch.onnx.export(dynamo=True)", "layout": "optimum",
             **({"quantization": quant} if quant else {})}))
    _write_configs(pipe, info, folder)
    return records
