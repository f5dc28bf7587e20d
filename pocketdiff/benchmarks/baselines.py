"""The optimum baseline: optimum's ``ORTStableDiffusionPipeline`` on optimum's own ONNX export.

What a user would otherwise run on CPU is ``optimum-cli export onnx`` followed by
``ORTStableDiffusionPipeline``. :func:`optimum_export` runs optimum's exporter (``main_export``,
task ``text-to-image``) on a pipeline folder once and caches the result under
``<cache>/<folder name>-<fingerprint>``; the fingerprint covers the folder's configs and the size and
mtime of its weight files, so an edited pipeline is exported again. :func:`optimum_component_call`
loads the pipeline with a session per component and calls one component the way the pipeline's
``__call__`` does. (The diffusers eager baseline needs no code of its own: the ``torch`` side of
``bench compare`` is ``StableDiffusionPipeline.from_pretrained``.)
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import atomic_output_dir, inspect_pipeline

logger = logging.getLogger(__name__)


def _fingerprint(pipeline_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(pipeline_dir.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(pipeline_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


def optimum_export(pipeline_dir: str | Path, cache_dir: str | Path = "build/bench/optimum") -> Path:
    """optimum's ONNX export of ``pipeline_dir`` (fp32), made once and reused."""
    info = inspect_pipeline(pipeline_dir)
    out = Path(cache_dir) / f"{info.path.resolve().name}-{_fingerprint(info.path)}"
    if (out / "model_index.json").is_file():
        return out
    from optimum.exporters.onnx import main_export

    logger.info("optimum export of %s -> %s", info.path, out)
    with atomic_output_dir(out, overwrite=True) as tmp:
        main_export(str(info.path), output=str(tmp), task="text-to-image", device="cpu")
    return out


def load_optimum_pipeline(pipeline_dir: str | Path, threads: int, cache_dir: str | Path = "build/bench/optimum"):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    folder = optimum_export(pipeline_dir, cache_dir)
    try:
        pipe = ORTStableDiffusionPipeline.from_pretrained(str(folder), session_options=opts, provider="CPUExecutionProvider")
    except (OSError, ValueError) as exc:
        raise PocketdiffError(f"optimum cannot load its export {folder}: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def optimum_component_call(pipeline_dir: str | Path, role: str, feeds: dict[str, np.ndarray], threads: int,
                           cache_dir: str | Path = "build/bench/optimum") -> Callable[[], object]:
    """A zero-argument call of one optimum component on ``feeds`` (``fixed_inputs`` names); the
    pipeline's other sessions are released."""
    import torch

    pipe = load_optimum_pipeline(pipeline_dir, threads, cache_dir)
    module = getattr(pipe, role)  # optimum names its components as pocketdiff's roles
    for other in ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"):
        if other != role and getattr(pipe, other, None) is not None:
            setattr(pipe, other, None)  # the component keeps its parent pipeline alive: drop the other sessions
    del pipe
    gc.collect()
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if role == "text_encoder":  # as encode_prompt: token ids as int64 torch tensors
        ids = t["input_ids"].to(torch.int64)
        return lambda: module(input_ids=ids)
    if role == "unet":  # as __call__: latents, a 0-d timestep, the prompt embeddings
        return lambda: module(sample=t["sample"], timestep=t["timestep"], encoder_hidden_states=t["encoder_hidden_states"])
    return lambda: module(latent_sample=t["latent_sample"])


def optimum_info(pipeline_dir: str | Path, cache_dir: str | Path = "build/bench/optimum") -> dict:
    """What the optimum side ran: the export folder and its opset, for the results record."""
    folder = optimum_export(pipeline_dir, cache_dir)
    import onnx

    unet = onnx.load(str(folder / "unet" / "model.onnx"), load_external_data=False)
    return {"folder": str(folder), "opset": max(o.version for o in unet.opset_import if o.domain in ("", "ai.onnx")),
            "model_index": json.loads((folder / "model_index.json").read_text()).get("_class_name")}
