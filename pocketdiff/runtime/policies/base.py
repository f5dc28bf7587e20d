"""The step-policy interface: what the one sampler loop (``runtime/sampler.py``) asks a policy.

Per generation the loop encodes the texts the policy names (:meth:`StepPolicy.texts`), calls
:meth:`StepPolicy.begin` once, then at every step i hands the policy the scheduler-scaled latent and
takes back the scheduler's model output (:meth:`StepPolicy.step`). The policy decides which roles to
call, with which inputs, through :meth:`Denoise.call` (which times and traces each call), and keeps
whatever must carry to the next step (cached features, an exit) in the state ``begin`` returned.

A policy knows nothing of scheduler maths, RNG or tokenizer; the loop knows nothing method-specific.
Each policy is one small file in this folder, registered in ``policies/__init__.py``; the apps port
each file by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.sessions import Session

UNET = "unet"


@dataclass(frozen=True)
class Call:
    """One session call of a generation: the denoising step it belongs to (None: before or after the
    loop), the role, the batch it ran at and its wall time."""

    step: int | None
    role: str
    batch: int
    ms: float

    def to_dict(self, with_time: bool = True) -> dict:
        d = {"step": self.step, "role": self.role, "batch": self.batch}
        return {**d, "ms": round(self.ms, 4)} if with_time else d


@dataclass
class Denoise:
    """What a policy sees of the generation in progress."""

    hidden: np.ndarray  # [len(texts), 77, D]: the texts policy.texts() named, encoded in that order
    guidance: float
    timesteps: np.ndarray  # the scheduler's, for this generation
    sessions: Mapping[str, Session]
    call: Callable[[str, dict], dict]  # (role, feeds) -> outputs, timed and traced by the loop


def unet_feeds(sample: np.ndarray, t, hidden: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """The UNet's inputs (``export/roles.py``): sample [B,C,h,w], timestep [] float32, states [B,77,D]."""
    return {"sample": sample, "timestep": np.asarray(t, dtype=np.float32), "encoder_hidden_states": hidden, **extra}


def cfg_combine(out: np.ndarray, guidance: float) -> np.ndarray:
    """[2, ...] outputs on ``[negative, prompt]`` -> ``out_u + w (out_c - out_u)`` [1, ...] (float32 w)."""
    return out[:1] + np.float32(guidance) * (out[1:] - out[:1])


class StepPolicy:
    """Base of every step policy. Subclasses set ``name``, ``PARAMS`` (param -> (type, default)) and
    implement :meth:`step`; ``data_dependent`` says whether the calls it makes depend on the values
    (then a dry run on shape-only sessions cannot stand in for its trace)."""

    name: ClassVar[str] = ""
    ROLES: ClassVar[tuple[str, ...]] = (UNET,)  # the roles it calls in the loop (besides text encoder, decoder)
    PARAMS: ClassVar[dict[str, tuple[type, Any]]] = {}
    data_dependent: ClassVar[bool] = False

    def __init__(self, params: Mapping[str, Any] | None = None):
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            allowed = ", ".join(self.PARAMS) or "none"
            raise PocketdiffError(f"sampler policy {self.name!r} has no param {unknown[0]!r}; allowed: {allowed}")
        self.params = {}
        for key, (kind, default) in self.PARAMS.items():
            value = params.get(key, default)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise PocketdiffError(f"sampler policy {self.name!r}: param {key} must be {kind.__name__}, got "
                                      f"{value!r}")
            self.params[key] = value
        self.validate()

    def validate(self) -> None:
        """Check the params beyond their types (raise PocketdiffError)."""

    def roles(self) -> tuple[str, ...]:
        """The roles this instance calls in the loop (the loop adds the text encoder and the decoder)."""
        return self.ROLES

    def fixed_steps(self) -> int | None:
        """The one step count this policy runs (a per-step schedule's length), or None: any."""
        return None

    def texts(self, guidance: float) -> tuple[str, ...]:
        """Which texts to encode, in batch order: ``"negative"`` and/or ``"prompt"``."""
        return ("prompt",)

    def check(self, sessions: Mapping[str, Session], guidance: float) -> None:
        """Refuse, before any model runs, a generation these sessions cannot serve (raise PocketdiffError)."""

    def begin(self, run: Denoise) -> dict:
        """The state carried from step to step (a dict the policy owns)."""
        return {}

    def step(self, run: Denoise, i: int, t, sample: np.ndarray, state: dict) -> np.ndarray:
        """The scheduler's model output [1,C,h,w] for step i at timestep t, from the scaled latent [1,C,h,w]."""
        raise PocketdiffError(f"sampler policy {type(self).__name__} does not implement step()")

    def to_dict(self) -> dict:
        """The manifest's ``sampler`` entry."""
        return {"policy": self.name, "params": dict(self.params)}
