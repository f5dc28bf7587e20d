"""The reference sampler, the one loop: tokenize -> text encoder -> initial latents -> N steps of a step
policy -> VAE decode -> uint8.

This is the loop the apps implement. It mirrors diffusers' ``StableDiffusionPipeline.__call__``:

1. ids = tokenizer(text) for each text the policy names (``policy.texts(w)``: the prompt, and for
   two-pass CFG first the negative prompt, "" by default).
2. Text encoder, one batch-1 call per text (as the apps do) -> ``last_hidden_state``, stacked in order.
   With ``steps="auto[...]"`` the ``step_budget`` role then predicts the prompt's quality curve over step counts
   and the rule picks the steps (``runtime/policies/budget.py``; BudgetFusion).
3. Latents ``x = rng.initial_latents(seed, (1, C, h, w)) * scheduler.init_noise_sigma``.
4. For each step i with timestep t: ``out = policy.step(i, t, scheduler.scale_model_input(x, i))``;
   ``x = scheduler.step(out, i, x)``. The policy (``runtime/policies/``) decides which roles run with
   which inputs and what carries to the next step; ``cfg`` runs one batch-2 UNet call and combines
   ``out_u + w (out_c - out_u)``, ``guidance_embedded`` one batch-1 call with the w embedding.
5. ``img = vae_decoder(x / scaling_factor)``; ``uint8 = round(clip(img / 2 + 0.5, 0, 1) * 255)``, HWC.

Every session call is timed and recorded in the result's call trace (step, role, batch, ms). The
progress callback ``callback(done, total)`` may return ``False`` to cancel: the loop stops at once and
raises :class:`Cancelled`; nothing is decoded or returned.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.policies import (STEP_BUDGET, BudgetSpec, Call, Denoise, StepPolicy, default_policy_name,
                                         is_auto, make_policy, predict_steps)
from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.schedulers import scheduler_from_config
from pocketdiff.runtime.sessions import BACKENDS, Session, TensorSpec
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer, TokenizerOutput

# (steps done, total steps) -> False to cancel (None or True: go on)
ProgressCallback = Callable[[int, int], "bool | None"]
TEXT_ENCODER, VAE_DECODER = "text_encoder", "vae_decoder"


class Cancelled(Exception):
    """The progress callback returned False; the generation was abandoned and nothing was returned."""


def check_generation_args(steps: int, guidance: float) -> None:
    """The user-facing limits shared by every generation path."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise PocketdiffError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(guidance, (int, float)) or not np.isfinite(guidance) or guidance < 0:
        raise PocketdiffError(f"guidance must be a finite number >= 0, got {guidance!r}")


def to_uint8(decoded: np.ndarray) -> np.ndarray:
    """VAE output [1, 3, H, W] in [-1, 1] -> [H, W, 3] uint8, exactly as diffusers post-processes."""
    img = np.clip(decoded[0].astype(np.float32) / 2 + 0.5, 0, 1).transpose(1, 2, 0)
    return (img * 255).round().astype(np.uint8)


@dataclass
class GenerationResult:
    image: np.ndarray  # [H, W, 3] uint8
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    trace: list[Call] = field(default_factory=list)  # every session call, in order
    steps: int = 0  # denoising steps run
    tokens: TokenizerOutput | None = None
    budget: dict | None = None  # steps="auto": the request, targets, predicted curve and the steps it chose

    def call_counts(self) -> dict[str, int]:
        """role -> number of calls."""
        return dict(Counter(c.role for c in self.trace))


def policy_for(sampler: Mapping | None, unet_input_names) -> StepPolicy:
    """A manifest's ``sampler`` entry as a policy; without one (a bundle from before policies), the policy
    its UNet implies (``default_policy_name``), which is exactly the behaviour such a bundle had."""
    if sampler is None:
        return make_policy(default_policy_name(unet_input_names))
    return make_policy(sampler["policy"], sampler.get("params"))


class RuntimePipeline:
    """Text-to-image over sessions (one per role) and a step policy; holds no torch objects."""

    def __init__(self, tokenizer: CLIPBPETokenizer, sessions: Mapping[str, Session], scheduler_config: dict,
                 latent_shape: tuple[int, int, int], scaling_factor: float, policy: StepPolicy,
                 budget: BudgetSpec | None = None):
        missing = [r for r in (TEXT_ENCODER, *policy.roles(), VAE_DECODER) if r not in sessions]
        if missing:
            raise PocketdiffError(f"sampler policy {policy.name!r} needs roles {', '.join(missing)}; the sessions "
                                  f"given are: {', '.join(sessions)}")
        self.tokenizer = tokenizer
        self.sessions = dict(sessions)
        self.scheduler_config = scheduler_config
        self.latent_shape = tuple(latent_shape)
        self.scaling_factor = np.float32(scaling_factor)
        self.policy = policy
        self.budget = budget if budget is not None and STEP_BUDGET in self.sessions else None

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "onnx", threads: int | None = None,
                    policy: StepPolicy | None = None, trusted_key=None) -> "RuntimePipeline":
        """Load an app bundle's components for ``backend``; the manifest (its signature, with a ``trusted_key``:
        an Ed25519 public key) and every file's checksum are verified before any session opens. ``policy``
        replaces the manifest's (a bench or test of another policy on the same models)."""
        if backend not in BACKENDS:
            raise choice_error("backend", backend, BACKENDS)
        bundle = load_bundle(path, verify=True, trusted_key=trusted_key)
        m = bundle.manifest
        scheduler_from_config(m["scheduler"]["config"])  # a bad scheduler config fails before any session opens
        unet = bundle.component("unet", backend)
        policy = policy or policy_for(m.get("sampler"), [i["name"] for i in unet.inputs])
        sessions = {}
        budget = BudgetSpec.from_dict(m["step_budget"]) if "step_budget" in m else None
        extra = (STEP_BUDGET,) if budget is not None and any(
            c.role == STEP_BUDGET and c.target == backend for c in bundle.components) else ()
        for role in (TEXT_ENCODER, *policy.roles(), *extra, VAE_DECODER):
            c = bundle.component(role, backend)
            sessions[role] = BACKENDS[backend](bundle.file(c.path), [TensorSpec.from_dict(i) for i in c.inputs],
                                               [TensorSpec.from_dict(o) for o in c.outputs], threads)
        return cls(bundle.tokenizer(), sessions, m["scheduler"]["config"],
                   tuple(m["model"]["latent_shape"]), m["model"]["latent_scale_factor"], policy, budget)

    def with_sessions(self, sessions: Mapping[str, Session], policy: StepPolicy | None = None) -> "RuntimePipeline":
        """The same pipeline on other sessions (e.g. ``ShapeSession``s for a dry run, torch modules for parity)."""
        return type(self)(self.tokenizer, sessions, self.scheduler_config, self.latent_shape,
                          float(self.scaling_factor), policy or self.policy, self.budget)

    def check_steps(self, steps) -> None:
        """Refuse a step request this pipeline cannot serve before any model runs: ``auto`` needs a step-budget
        predictor, and a policy with its own step count (a DDSM schedule) cannot take a predicted one."""
        if not is_auto(steps):
            check_generation_args(steps, 0.0)
            return
        if self.budget is None:
            raise PocketdiffError(f"steps {steps!r} needs a bundle with a step-budget predictor (role {STEP_BUDGET}, "
                                  "from pocketdiff budget-train); this one has none: give --steps N")
        if self.policy.fixed_steps() is not None:
            raise PocketdiffError(f"sampler policy {self.policy.name!r} runs {self.policy.fixed_steps()} steps only; "
                                  f"steps {steps!r} cannot change them")
        self.budget.targets(steps)

    def generate(self, prompt: str, *, steps: int | str, guidance: float, seed: int, negative_prompt: str = "",
                 scheduler: str | None = None, truncate: bool = False, callback: ProgressCallback | None = None,
                 on_step: Callable[[int, np.ndarray], None] | None = None) -> GenerationResult:
        """One image. ``on_step(i, x)`` sees the latent after each step (test vectors record them). ``steps``:
        a count, or ``"auto[:PRESET|METRIC=VALUE,...]"`` for the step-budget predictor's choice."""
        self.check_steps(steps)
        check_generation_args(1, guidance)
        sched = scheduler_from_config(self.scheduler_config, scheduler)
        self.policy.check(self.sessions, guidance)
        trace: list[Call] = []
        at: list[int | None] = [None]  # the step the next call belongs to

        def call(role: str, feeds: dict) -> dict:
            session = self.sessions[role]
            batch = int(np.shape(feeds[session.inputs[0].name])[0]) if np.ndim(feeds[session.inputs[0].name]) else 1
            t = time.perf_counter()
            out = session.run(feeds)
            trace.append(Call(at[0], role, batch, (time.perf_counter() - t) * 1000))
            return out

        t0 = time.perf_counter()
        tokens = self.tokenizer(prompt, truncate=truncate)
        texts = self.policy.texts(guidance)
        ids = [tokens.input_ids if k == "prompt" else self.tokenizer(negative_prompt, truncate=True).input_ids
               for k in texts]
        t1 = time.perf_counter()
        hidden = np.concatenate([call(TEXT_ENCODER, {"input_ids": np.asarray([row], dtype=np.int64)})[
            "last_hidden_state"] for row in ids])
        t2 = time.perf_counter()
        budget = None
        if is_auto(steps):  # the prompt's own states, whatever else the policy encoded
            row = texts.index("prompt")
            steps, budget = predict_steps(call, self.budget, hidden[row:row + 1], steps)
        t_budget = time.perf_counter()
        sched.set_timesteps(steps)
        x = initial_latents(seed, (1, *self.latent_shape)) * sched.init_noise_sigma
        run = Denoise(hidden, guidance, sched.timesteps, self.sessions, call)
        state = self.policy.begin(run)
        n = len(sched.timesteps)
        for i, t in enumerate(sched.timesteps):
            at[0] = i
            x = sched.step(self.policy.step(run, i, t, sched.scale_model_input(x, i), state), i, x)
            if on_step is not None:
                on_step(i, x)
            if callback is not None and callback(i + 1, n) is False:
                raise Cancelled(f"generation cancelled after step {i + 1} of {n}")
        at[0] = None
        t3 = time.perf_counter()
        image = to_uint8(call(VAE_DECODER, {"latent_sample": x / self.scaling_factor})["sample"])
        t4 = time.perf_counter()
        timings = dict(tokenize_s=t1 - t0, text_encoder_s=t2 - t1, **({"step_budget_s": t_budget - t2} if budget else {}),
                       unet_s=t3 - t_budget, decoder_s=t4 - t3, total_s=t4 - t0)
        return GenerationResult(image, timings, trace, steps=n, tokens=tokens, budget=budget)
