"""The runtime's golden images: fixed bundles, prompts and seeds (``scripts/record_runtime_golden.py``
records them; ``tests/test_runtime_golden.py`` checks the runtime still draws them pixel for pixel).

Only the runtime's public API is used (``RuntimePipeline.from_bundle(...).generate(...)``), so the same
cases run on the code before and after a refactor of the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketdiff.toyworld import TOY_TEACHER_DIR

PROMPTS = ("a small red circle in the top left on a grey background",
           "a green diamond left of an orange ring",
           "a large red triangle in the center on a grey background")
SEEDS = (0, 7)
STUDENT = Path(TOY_TEACHER_DIR) / "student"
TEACHER_STEPS = 20


@dataclass(frozen=True)
class Case:
    bundle: str  # "student", "teacher" or "embedded"
    backend: str
    steps: int | None  # None: the bundle's pinned steps
    guidance: float | None  # None: the bundle's pinned guidance
    scheduler: str | None = None

    @property
    def key(self) -> str:
        return f"{self.bundle}-{self.backend}-{self.steps}-{self.guidance}-{self.scheduler}"


CASES = (
    Case("student", "onnx", None, None),
    Case("student", "executorch", None, None),
    Case("teacher", "onnx", TEACHER_STEPS, 2.0),  # the teacher's own PNDM, CFG
    Case("teacher", "onnx", TEACHER_STEPS, 2.0, "ddim"),
    Case("teacher", "onnx", TEACHER_STEPS, 1.0, "ddim"),  # one pass, no CFG
    Case("embedded", "onnx", 6, 3.0),  # a guidance-embedded UNet: one pass with timestep_cond
)


def golden_embedded_pipeline(out: Path) -> Path:
    """The tiny architecture (seed 0) with a 32-wide ``time_cond_proj_dim`` input, its projection drawn from
    a seeded generator (non-zero, so the w embedding changes the output), saved as a pipeline folder."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from pocketdiff.architectures.factory import build_pipeline
    from pocketdiff.pipedir import StageRecord, write_pipeline

    pipe = build_pipeline("tiny", seed=0)
    config = {k: v for k, v in pipe.unet.config.items() if k != "_use_default_values"}  # (it lists the field)
    unet = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": 32})
    unet.load_state_dict(pipe.unet.state_dict(), strict=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = unet.time_embedding.cond_proj.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    pipe = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    return write_pipeline(pipe, out, [StageRecord("create", {"arch": "tiny", "seed": 0, "golden": "embedded"})])


def export_golden_bundles(tmp: Path) -> dict[str, Path]:
    """bundle name -> folder: the shipped student as it is; the toy teacher and the embedded tiny pipeline
    exported to ONNX bundles."""
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    teacher = write_bundle(Path(TOY_TEACHER_DIR) / "pipeline", tmp / "teacher",
                           ExportConfig(targets=("onnx",), steps=TEACHER_STEPS, guidance=2.0))
    embedded = write_bundle(golden_embedded_pipeline(tmp / "embedded_pipeline"), tmp / "embedded",
                            ExportConfig(targets=("onnx",), steps=6, guidance=3.0))
    return {"student": STUDENT, "teacher": teacher, "embedded": embedded}


def run_case(case: Case, bundles: dict[str, Path]) -> np.ndarray:
    """uint8 [len(PROMPTS) * len(SEEDS), H, W, 3]: every prompt at every seed."""
    import json

    from pocketdiff.runtime.sampler import RuntimePipeline

    path = bundles[case.bundle]
    pinned = json.loads((path / "manifest.json").read_text())["defaults"]
    steps = pinned["steps"] if case.steps is None else case.steps
    guidance = pinned["guidance"] if case.guidance is None else case.guidance
    rt = RuntimePipeline.from_bundle(path, backend=case.backend, threads=2)
    return np.stack([rt.generate(p, steps=steps, guidance=guidance, seed=s, scheduler=case.scheduler).image
                     for p in PROMPTS for s in SEEDS])
