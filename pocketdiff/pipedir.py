"""Read, validate and write Stable Diffusion pipeline folders (the diffusers layout) + ``pocketdiff.json``.

A pipeline dir is what ``StableDiffusionPipeline.save_pretrained`` writes: ``model_index.json`` and
``unet/ vae/ text_encoder/ tokenizer/ scheduler/``. pocketdiff adds ``pocketdiff.json``, the stage
history: one record per stage with its name, config, metrics, wall time and package versions.

Validation (:func:`inspect_pipeline`) reads only JSON and safetensors headers, so it is cheap and
runs before any weights load. All writes go to a temporary sibling folder that is renamed into
place at the end (:func:`atomic_output_dir`): a killed writer leaves no half pipeline behind. Under a
multi-process launch only the main process writes (``pocketdiff.distributed``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from pocketdiff.distributed import barrier, is_main_process
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.schedulers import scheduler_name_for

HISTORY_FILE = "pocketdiff.json"
HISTORY_FORMAT = 1
TRAIN_LOG = "log.jsonl"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_CONFIG_FILES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "vocab.json",
    "scheduler": "scheduler_config.json",
}
_WEIGHTED = ("unet", "vae", "text_encoder")
_VERSIONED_PACKAGES = ("pocketdiff", "torch", "diffusers", "transformers", "numpy", "onnxruntime", "safetensors")


@dataclass
class StageRecord:
    """One entry of the stage history in ``pocketdiff.json``."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    versions: dict[str, str] = field(default_factory=lambda: package_versions())
    finished_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


@dataclass
class PipelineInfo:
    """What :func:`inspect_pipeline` learned from a folder without loading weights."""

    path: Path
    unet_config: dict
    vae_config: dict
    text_encoder_config: dict
    scheduler_config: dict
    history: list[StageRecord]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.unet_config["sample_size"]
        return (self.unet_config["in_channels"], s, s)


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in _VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def read_json(path: str | Path):
    """A JSON file's content; a missing, unreadable or invalid file is a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise PocketdiffError(f"cannot read {path}: {exc}") from None


def _check_safetensors(component_dir: Path) -> None:
    """Every ``*.safetensors`` file must open and have a header consistent with its size."""
    from safetensors import safe_open

    files = sorted(component_dir.glob("*.safetensors"))
    if not files:
        raise PocketdiffError(
            f"{component_dir} has no .safetensors weights; pocketdiff reads safetensors only "
            "(re-save the pipeline with save_pretrained(..., safe_serialization=True))"
        )
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for corrupt headers/buffers
            raise PocketdiffError(f"corrupt safetensors file {f}: {exc}") from None


def read_train_log(workdir: str | Path) -> list[dict]:
    """A training job's loss log (``WORKDIR/log.jsonl``, one JSON row per logged step; written by
    ``pocketdiff/loop.py``), or [] if there is none."""
    f = Path(workdir) / TRAIN_LOG
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


def read_history(path: str | Path) -> list[StageRecord]:
    file = Path(path) / HISTORY_FILE
    if not file.is_file():
        return []
    data = read_json(file)
    if data.get("format_version") != HISTORY_FORMAT:
        raise PocketdiffError(
            f"{file} has format_version {data.get('format_version')!r}; this pocketdiff reads {HISTORY_FORMAT}"
        )
    return [StageRecord(**rec) for rec in data.get("stages", [])]


def write_history(path: str | Path, history: list[StageRecord]) -> None:
    data = {"format_version": HISTORY_FORMAT, "stages": [asdict(r) for r in history]}
    (Path(path) / HISTORY_FILE).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def inspect_pipeline(path: str | Path, check_weights: bool = True) -> PipelineInfo:
    """Validate that ``path`` is an SD-compatible text-to-image pipeline folder; read its configs."""
    path = Path(path)
    if not path.exists():
        raise PocketdiffError(f"pipeline folder {path} does not exist")
    if not path.is_dir():
        raise PocketdiffError(f"pipeline path {path} is not a folder")
    if not (path / "model_index.json").is_file():
        raise PocketdiffError(f"{path} is not a diffusers pipeline folder: no model_index.json")
    for comp in COMPONENTS:
        if not (path / comp / _CONFIG_FILES[comp]).is_file():
            raise PocketdiffError(
                f"pipeline folder {path} is missing component {comp!r} (no {comp}/{_CONFIG_FILES[comp]}); "
                f"required components: {', '.join(COMPONENTS)}"
            )
    if not (path / "tokenizer" / "merges.txt").is_file():
        raise PocketdiffError(f"pipeline folder {path} is missing tokenizer/merges.txt")
    unet = read_json(path / "unet" / "config.json")
    vae = read_json(path / "vae" / "config.json")
    text = read_json(path / "text_encoder" / "config.json")
    sched = read_json(path / "scheduler" / "scheduler_config.json")
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise PocketdiffError(
            f"UNet cross_attention_dim {unet.get('cross_attention_dim')} does not match the text encoder "
            f"hidden_size {text.get('hidden_size')} in {path}; they must be equal"
        )
    if vae.get("latent_channels") != unet.get("in_channels"):
        raise PocketdiffError(
            f"VAE latent_channels {vae.get('latent_channels')} does not match UNet in_channels "
            f"{unet.get('in_channels')} in {path}; they must be equal"
        )
    scheduler_name_for(sched)  # raises with the allowed classes if unknown
    if check_weights:
        for comp in _WEIGHTED:
            _check_safetensors(path / comp)
    return PipelineInfo(path, unet, vae, text, sched, read_history(path))


def load_pipeline(path: str | Path):
    """Validate, then load with ``diffusers.StableDiffusionPipeline.from_pretrained`` (offline, fp32)."""
    import torch
    from diffusers import StableDiffusionPipeline

    info = inspect_pipeline(path)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(info.path), safety_checker=None, requires_safety_checker=False, local_files_only=True,
            torch_dtype=torch.float32,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise PocketdiffError(f"cannot load pipeline {info.path}: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to ``out_dir``, on error delete it.

    An existing ``out_dir`` is an error unless ``overwrite``; then it is replaced only after the new
    folder is complete.
    """
    out_dir = Path(out_dir)
    if not is_main_process():  # only the main process writes (pocketdiff.distributed)
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="pocketdiff-rank-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    if out_dir.exists() and not overwrite:
        raise PocketdiffError(f"output folder {out_dir} already exists; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


@contextlib.contextmanager
def atomic_output_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; ``os.replace`` it onto ``path`` only if the block succeeds."""
    path = Path(path)
    if not is_main_process():  # only the main process writes (pocketdiff.distributed)
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="pocketdiff-rank-"))
        try:
            yield scratch / path.name
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def start_stage(out_dir: str | Path, workdir: str | Path, overwrite: bool = False) -> Path:
    """Before a stage does any work: refuse an existing ``out_dir`` unless ``overwrite``; create and return
    ``workdir``."""
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def write_pipeline(pipe, out_dir: str | Path, history: list[StageRecord], overwrite: bool = False) -> Path:
    """Save a diffusers pipeline plus ``pocketdiff.json`` atomically. Returns ``out_dir``.

    Under a multi-process launch every process calls it (the training stages do): the main process
    writes, and all return once the folder is in place, so any of them may read it next."""
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        write_history(tmp, history)
    barrier()
    return Path(out_dir)
