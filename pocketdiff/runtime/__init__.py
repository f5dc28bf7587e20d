"""Torch-free reference runtime: numpy schedulers, portable RNG, CLIP tokenizer, sessions, step policies,
the sampler loop.

It imports numpy and the backend runtime (onnxruntime) only, so it mirrors what a phone runs; the
Swift, Kotlin and JavaScript ports follow these files by name.
"""

from pocketdiff.runtime.policies import POLICIES, StepPolicy, make_policy, register_policy
from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.sampler import Cancelled, GenerationResult, RuntimePipeline
from pocketdiff.runtime.schedulers import SCHEDULERS, scheduler_from_config
from pocketdiff.runtime.sessions import BACKENDS, Session, ShapeSession, TensorSpec
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

__all__ = ["BACKENDS", "CLIPBPETokenizer", "Cancelled", "GenerationResult", "POLICIES", "RuntimePipeline",
           "SCHEDULERS", "Session", "ShapeSession", "StepPolicy", "TensorSpec", "initial_latents", "make_policy",
           "register_policy", "scheduler_from_config"]
