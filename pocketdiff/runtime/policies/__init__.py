"""Step policies, one file each, and their one registry.

- ``cfg`` (``cfg.py``): two-pass classifier-free guidance as one batch-2 UNet call per step.
- ``guidance_embedded`` (``guidance_embedded.py``): one batch-1 pass with the w embedding.
- ``ddsm`` (``ddsm.py``): a UNet width per step, each width its own role (DDSM).
- ``clockwork`` (``clockwork.py``): full steps cache the UNet's low-resolution output, light steps reuse it
  through a trained adaptor (Clockwork).

- ``adadiff`` (``adadiff.py``): the UNet segment by segment, stopping at the first confident exit head (AdaDiff).

``budget.py`` is not a step policy: it picks the step count before the loop (BudgetFusion, ``--steps auto``) with
the ``step_budget`` role.

``ddsm``, ``clockwork`` and ``adadiff`` share their guidance handling (``guided.py``).

A bundle's manifest names its policy and params (``sampler: {policy, params}``); a bundle written
before policies existed has none and gets :func:`default_policy_name` of its UNet, exactly the
behaviour it had. Later methods add a file here and one :func:`register_policy` line below.
"""

from __future__ import annotations

from typing import Any, Mapping

from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.runtime.policies.adadiff import (EXIT_ROLES, SEG_IN, SEG_ROLES, AdaDiffPolicy, exit_levels, exit_role,
                                                 seg_role)
from pocketdiff.runtime.policies.budget import STEP_BUDGET, BudgetSpec, is_auto, predict_steps
from pocketdiff.runtime.policies.base import UNET, Call, Denoise, StepPolicy, cfg_combine, unet_feeds
from pocketdiff.runtime.policies.cfg import CFGPolicy
from pocketdiff.runtime.policies.clockwork import CACHE_IN, CACHE_OUT, CW_FULL, CW_LIGHT, ClockworkPolicy, clock_schedule
from pocketdiff.runtime.policies.ddsm import WIDTH_ROLES, WIDTH_STEPS, DDSMPolicy, width_role
from pocketdiff.runtime.policies.guidance_embedded import W_INPUT, GuidanceEmbeddedPolicy, guidance_scale_embedding

POLICIES: dict[str, type[StepPolicy]] = {}


def register_policy(cls: type[StepPolicy]) -> type[StepPolicy]:
    """Add a policy class to the registry under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise PocketdiffError(f"policy class {cls.__name__} has no name")
    POLICIES[cls.name] = cls
    return cls


register_policy(CFGPolicy)
register_policy(GuidanceEmbeddedPolicy)
register_policy(DDSMPolicy)
register_policy(ClockworkPolicy)
register_policy(AdaDiffPolicy)


def make_policy(name: str, params: Mapping[str, Any] | None = None) -> StepPolicy:
    """The policy ``name`` with ``params``; an unknown name or a bad param is one error naming what is allowed."""
    if name not in POLICIES:
        raise choice_error("sampler policy", name, POLICIES)
    if params is not None and not isinstance(params, Mapping):
        raise PocketdiffError(f"sampler policy {name!r}: params must be an object, got {params!r}")
    return POLICIES[name](params)


def default_policy_name(unet_input_names) -> str:
    """The policy a UNet implies when nothing names one: a w-embedded UNet's single pass, else CFG."""
    return GuidanceEmbeddedPolicy.name if W_INPUT in set(unet_input_names) else CFGPolicy.name


def runtime_roles() -> set[str]:
    """Every role this runtime can call: the text encoder and decoder, and each registered policy's."""
    return {"text_encoder", "vae_decoder", STEP_BUDGET} | {r for cls in POLICIES.values() for r in cls.ROLES}


__all__ = ["STEP_BUDGET", "BudgetSpec", "is_auto", "predict_steps", "AdaDiffPolicy", "EXIT_ROLES", "SEG_IN", "SEG_ROLES", "exit_levels", "exit_role", "seg_role", "CACHE_IN", "CACHE_OUT", "CW_FULL", "CW_LIGHT", "ClockworkPolicy", "clock_schedule", "POLICIES", "UNET", "WIDTH_ROLES", "WIDTH_STEPS", "Call", "CFGPolicy", "DDSMPolicy", "Denoise", "GuidanceEmbeddedPolicy", "StepPolicy", "W_INPUT",
           "cfg_combine", "default_policy_name", "guidance_scale_embedding", "make_policy", "register_policy",
           "runtime_roles", "unet_feeds", "width_role"]
