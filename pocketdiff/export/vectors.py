"""A bundle's ``test_vectors.json``: the numbers the app ports check themselves against (``docs/ports.md``).

- ``tokens``, ``initial_latents``, ``timesteps``: the runtime's tokenizer, RNG and the bundle's scheduler;
- ``schedulers``: every registry scheduler stepped on recorded model outputs (a small [1, 4, 4, 4] latent; the
  records chain one scheduler object through all its steps);
- ``sampler``: the step policy's call trace and latents for the first vector prompt at seed 0, from the
  runtime's own loop (on the PyTorch components at export; any runtime's sessions here);
- ``replay``: every session call of that same run with its inputs (summaries) and outputs (whole tensors), and the
  decoded image, so a port can run its own loop and policy on sessions that answer with the recorded outputs;
- ``step_budget`` (a bundle with a predictor): the predictor's curve and the rule's steps per vector prompt.

Whole tensors are base64 of little-endian float32, row-major (:func:`tensor_record`), left out above
``MAX_DATA`` elements (an SD1.5 decoder output); a port reports the checks that need them as not run.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Mapping

import numpy as np

from pocketdiff.runtime.policies import predict_steps
from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.schedulers import SCHEDULERS, get_scheduler_entry, scheduler_from_config
from pocketdiff.runtime.sessions import Session
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

VECTOR_PROMPTS = ("a small red circle in the top left on a grey background", "a blue square left of a yellow ring",
                  "Hello, World! 123")
VECTOR_SEEDS = (0, 42)
VECTOR_MAX_STEPS = 8  # the policy vectors run the pinned steps, at most this many (an SD1.5 UNet step is seconds),
# except for a policy that runs one step count only (a DDSM schedule)
SCHEDULER_SHAPE = (1, 4, 4, 4)  # scheduler maths is elementwise: a small latent serves every bundle
MAX_DATA = 2**20  # elements: larger tensors are recorded by summary only
FIRST = 16


def b64_f32(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def tensor_record(x, with_data: bool = True) -> dict:
    """``{shape, dtype, first_values, mean_abs[, data]}`` (data: base64 little-endian float32, float tensors only)."""
    x = np.asarray(x)
    flat = x.reshape(-1)
    rec = {"shape": list(x.shape), "dtype": str(x.dtype), "first_values": flat[:FIRST].tolist(),
           "mean_abs": float(np.abs(flat.astype(np.float64)).mean()) if flat.size else 0.0}
    if with_data and np.issubdtype(x.dtype, np.floating) and x.size <= MAX_DATA:
        rec["data"] = b64_f32(x)
    return rec


def latent_record(x: np.ndarray) -> dict:
    return {"first_values": x.reshape(-1)[:FIRST].tolist(), "mean_abs": float(np.abs(x).mean())}


class RecordingSession:
    """A session that passes every call through and records its feeds (summaries) and outputs (whole tensors)."""

    def __init__(self, inner: Session, role: str, calls: list):
        self.inner, self.role, self.calls = inner, role, calls
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.fixed_batch = getattr(inner, "fixed_batch", None)
        self.path = getattr(inner, "path", role)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(feeds)
        self.calls.append({"role": self.role,
                           "inputs": {k: tensor_record(v, with_data=False) for k, v in feeds.items()},
                           "outputs": {k: tensor_record(v) for k, v in out.items()}})
        return out


def scheduler_vectors(config: dict, steps: int) -> list[dict]:
    """Each registry scheduler (on the bundle's config) through ``steps`` steps on a small latent, the model
    output of step i being ``initial_latents(100 + i)``: its timesteps and every step's inputs and results."""
    out = []
    for name in SCHEDULERS:
        cfg = get_scheduler_entry(name).config_for(config)
        sched = scheduler_from_config(cfg)
        sched.set_timesteps(steps)
        x = initial_latents(7, SCHEDULER_SHAPE) * sched.init_noise_sigma
        records = []
        for i, t in enumerate(sched.timesteps):
            scaled = sched.scale_model_input(x, i)
            eps = initial_latents(100 + i, SCHEDULER_SHAPE)
            prev = sched.step(eps, i, x)
            records.append({"index": i, "timestep": float(t), "sample": tensor_record(x),
                            "scaled_sample": tensor_record(scaled), "model_output": tensor_record(eps),
                            "prev_sample": tensor_record(prev)})
            x = prev
        out.append({"name": name, "config": cfg, "steps": steps, "timesteps": np.asarray(sched.timesteps).tolist(),
                    "init_noise_sigma": float(sched.init_noise_sigma), "records": records})
    return out


def budget_vector(runtime: RuntimePipeline, prompt: str) -> dict:
    ids = np.asarray([runtime.tokenizer(prompt, truncate=True).input_ids], dtype=np.int64)
    hidden = runtime.sessions["text_encoder"].run({"input_ids": ids})["last_hidden_state"]
    steps, record = predict_steps(lambda role, feeds: runtime.sessions[role].run(feeds), runtime.budget, hidden, "auto")
    return {"prompt": prompt, "quality": record["predicted"], "targets": record["targets"], "steps": steps,
            "tolerance": 1e-3}


def bundle_vectors(runtime: RuntimePipeline, tokenizer_dir: str | Path, steps: int, guidance: float) -> dict:
    """The vectors (module docstring) of ``runtime``'s loop and policy at the bundle's ``steps`` and ``guidance``."""
    tok = CLIPBPETokenizer.from_dir(tokenizer_dir)
    sched = scheduler_from_config(runtime.scheduler_config)
    sched.set_timesteps(steps)
    policy = runtime.policy
    n = policy.fixed_steps() or min(steps, VECTOR_MAX_STEPS)  # a per-step schedule runs its own length
    calls: list[dict] = []
    recording = runtime.with_sessions({r: RecordingSession(s, r, calls) for r, s in runtime.sessions.items()})
    latents: dict[int, np.ndarray] = {}
    result = recording.generate(VECTOR_PROMPTS[0], steps=n, guidance=guidance, seed=0,
                                on_step=lambda i, x: latents.__setitem__(i, x.copy()))
    replay = [{"step": c.step, "role": c.role, "batch": c.batch, **rec} for c, rec in zip(result.trace, calls)]
    budget = {}
    if runtime.budget is not None:  # the predictor's output and the default rule's choice per vector prompt
        budget = {"step_budget": [budget_vector(runtime, p) for p in VECTOR_PROMPTS]}
    return {
        "tokens": [{"prompt": p, "input_ids": tok(p).input_ids} for p in VECTOR_PROMPTS],
        "initial_latents": [{"seed": s, "shape": [1, *runtime.latent_shape],
                             "first_values": initial_latents(s, (1, *runtime.latent_shape)).reshape(-1)[:FIRST].tolist()}
                            for s in VECTOR_SEEDS],
        "timesteps": {"steps": steps, "values": sched.timesteps.tolist()},
        "schedulers": scheduler_vectors(runtime.scheduler_config, min(steps, VECTOR_MAX_STEPS)),
        "sampler": {**policy.to_dict(), "prompt": VECTOR_PROMPTS[0], "seed": 0, "steps": n, "guidance": guidance,
                    "trace": [c.to_dict(with_time=False) for c in result.trace],
                    "latent_after_step_1": latent_record(latents[0]),
                    "latent_after_last_step": latent_record(latents[max(latents)]), "tolerance": 1e-3},
        "replay": {"calls": replay, "image": {"shape": list(result.image.shape),
                                              "data": base64.b64encode(result.image.tobytes()).decode("ascii")}},
        **budget,
    }
