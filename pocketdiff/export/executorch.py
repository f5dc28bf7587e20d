"""Export the text encoder, UNet and VAE decoder to ExecuTorch ``.pte`` programs, delegated to XNNPACK.

Pipeline per component: ``torch.export.export`` -> ``to_edge_transform_and_lower(partitioner=
[XnnpackPartitioner()])`` -> ``to_executorch()``. Shapes are static, because XNNPACK cannot take
reshapes with a symbolic batch (a dynamic batch leaves every attention reshape on the portable
kernels) and because the apps call each component at one batch anyway:

    executorch/text_encoder.pte  input_ids[1,77] int32      -> last_hidden_state[1,77,D], pooler_output[1,D]
    executorch/unet.pte          sample[U,C,h,w], timestep[], encoder_hidden_states[U,77,D] -> out_sample
    executorch/vae_decoder.pte   latent_sample[1,C,h,w]     -> sample[1,3,H,W]

U is 2 when the bundle's default guidance uses CFG, else 1; the runtime encodes the two prompts
one at a time. Inputs and outputs are float32 at every precision (:class:`CastIO`). Attention and
norms are exported in forms XNNPACK takes (``components.xnnpack_friendly``): the portable group norm
kernel is also imprecise on SD1.5-size activations.

``int8`` quantises through PT2E with XNNPACK's quantizer (``export/quantize.py``): static, observed on the
calibration's recorded feeds, for the roles it recorded (the UNet, the decoder), dynamic for the text encoder;
it needs a calibration and fp32.

The manifest records, per component, how many graph nodes XNNPACK took (``delegated_fraction``) and, at int8,
how it was quantised (``quantization``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from pocketdiff import noise
from pocketdiff.export.components import CastIO, component_record, component_specs, tensor_spec, xnnpack_friendly
from pocketdiff.export.parity import component_parity, parity_level
from pocketdiff.export.quantize import Calibration, pt2e_meta, pt2e_program, scheme_for, torch_samples
from pocketdiff.export.roles import ROLES
from pocketdiff.runtime.sessions import ExecuTorchSession, TensorSpec

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("int8",)  # needs a calibration (static PT2E) and fp32
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
_BOOKKEEPING_OPS = {"getitem", "sym_size"}  # not compute: left out of the delegated fraction


def delegation_summary(edge_program) -> dict:
    """Delegated vs non-delegated compute nodes of a lowered edge program (ExecuTorch's devtools count)."""
    from executorch.devtools.backend_debug.delegation_info import get_delegation_info

    info = get_delegation_info(edge_program.exported_program().graph_module)
    by_op = info.delegation_by_operator
    delegated = sum(b.delegated for op, b in by_op.items() if op not in _BOOKKEEPING_OPS)
    left = {op: b.non_delegated for op, b in by_op.items() if b.non_delegated and op not in _BOOKKEEPING_OPS}
    total = delegated + sum(left.values())
    return {"delegated_subgraphs": info.num_delegated_subgraphs, "delegated_nodes": delegated,
            "non_delegated_nodes": sum(left.values()), "delegated_fraction": round(delegated / max(total, 1), 4),
            "non_delegated_ops": dict(sorted(left.items(), key=lambda kv: -kv[1]))}


def export_program(module: torch.nn.Module, example: tuple, path: Path, int8: str | None = None,
                   samples: list[tuple] | None = None) -> dict:
    """torch.export -> XNNPACK lowering -> ``.pte`` at ``path``; returns the delegation summary. ``int8``:
    ``static`` (PT2E observed on ``samples``, positional argument tuples like ``example``) or ``dynamic``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad(), noise.native_stderr():
        if int8:
            program = pt2e_program(module, example, samples if int8 == "static" else None)
        else:
            program = torch.export.export(module.eval(), example)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        summary = delegation_summary(edge)
        executorch_program = edge.to_executorch()
    path.write_bytes(executorch_program.buffer)
    return summary


def _static_example(spec, batch: int) -> tuple:
    return tuple(x[:1].repeat(batch, *([1] * (x.dim() - 1))) if name in spec.batch_inputs else x
                 for x, name in zip(spec.example, spec.input_names))


def export_executorch_target(pipe, info, folder: Path, precision: str, quantization: str | None, cfg: bool,
                             progress=None, calibration: Calibration | None = None) -> list[dict]:
    """Write ``executorch/<role>.pte`` for every component, check parity, return manifest records. A role that
    runs in the denoising loop is exported at the step batch (2 for two-pass CFG), the others at 1. ``int8``:
    static for the roles ``calibration`` recorded (at that batch), dynamic for the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    exported = []
    with xnnpack_friendly(pipe):
        for spec in component_specs(pipe):
            if progress:
                progress(f"executorch: {spec.name}")
            batch = 2 if cfg and ROLES[spec.name].per_step else 1
            example = _static_example(spec, batch)
            module = spec.module if precision == "fp32" else CastIO(copy.deepcopy(spec.module), _DTYPES[precision])
            path = folder / ROLES[spec.name].executorch_file
            log.info("exporting %s to ExecuTorch (batch %d, %s%s)", spec.name, batch, precision,
                     f", {quantization}" if quantization else "")
            quant, int8, samples = {}, None, None
            if quantization == "int8":
                int8 = scheme_for(spec.name, calibration)
                samples = torch_samples(calibration.samples(spec.name), spec.input_names, example) \
                    if int8 == "static" else None
                quant = {"quantization": pt2e_meta(int8, calibration, spec.name)}
            summary = export_program(module, example, path, int8, samples)
            exported.append((spec, batch, example, path, {**summary, **quant}))
    records = []  # parity against the original modules (outside the rewrite above)
    for spec, batch, example, path, summary in exported:
        with torch.no_grad():
            outs = spec.module(*example)
        outs = outs if isinstance(outs, tuple) else (outs,)
        inputs = [tensor_spec(n, list(x.shape), str(x.dtype).removeprefix("torch."))
                  for n, x in zip(spec.input_names, example)]
        outputs = [tensor_spec(n, list(o.shape), "float32") for n, o in zip(spec.output_names, outs)]
        session = ExecuTorchSession(path, [TensorSpec.from_dict(i) for i in inputs],
                                    [TensorSpec.from_dict(o) for o in outputs])
        level = parity_level(precision, quantization)
        if "calibration" in summary.get("quantization", {}):  # calibrated: on the held-out generation's feeds
            held_batch, feeds = calibration.parity_feeds(spec.name)
            parity = component_parity(pipe, spec.name, session.run, level, held_batch, feeds)
        else:
            parity = component_parity(pipe, spec.name, session.run, level, batch)
        records.append(component_record(
            spec.name, "executorch", f"{folder.name}/{ROLES[spec.name].executorch_file}", precision, quantization, inputs,
            outputs, {f"batch{batch}": parity}, {"partitioner": "XnnpackPartitioner", "static_batch": batch, **summary}))
    return records
