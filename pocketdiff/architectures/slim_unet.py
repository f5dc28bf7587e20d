"""The materialised slim UNet: a ``UNet2DConditionModel`` whose config lists the removed blocks.

``SlimUNet2DConditionModel(removed_blocks=[...], **unet_config)`` builds the UNet, then puts the
elastic UNet's parameter-free stand-ins where the removed blocks were, so it holds no dead weights
and its forward pass is exactly the elastic UNet's with those blocks skipped. It is a diffusers
``ModelMixin`` + ``ConfigMixin`` (through ``UNet2DConditionModel``): ``save_pretrained`` /
``from_pretrained`` round-trip it, ``config.json`` carries ``removed_blocks``, and a
``StableDiffusionPipeline`` takes it as its ``unet`` (``model_index.json`` names the class as
``["pocketdiff.architectures.slim_unet", "SlimUNet2DConditionModel"]``, which diffusers imports). :func:`materialise` copies weights from a full UNet
with checks that every kept key and shape lines up and that only removed blocks' weights are dropped.
"""

from __future__ import annotations

import inspect

from diffusers import ModelMixin, UNet2DConditionModel

from pocketdiff.architectures.elastic_unet import check_skip_set, skippable_blocks, stand_in
from pocketdiff.errors import PocketdiffError


class SlimUNet2DConditionModel(UNet2DConditionModel):
    """``UNet2DConditionModel`` with ``removed_blocks`` (module paths) replaced by parameter-free stand-ins."""

    def __init__(self, *args, removed_blocks: list[str] | tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)  # registers every UNet config value
        removed = sorted(set(removed_blocks))
        infos = {b.name: b for b in skippable_blocks(self)}
        check_skip_set(infos, removed)
        self.register_to_config(removed_blocks=removed)
        for name in removed:
            path, idx = name.rsplit(".", 1)
            self.get_submodule(path)[int(idx)] = stand_in(infos[name])


# A pipeline folder names this module as the UNet's library; diffusers finds the loading method by
# looking its base classes up in that module, so ModelMixin must be importable from here.
__all__ = ["ModelMixin", "SlimUNet2DConditionModel", "materialise"]

# diffusers reads a model's config keys from its __init__ signature: the parent's plus ``removed_blocks``.
_parent = inspect.signature(UNet2DConditionModel.__init__)
SlimUNet2DConditionModel.__init__.__signature__ = _parent.replace(parameters=[
    *_parent.parameters.values(),
    inspect.Parameter("removed_blocks", inspect.Parameter.KEYWORD_ONLY, default=()),
])


def removed_prefixes(removed: list[str]) -> tuple[str, ...]:
    return tuple(f"{n}." for n in removed)


def materialise(unet, removed_blocks) -> SlimUNet2DConditionModel:
    """A :class:`SlimUNet2DConditionModel` with ``unet``'s weights minus the removed blocks'.

    Raises if any kept key is missing or differs in shape, or if a dropped key is not under a removed
    block: no teacher weight is silently lost."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_") and k != "removed_blocks"}
    already = list(getattr(unet.config, "removed_blocks", None) or [])
    removed = sorted(set(already) | set(removed_blocks))
    slim = SlimUNet2DConditionModel(**config, removed_blocks=removed)
    source, target = unet.state_dict(), slim.state_dict()
    prefixes = removed_prefixes(removed)
    dropped = set(source) - set(target)
    stray = sorted(k for k in dropped if not k.startswith(prefixes))
    if stray:
        raise PocketdiffError(f"materialise would drop {len(stray)} weight(s) outside the removed blocks, e.g. {stray[0]}")
    missing = sorted(set(target) - set(source))
    if missing:
        raise PocketdiffError(f"the slim UNet expects {len(missing)} weight(s) the source lacks, e.g. {missing[0]}")
    for k, v in target.items():
        if source[k].shape != v.shape:
            raise PocketdiffError(f"weight {k} has shape {tuple(source[k].shape)} in the source, {tuple(v.shape)} in "
                                  "the slim UNet")
    slim.load_state_dict({k: source[k] for k in target}, strict=True)  # copies into slim's (float32) tensors
    dtype = next(unet.parameters()).dtype
    return (slim if dtype == slim.dtype else slim.to(dtype)).eval()
