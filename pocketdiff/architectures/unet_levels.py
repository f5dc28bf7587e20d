"""Config arithmetic of an SD-style UNet's resolution levels (no torch): what the AdaDiff segments carry, so the
role registry can give their tensors shapes without loading a model.

Level L works at ``sample_size / 2^L`` with ``block_out_channels[L]`` channels; the up block at level L is
``up_blocks[n-1-L]`` and takes ``layers_per_block[L] + 1`` skip connections, all at its own resolution.
"""

from __future__ import annotations


def levels(config) -> int:
    return len(config["block_out_channels"])


def allowed_levels(config) -> list[int]:
    """The levels an AdaDiff exit may sit at (after every up block but the last), deepest first: n-1 .. 1."""
    return list(range(levels(config) - 1, 0, -1))


def _layers(config) -> list[int]:
    lpb = config["layers_per_block"]
    return list(lpb) if isinstance(lpb, (list, tuple)) else [lpb] * levels(config)


def skip_channels(config) -> dict[int, list[int]]:
    """Level L -> the channels of the skips the up block at level L takes, in down-path order."""
    boc, n, lpb = list(config["block_out_channels"]), levels(config), _layers(config)
    made = [boc[0]]  # conv_in
    for d in range(n):
        made += [boc[d]] * lpb[d] + ([boc[d]] if d < n - 1 else [])  # resnets, then the downsampler
    out = {}
    for level in range(n - 1, -1, -1):  # the up path, deepest first, takes them from the end
        k = lpb[level] + 1
        out[level], made = made[-k:], made[:-k]
    return out


def temb_dim(config) -> int:
    return config.get("time_embedding_dim") or config["block_out_channels"][0] * 4


def segment_symbols(config) -> dict[str, int]:
    """The shape symbols of the AdaDiff segment and exit roles (``export/roles.py``): ``cL`` channels and ``zL``
    side of level L, ``kL`` the packed skips of level L (L <= n-2: those a later segment takes), ``E`` the time
    embedding, ``cN``/``zN`` the first segment's hidden output (after the lowest up block)."""
    boc, n, s = list(config["block_out_channels"]), levels(config), config["sample_size"]
    out = {"E": temb_dim(config), "cN": boc[n - 1], "zN": s // 2 ** (n - 2)}
    for level in range(n):
        out[f"c{level}"], out[f"z{level}"] = boc[level], s // 2 ** level
    for level, chans in skip_channels(config).items():
        if level <= n - 2:
            out[f"k{level}"] = sum(chans)
    return out
