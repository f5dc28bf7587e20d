"""Write an app bundle: exported components + ``manifest.json`` + test vectors, atomically.

Layout::

    manifest.json        format_version 1; schema in export/manifest.schema.json
    tokenizer/           vocab.json, merges.txt (+ special tokens)
    onnx/                optimum's Stable Diffusion layout (export/onnx.py)
    test_vectors.json    token ids, initial-latent draws, timesteps, the latent after step 1

Every file is listed in ``manifest.files`` with its size and sha256; loaders check them all before
anything is loaded (``runtime/bundle.py``). Core ML and ExecuTorch targets plug in as more
components of the same list.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pocketdiff.export.parity import check_parity
from pocketdiff.runtime.bundle import FORMAT_VERSION, MANIFEST, sha256_file

SCHEMA = Path(__file__).with_name("manifest.schema.json")
ROLES = ("text_encoder", "unet", "vae_decoder")
VECTOR_PROMPTS = ("a small red circle in the top left on a grey background", "a blue square left of a yellow ring",
                  "Hello, World! 123")
VECTOR_SEEDS = (0, 42)


def _tensor_specs(items) -> list[dict]:
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
             "tensor(int64)": "int64"}
    return [{"name": t.name, "shape": [d if isinstance(d, int) else str(d) for d in t.shape],
             "dtype": dtype.get(t.type, t.type)} for t in items]


def _parity_inputs(pipe, role: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    if role == "text_encoder":
        return {"input_ids": rng.integers(0, pipe.text_encoder.config.vocab_size, (1, 77)).astype(np.int32)}
    if role == "unet":
        return {"sample": rng.standard_normal((2, c, s, s)).astype(np.float32), "timestep": np.array(500.0, np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, pipe.text_encoder.config.hidden_size)).astype(np.float32)}
    return {"latent_sample": rng.standard_normal((1, c, s, s)).astype(np.float32)}


def _test_vectors(bundle_dir: Path, steps: int, guidance: float) -> dict:
    from pocketdiff.runtime.rng import initial_latents
    from pocketdiff.runtime.sampler import RuntimePipeline
    from pocketdiff.runtime.schedulers import scheduler_from_config

    rt = RuntimePipeline.from_onnx_dir(bundle_dir / "onnx")
    sched = scheduler_from_config(rt.scheduler_config)
    sched.set_timesteps(steps)
    # The latent after step 1 for seed 0 and the first prompt (CFG at the default guidance).
    ids = [rt.tokenizer("").input_ids, rt.tokenizer(VECTOR_PROMPTS[0]).input_ids]
    hidden = rt.encode(ids if guidance > 1 else ids[1:])
    x = initial_latents(0, (1, *rt.latent_shape)) * sched.init_noise_sigma
    inp = sched.scale_model_input(np.concatenate([x, x]) if guidance > 1 else x, 0)
    eps = rt.unet.run({"sample": inp, "timestep": np.asarray(sched.timesteps[0], np.float32),
                       "encoder_hidden_states": hidden})["out_sample"]
    if guidance > 1:
        eps = eps[:1] + np.float32(guidance) * (eps[1:] - eps[:1])
    x1 = sched.step(eps, 0, x)
    return {
        "tokens": [{"prompt": p, "input_ids": rt.tokenizer(p).input_ids} for p in VECTOR_PROMPTS],
        "initial_latents": [{"seed": s, "shape": [1, *rt.latent_shape],
                             "first_values": initial_latents(s, (1, *rt.latent_shape)).reshape(-1)[:16].tolist()}
                            for s in VECTOR_SEEDS],
        "timesteps": {"steps": steps, "values": sched.timesteps.tolist()},
        "latent_after_step_1": {"prompt": VECTOR_PROMPTS[0], "seed": 0, "guidance": guidance,
                                "first_values": x1.reshape(-1)[:16].tolist(), "mean_abs": float(np.abs(x1).mean()),
                                "tolerance": 1e-3},
    }


def write_bundle(pipeline_dir: str | Path, out_dir: str | Path, steps: int = 25, guidance: float = 7.5,
                 scheduler: str | None = None, overwrite: bool = False) -> Path:
    """Export ``pipeline_dir`` to an ONNX fp32 bundle with parity, test vectors and checksums."""
    import jsonschema
    import onnxruntime as ort

    from pocketdiff.export.onnx import export_onnx_into, torch_reference
    from pocketdiff.pipedir import atomic_output_dir, inspect_pipeline, load_pipeline, package_versions
    from pocketdiff.runtime.schedulers import get_scheduler_entry, scheduler_name_for

    info = inspect_pipeline(pipeline_dir)
    entry_name = scheduler or scheduler_name_for(info.scheduler_config)
    entry = get_scheduler_entry(entry_name)
    pipe = load_pipeline(pipeline_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        export_onnx_into(pipe, info, (tmp / "onnx"))
        shutil.copytree(info.tokenizer_dir, tmp / "tokenizer")
        sched_cfg = entry.config_for(info.scheduler_config)
        components, rng = [], np.random.default_rng(0)
        for role, rel in zip(ROLES, ("onnx/text_encoder/model.onnx", "onnx/unet/model.onnx",
                                     "onnx/vae_decoder/model.onnx")):
            sess = ort.InferenceSession(str(tmp / rel), providers=["CPUExecutionProvider"])
            feeds = _parity_inputs(pipe, role, rng)
            want = torch_reference(pipe, role, feeds)
            got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            parity = {name: check_parity(f"{role}.{name}", ref, got[name], "fp32").to_dict()
                      for name, ref in want.items()}
            components.append({"name": role, "role": role, "target": "onnx", "path": rel, "precision": "fp32",
                               "inputs": _tensor_specs(sess.get_inputs()), "outputs": _tensor_specs(sess.get_outputs()),
                               "parity": parity, "meta": {}})
        vectors = _test_vectors(tmp, steps, guidance)
        (tmp / "test_vectors.json").write_text(json.dumps(vectors, indent=1) + "\n")
        files = [{"path": str(f.relative_to(tmp)), "sha256": sha256_file(f), "bytes": f.stat().st_size}
                 for f in sorted(tmp.rglob("*")) if f.is_file()]
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_by": package_versions(),
            "model": {"image_size": [info.latent_shape[1] * info.vae_scale_factor] * 2,
                      "latent_shape": list(info.latent_shape),
                      "latent_scale_factor": float(info.vae_config.get("scaling_factor", 0.18215))},
            "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt", "max_length": 77},
            "scheduler": {"name": entry_name, "diffusers_class": entry.diffusers_class, "config": sched_cfg,
                          "timesteps": vectors["timesteps"]["values"]},
            "defaults": {"steps": steps, "guidance": guidance},
            "components": components,
            "files": files,
            "test_vectors": "test_vectors.json",
        }
        jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(out_dir)
