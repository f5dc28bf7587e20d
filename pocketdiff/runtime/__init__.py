"""Torch-free reference runtime: numpy schedulers, portable RNG, CLIP tokenizer, backend sessions, sampler.

It imports numpy and the backend runtime (onnxruntime) only, so it mirrors what a phone runs; the
Swift and Kotlin apps follow these files.
"""

from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.sampler import GenerationResult, RuntimePipeline
from pocketdiff.runtime.schedulers import SCHEDULERS, scheduler_from_config
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

__all__ = ["CLIPBPETokenizer", "GenerationResult", "RuntimePipeline", "SCHEDULERS", "initial_latents",
           "scheduler_from_config"]
