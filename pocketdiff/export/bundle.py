"""Write an app bundle: exported components + ``manifest.json`` + test vectors, atomically.

Layout::

    manifest.json        format_version 1; schema in export/manifest.schema.json (docs/export.md)
    tokenizer/           vocab.json, merges.txt (+ special tokens)
    onnx/                optimum's Stable Diffusion layout              (export/onnx.py)
    coreml/              TextEncoder/Unet/VAEDecoder.mlpackage, vocab.json, merges.txt
                         in apple's Swift StableDiffusion layout         (export/coreml.py)
    executorch/          text_encoder.pte, unet.pte, vae_decoder.pte (XNNPACK) (export/executorch.py)
    test_vectors.json    the app ports' conformance numbers (export/vectors.py, docs/ports.md): token ids, RNG draws,
                         timesteps, scheduler steps, the step policy's trace and a replay of its every call

Every file is listed in ``manifest.files`` with its size and sha256; loaders check them all before
anything is loaded (``runtime/bundle.py``). ``manifest.components`` is a list (role, target, file,
precision, I/O specs, parity), so later stages add their own components without a new format; file
names per role come from the role registry (``export/roles.py``). ``manifest.sampler`` names the step
policy and its params; ``manifest.step_budget`` (a pipeline with a ``step_budget/`` predictor) the step counts,
metrics and presets of ``--steps auto``. The bundle is built in a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import jsonschema

from pocketdiff.architectures.step_budget import attach_step_budget, budget_spec
from pocketdiff.build import Context, Stage
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export import coreml, executorch, onnx
from pocketdiff.export.components import guidance_embed_dim
from pocketdiff.export.torch_session import default_policy, torch_runtime
from pocketdiff.export.vectors import bundle_vectors
from pocketdiff.pinned import pinned_defaults
from pocketdiff.pipedir import atomic_output_dir, inspect_pipeline, load_pipeline, package_versions
from pocketdiff.runtime.bundle import FORMAT_VERSION, MANIFEST, SIGNATURE_FILE, sha256_file
from pocketdiff.runtime.sampler import check_generation_args
from pocketdiff.runtime.schedulers import get_scheduler_entry, scheduler_name_for
from pocketdiff.runtime.signing import sign

log = logging.getLogger(__name__)
SCHEMA = Path(__file__).with_name("manifest.schema.json")
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ExportTarget:
    """One export target: what it supports and the function that writes its folder."""

    name: str
    precisions: tuple[str, ...]
    quantizations: tuple[str, ...]
    # (pipe, info, folder, precision, quantization, cfg, step) -> manifest component records
    export: Callable[..., list[dict]]


def _onnx(pipe, info, folder, precision, quantization, cfg, step):
    return onnx.export_onnx_target(pipe, info, folder, precision, quantization, step)


# The one registry of export targets; the folder in the bundle is the target's name.
TARGETS = {
    "onnx": ExportTarget("onnx", onnx.PRECISIONS, onnx.QUANTIZATIONS, _onnx),
    "coreml": ExportTarget("coreml", coreml.PRECISIONS, coreml.QUANTIZATIONS, coreml.export_coreml_target),
    "executorch": ExportTarget("executorch", executorch.PRECISIONS, executorch.QUANTIZATIONS,
                               executorch.export_executorch_target),
}
PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = tuple(dict.fromkeys(q for t in TARGETS.values() for q in t.quantizations))


@dataclass(frozen=True)
class ExportConfig:
    """What to export. ``guidance`` > 1 means CFG: fixed-batch targets get a batch-2 UNet."""

    targets: tuple[str, ...] = ("onnx",)
    precision: str = "fp32"
    quantize: str | None = None
    steps: int = 25
    guidance: float = 7.5
    scheduler: str | None = None  # runtime scheduler name; default: the pipeline's

    def validate(self) -> "ExportConfig":
        if not self.targets:
            raise PocketdiffError(f"no export target given; allowed: {', '.join(TARGETS)}")
        for t in self.targets:
            if t not in TARGETS:
                raise choice_error("export target", t, TARGETS)
        if len(set(self.targets)) != len(self.targets):
            raise PocketdiffError(f"export targets repeat: {','.join(self.targets)}")
        if self.precision not in PRECISIONS:
            raise choice_error("precision", self.precision, PRECISIONS)
        for t in self.targets:
            if self.precision not in TARGETS[t].precisions:
                raise PocketdiffError(f"precision {self.precision!r} is not supported for target {t!r}; it supports: "
                                      f"{', '.join(TARGETS[t].precisions)}")
        if self.quantize is not None:
            if self.quantize not in QUANTIZATIONS:
                raise choice_error("quantisation", self.quantize, QUANTIZATIONS)
            for t in self.targets:
                if self.quantize not in TARGETS[t].quantizations:
                    allowed = ", ".join(TARGETS[t].quantizations) or "none"
                    raise PocketdiffError(f"quantisation {self.quantize!r} is not supported for target {t!r}; "
                                          f"{t} supports: {allowed}")
        check_generation_args(self.steps, self.guidance)
        if self.scheduler is not None:
            get_scheduler_entry(self.scheduler)
        return self

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0


def write_bundle(pipeline_dir: str | Path, out_dir: str | Path, config: ExportConfig | None = None,
                 overwrite: bool = False, progress: ProgressCallback | None = None, sign_key=None) -> Path:
    """Export ``pipeline_dir`` to an app bundle at ``out_dir`` (layout in the module docstring); with
    ``sign_key`` (an Ed25519 private key) also ``manifest.json.sig``, its signature over the manifest's bytes.

    Every bad input (unknown target/precision/quantisation, a pipeline missing a component, an
    existing ``out_dir`` without ``overwrite``) raises before anything is written; a parity failure
    raises :class:`~pocketdiff.export.parity.ParityError` and leaves no bundle behind.
    """
    config = (config or ExportConfig()).validate()
    info = inspect_pipeline(pipeline_dir)
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output folder {out_dir} already exists; pass --force to replace it")
    entry_name = config.scheduler or scheduler_name_for(info.scheduler_config)
    entry = get_scheduler_entry(entry_name)
    sched_cfg = entry.config_for(info.scheduler_config)
    pipe = attach_step_budget(load_pipeline(pipeline_dir), pipeline_dir)
    policy = default_policy(pipe)
    total, done = 3 * len(config.targets) + 1, 0

    def step(label: str) -> None:  # called before each component: ``done`` components are finished
        nonlocal done
        log.info("%s", label)
        if progress:
            progress(done, total)
        done += 1

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        shutil.copytree(info.tokenizer_dir, tmp / "tokenizer")
        components = []
        unet_batch2 = config.cfg and guidance_embed_dim(pipe.unet) is None  # fixed-batch targets' UNet batch
        for name in config.targets:
            components += TARGETS[name].export(pipe, info, tmp / name, config.precision, config.quantize,
                                               unet_batch2, step)
        step("test vectors")
        vectors = bundle_vectors(torch_runtime(pipe, info.tokenizer_dir, sched_cfg, policy), info.tokenizer_dir,
                                 config.steps, config.guidance)
        (tmp / "test_vectors.json").write_text(json.dumps(vectors, indent=1) + "\n")
        files = [{"path": f.relative_to(tmp).as_posix(), "sha256": sha256_file(f), "bytes": f.stat().st_size}
                 for f in sorted(tmp.rglob("*")) if f.is_file()]
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_by": package_versions(),
            "export": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
            "model": {"image_size": [info.latent_shape[1] * info.vae_scale_factor] * 2,
                      "latent_shape": list(info.latent_shape),
                      "latent_scale_factor": float(info.vae_config.get("scaling_factor", 0.18215))},
            "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt", "max_length": 77},
            "scheduler": {"name": entry_name, "diffusers_class": entry.diffusers_class, "config": sched_cfg,
                          "timesteps": vectors["timesteps"]["values"]},
            "defaults": {"steps": config.steps, "guidance": config.guidance},
            "sampler": policy.to_dict(),
            **({"step_budget": budget_spec(pipe.step_budget).to_dict()} if pipe.step_budget is not None else {}),
            "components": components,
            "files": files,
            "test_vectors": "test_vectors.json",
        }
        jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if sign_key is not None:  # over the exact bytes just written (runtime/signing.py)
            (tmp / SIGNATURE_FILE).write_text(sign((tmp / MANIFEST).read_bytes(), sign_key), encoding="ascii")
        if progress:
            progress(total, total)
    return Path(out_dir)


@dataclass
class ExportStage:
    targets: tuple[str, ...] = ("onnx",)
    precision: str = "fp32"
    quantize: str | None = None
    guidance: float = 7.5  # the bundle's default guidance (> 1: CFG)

    def validate(self) -> "ExportStage":
        ExportConfig(self.targets, self.precision, self.quantize, guidance=self.guidance).validate()
        return self


STUDENT_BUNDLE = "student"
UNDISTILLED_STEPS = 50  # the pinned steps of a student no distill-steps stage made


def student_bundle(ctx: Context) -> Path:
    """Where the export stage writes the student's bundle (the bench, eval and report stages read it)."""
    return ctx.out("export") / STUDENT_BUNDLE


def run_export(ctx: Context, cfg: ExportStage) -> None:
    student = ctx.pipeline_before("export")
    ctx.out("export").mkdir(parents=True, exist_ok=True)
    pinned = pinned_defaults(pipeline=student)  # a student's steps; a DDSM schedule's steps and sampler
    steps = pinned.resolve(None, None, UNDISTILLED_STEPS)[0]
    write_bundle(student, student_bundle(ctx), ExportConfig(cfg.targets, cfg.precision, cfg.quantize, steps,
                                                            cfg.guidance, pinned.scheduler), overwrite=True)


STAGE = Stage("export", ExportStage, run_export)
