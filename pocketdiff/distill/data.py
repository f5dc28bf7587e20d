"""Captioned images for the training stages: one place that names the sources.

``toyworld`` (and any other named source)
    a plugin under the ``pocketdiff.data_sources`` entry points: a function ``(n, seed, split) ->
    (captions, load)`` with ``load(start, stop) -> uint8 [stop - start, H, W, 3]``. The toy world
    (``toyworld.world.captioned_source``, the procedural world of captioned shapes) is one; the stages
    name sources without importing them, so the toy world may train on this package's loop.
``imagefolder:DIR``
    a folder of images with a ``metadata.jsonl`` whose lines are ``{"file_name": ..., "text": ...}``
    (the layout of Hugging Face ``datasets``' imagefolder): the data for a real checkpoint, e.g. a LAION
    or COCO subset prepared offline. Images are centre-cropped and resized to the pipeline's resolution.

A stage's config holds the source as a string (``data = "imagefolder:/data/laion-a6"``); its
``validate`` calls :func:`check_data_source`, which checks the form and that the folder has a
metadata file, so a bad value fails before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

import numpy as np

from pocketdiff.errors import PocketdiffError

IMAGEFOLDER = "imagefolder:"
METADATA = "metadata.jsonl"
ENTRY_POINTS = "pocketdiff.data_sources"


def named_sources() -> dict[str, Callable]:
    """name -> source function, from the ``pocketdiff.data_sources`` entry points (loaded when first drawn)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def check_data_source(data: str, what: str = "data source") -> str:
    """``data`` if it names a usable source; else an error naming the bad value and the allowed forms."""
    named = named_sources()
    if data in named:
        return data
    if isinstance(data, str) and data.startswith(IMAGEFOLDER):
        meta = Path(data[len(IMAGEFOLDER):]) / METADATA
        if not meta.is_file():
            raise PocketdiffError(f"{what} {data!r}: {meta} does not exist (an imagefolder source needs a "
                                  f"{METADATA} with file_name and text on each line)")
        return data
    raise PocketdiffError(f"unknown {what} {data!r}; allowed: {', '.join([*named, IMAGEFOLDER + 'DIR'])}")


@dataclass(frozen=True)
class Captioned:
    """``n`` drawn captions, and their images loaded on demand (a real data set does not fit in memory)."""

    captions: list[str]
    load: Callable[[int, int], np.ndarray]  # (start, stop) -> uint8 [stop - start, H, W, 3]

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.load(start, len(self.captions) if stop is None else min(stop, len(self.captions)))


def _folder_rows(folder: Path) -> list[dict]:
    rows = []
    for i, line in enumerate((folder / METADATA).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"file_name": str(row["file_name"]), "text": str(row["text"])})
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PocketdiffError(f"{folder / METADATA} line {i}: expected a JSON object with file_name and text, "
                                  f"got {line[:120]!r}") from None
    if not rows:
        raise PocketdiffError(f"{folder / METADATA} lists no images")
    return rows


def _load_square(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise PocketdiffError(f"image {path} (listed in {METADATA}) does not exist")
    with Image.open(path) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, np.uint8)


def captioned_samples(data: str, n: int, seed: int, split: str = "train", size: int | None = None) -> Captioned:
    """``n`` captioned images of ``data``, the same for the same seed.

    A named source draws ``split`` at its own resolution; an image folder has no splits, draws ``n`` rows by a
    seeded permutation (repeated when ``n`` exceeds the folder) and loads images at ``size``."""
    check_data_source(data)
    named = named_sources()
    if data in named:
        return Captioned(*named[data].load()(n, seed, split))
    folder = Path(data[len(IMAGEFOLDER):])
    rows = _folder_rows(folder)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(rows)) for _ in range(-(-n // len(rows)))])[:n]
    picked = [rows[i] for i in order]

    def load(a: int, b: int) -> np.ndarray:
        if size is None:
            raise PocketdiffError("captioned_samples: images of an image folder need the pipeline's image size")
        return np.stack([_load_square(folder / r["file_name"], size) for r in picked[a:b]])

    return Captioned([r["text"] for r in picked], load)
