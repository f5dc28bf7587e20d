"""Quantise an existing bundle's ONNX components to int8, calibrated on the bundle's own activations.

:func:`quantize_onnx_bundle` is the bundle-to-bundle form of ``export --quantize int8 --calibration N``
(``export/quantize.py``), for a bundle whose pipeline is not at hand (the shipped toy student) or too costly to export
again (an SD1.5 bundle). The source's fp32 ONNX models, on the runtime's own loop and step policy at the manifest's
default steps and guidance, generate the calibration prompts and one held-out prompt; every role's feeds are recorded.
Each ONNX component is then quantised as the exporter does it (static QDQ for the roles the calibration reached, the
text encoder dynamic) and checked against the source's fp32 model (which matches PyTorch to about 1e-6): a calibrated
role on the held-out generation's feeds, a dynamic one on the role's fixed inputs at batch 1 and 2, at export's int8
thresholds (``export/parity.py``).

The new bundle holds the ONNX target only: the tokenizer, the source's test vectors and a manifest whose ONNX
components say how they were quantised (``meta.quantization``) and what their parity is. It is not signed. Peak memory
is one component at a time: the runtime's sessions are freed before quantising, and each reference output is computed
before the quantised model is loaded.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import jsonschema
import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.export.bundle import SCHEMA
from pocketdiff.export.parity import check_parity
from pocketdiff.export.quantize import Calibration, calibration_prompts, quantize_onnx, record_calibration, scheme_for
from pocketdiff.export.roles import ROLES, Dims
from pocketdiff.pipedir import atomic_output_dir
from pocketdiff.runtime.bundle import MANIFEST, load_bundle, sha256_file
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.sessions import OnnxSession

log = logging.getLogger(__name__)
TARGET = "onnx"


def _parity_cases(role: str, calibration: Calibration, dims: Dims) -> dict[int, list[dict]]:
    """batch -> the feeds a component's parity runs on (module docstring)."""
    if scheme_for(role, calibration) == "static":
        batch, feeds = calibration.parity_feeds(role)
        return {batch: feeds}
    return {b: [ROLES[role].fixed_inputs(dims, b)] for b in (1, 2)}


def _run_all(session: OnnxSession, cases: dict[int, list[dict]]) -> dict[int, dict[str, np.ndarray]]:
    """batch -> output name -> the outputs of every case, stacked."""
    outs = {b: [session.run(f) for f in feeds] for b, feeds in cases.items()}
    return {b: {name: np.stack([o[name] for o in runs]) for name in runs[0]} for b, runs in outs.items()}


def quantize_onnx_bundle(src: str | Path, dst: str | Path, calibration: int, seed: int = 0, prompts_file: str = "",
                         overwrite: bool = False, threads: int | None = None, roles: Sequence[str] | None = None
                         ) -> Path:
    """Write ``dst``: ``src``'s ONNX components quantised to int8 on ``calibration`` prompts (module docstring);
    ``roles`` (default: every ONNX component) limits the quantisation to those roles, the others stay fp32."""
    bundle = load_bundle(src)
    if isinstance(calibration, bool) or not isinstance(calibration, int) or calibration < 1:
        raise PocketdiffError(f"calibration must be a prompt count >= 1 to quantise a bundle, got {calibration!r}")
    components = [c for c in bundle.components if c.target == TARGET]
    if not components:
        raise PocketdiffError(f"bundle {src} has no {TARGET} components to quantise")
    unknown = sorted(set(roles or ()) - {c.role for c in components})
    if unknown:
        raise PocketdiffError(f"bundle {src} has no {TARGET} component {unknown[0]!r} to quantise; it has: "
                              f"{', '.join(c.role for c in components)}")
    done = next((c for c in components if c.quantization or c.precision != "fp32"), None)
    if done is not None:
        raise PocketdiffError(f"bundle {src} is not fp32: its {TARGET} {done.role} is {done.precision}"
                              f"{'+' + done.quantization if done.quantization else ''}")
    if Path(dst).exists() and not overwrite:
        raise PocketdiffError(f"output folder {dst} already exists; pass overwrite to replace it")
    m = bundle.manifest
    prompts = calibration_prompts(calibration, seed, prompts_file)
    runtime = RuntimePipeline.from_bundle(src, TARGET, threads)
    calib = record_calibration(runtime, prompts, m["defaults"]["steps"], m["defaults"]["guidance"], seed)
    del runtime  # its sessions hold every fp32 model
    dims = Dims.from_bundle(bundle, TARGET)
    other = tuple(f"{t}/" for t in bundle.targets if t != TARGET)
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        for entry in m["files"]:
            if not entry["path"].startswith(other):
                (tmp / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(bundle.file(entry["path"]), tmp / entry["path"])
        records = []
        for c in components:
            if roles is not None and c.role not in roles:
                records.append(asdict(c))
                continue
            cases = _parity_cases(c.role, calib, dims)
            want = _run_all(OnnxSession(bundle.file(c.path), threads), cases)
            quant = quantize_onnx(tmp / c.path, c.role, calib)
            got = _run_all(OnnxSession(tmp / c.path, threads), cases)
            parity = {f"batch{b}": {name: {**check_parity(f"{c.role}.{name}", ref, got[b][name], "int8").to_dict(),
                                           "batch": b, "reference": "the source bundle's fp32 ONNX model"}
                                    for name, ref in outs.items()} for b, outs in want.items()}
            records.append({**asdict(c), "quantization": "int8", "parity": parity,
                            "meta": {**c.meta, "quantization": quant}})
            log.info("quantised %s (%s)", c.role, quant["scheme"])
        files = [{"path": f.relative_to(tmp).as_posix(), "sha256": sha256_file(f), "bytes": f.stat().st_size}
                 for f in sorted(tmp.rglob("*")) if f.is_file() and f.name != MANIFEST]
        export = {**m.get("export", {}), "targets": [TARGET], "quantize": "int8", "calibration": calibration,
                  "calibration_seed": seed, "calibration_prompts": prompts_file,
                  "quantized_roles": sorted(roles) if roles is not None else [c.role for c in components],
                  "quantized_from": {"bundle": Path(src).name, "manifest_sha256": sha256_file(bundle.path / MANIFEST)}}
        manifest = {**m, "export": export, "components": records, "files": files}
        jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(dst)
