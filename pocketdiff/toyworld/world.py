"""Procedural world of captioned shapes with ground-truth attributes.

Images are 32x32 RGB (the toy VAE's factor 4 gives 8x8 latents, a quarter of the training cost of
16x16; see the toy-teacher README section). A scene is one object, or two objects in a relation:

* 6 shapes, 8 colours, 2 sizes, a 3x3 grid of positions, 4 backgrounds;
* single: "a small red circle in the top left on a grey background" (varied phrasing);
* pair: "a blue square left of a yellow ring" (both objects small, same row or column).

Everything is deterministic from a seed. A fixed set of (colour, shape) combinations is held out of
training entirely (:data:`HELD_OUT`): scenes containing one appear only in the ``heldout`` split, to
measure compositional generalisation.

Shapes are drawn at 4x resolution and box-filtered down, so edges are anti-aliased.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from pocketdiff.errors import choice_error

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (220, 30, 30), "green": (40, 190, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40),
    "orange": (250, 140, 20), "purple": (160, 50, 200), "cyan": (40, 220, 230), "white": (245, 245, 245),
}
BACKGROUNDS = {"black": (10, 10, 10), "grey": (120, 120, 120), "brown": (95, 60, 30), "navy": (20, 25, 80)}
SIZES = {"small": 3.5, "large": 5.0}  # half-extent in pixels at 32x32
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
CELL = IMAGE_SIZE / 3
# Each colour and each shape appears in exactly one held-out pair.
HELD_OUT = frozenset({("red", "triangle"), ("green", "ring"), ("blue", "cross"), ("yellow", "diamond"),
                      ("purple", "circle"), ("cyan", "square")})
SPLITS = ("train", "val", "heldout")
# Fixed prompts for side-by-side grids (the toy demo page, the build report): seen and held-out combinations.
DEMO_PROMPTS = (
    "a small red circle in the top left on a grey background",
    "a large blue square in the center on a black background",
    "a large yellow triangle in the bottom right on a navy background",
    "a small white cross in the top on a brown background",
    "a green diamond left of an orange ring",
    "a cyan circle above a purple square",
    "a large red triangle in the center on a grey background",   # held-out combination
    "a blue cross right of a green ring",                          # held-out combinations
)

_SINGLE_TEMPLATES = (
    "a {size} {colour} {shape} in the {pos} on a {bg} background",
    "{size} {colour} {shape}, {pos}, {bg} background",
    "a {colour} {shape} ({size}) at the {pos} on {bg}",
    "the {pos} has a {size} {colour} {shape}, {bg} background",
    "picture of a {size} {colour} {shape} in the {pos} over a {bg} background",
)
_PAIR_TEMPLATES = (
    "a {c1} {s1} {rel} a {c2} {s2}",
    "{c1} {s1} {rel} {c2} {s2}",
    "a {c1} {s1} is {rel} a {c2} {s2}",
    "two shapes: a {c1} {s1} {rel} a {c2} {s2}",
)

# The phrasing split (``benchmarks.quality``, eval only, never trained on): the same attributes in word orders
# and glue words no training template above produces, every word a single token of the project's vocabulary.
_REPHRASED_SINGLE = (
    "there is a {size} {colour} {shape} at the {pos} of the image, on {bg}",
    "on a plain {bg} background, one {colour} {shape} that is {size}, in the {pos}",
    "{pos}: a {size} {colour} {shape} with a {bg} background",
    "an image with a {bg} background and a {size} {colour} {shape} in the {pos}",
)
_REPHRASED_PAIR = (
    "there is a {c1} {s1} {rel} the {c2} {s2}",
    "a {c2} {s2} and a {c1} {s1} {rel} it",
    "image of a {c1} {s1} that is {rel} a {c2} {s2}",
)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int  # 0 top .. 2 bottom
    col: int  # 0 left .. 2 right

    @property
    def position(self) -> str:
        return POSITIONS[self.row * 3 + self.col]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    relation: str | None = None  # pairs: objects[0] <relation> objects[1]
    jitter: tuple[tuple[float, float], ...] = ()  # per-object sub-cell offset in pixels

    def to_dict(self) -> dict:
        return asdict(self)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise choice_error("split", split, SPLITS)
    return split


def _combo_ok(colour: str, shape: str, split: str) -> bool:
    return ((colour, shape) in HELD_OUT) == (split == "heldout")


def sample_scene(rng: np.random.Generator, split: str = "train", kind: str | None = None) -> Scene:
    """One scene for ``split``; ``kind`` is 'single', 'pair' or None (30% pairs)."""
    check_split(split)
    kind = kind or ("pair" if rng.random() < 0.3 else "single")
    bg = str(rng.choice(list(BACKGROUNDS)))
    colours = list(COLOURS)

    def combo(must_hold_out: bool | None) -> tuple[str, str]:
        while True:
            c, s = str(rng.choice(colours)), str(rng.choice(SHAPES))
            if must_hold_out is None or ((c, s) in HELD_OUT) == must_hold_out:
                return c, s

    jit = lambda: (float(rng.uniform(-0.75, 0.75)), float(rng.uniform(-0.75, 0.75)))  # noqa: E731
    if kind == "single":
        c, s = combo(split == "heldout")
        obj = Obj(s, c, str(rng.choice(list(SIZES))), int(rng.integers(3)), int(rng.integers(3)))
        return Scene((obj,), bg, None, (jit(),))
    rel = str(rng.choice(RELATIONS))
    if split == "heldout":  # at least one held-out combination
        first_held = bool(rng.random() < 0.5)
        (c1, s1), (c2, s2) = combo(first_held or None), combo(None if first_held else True)
    else:
        (c1, s1), (c2, s2) = combo(False), combo(False)
    a, b = sorted(rng.choice(3, size=2, replace=False).tolist())  # a < b
    k = int(rng.integers(3))
    if rel in ("left of", "right of"):
        (ca, cb) = (a, b) if rel == "left of" else (b, a)
        o1, o2 = Obj(s1, c1, "small", k, ca), Obj(s2, c2, "small", k, cb)
    else:
        (ra, rb) = (a, b) if rel == "above" else (b, a)
        o1, o2 = Obj(s1, c1, "small", ra, k), Obj(s2, c2, "small", rb, k)
    return Scene((o1, o2), bg, rel, (jit(), jit()))


def _describe(scene: Scene, rng: np.random.Generator, singles: tuple[str, ...], pairs: tuple[str, ...]) -> str:
    if scene.relation is None:
        o = scene.objects[0]
        t = singles[int(rng.integers(len(singles)))]
        return t.format(size=o.size, colour=o.colour, shape=o.shape, pos=o.position, bg=scene.background)
    o1, o2 = scene.objects
    t = pairs[int(rng.integers(len(pairs)))]
    return t.format(c1=o1.colour, s1=o1.shape, rel=scene.relation, c2=o2.colour, s2=o2.shape)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming every attribute of the scene, in one of several phrasings."""
    return _describe(scene, rng, _SINGLE_TEMPLATES, _PAIR_TEMPLATES)


def rephrase(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of ``scene`` in a phrasing no training template produces (the eval's phrasing split)."""
    return _describe(scene, rng, _REPHRASED_SINGLE, _REPHRASED_PAIR)


def _shape_polygons(shape: str, cx: float, cy: float, r: float) -> list[tuple[str, list]]:
    """Drawing ops (kind, args) in pixel coordinates for PIL.ImageDraw at any scale."""
    if shape == "circle":
        return [("ellipse", [cx - r, cy - r, cx + r, cy + r])]
    if shape == "ring":
        return [("ellipse", [cx - r, cy - r, cx + r, cy + r]), ("hole", [cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5])]
    if shape == "square":
        q = r * 0.85
        return [("polygon", [(cx - q, cy - q), (cx + q, cy - q), (cx + q, cy + q), (cx - q, cy + q)])]
    if shape == "triangle":
        return [("polygon", [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)])]
    if shape == "diamond":
        return [("polygon", [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)])]
    if shape == "cross":
        w = r * 0.38
        return [("polygon", [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy + r), (cx - w, cy + r)]),
                ("polygon", [(cx - r, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx - r, cy + w)])]
    raise choice_error("shape", shape, SHAPES)


def render(scene: Scene, supersample: int = 4) -> np.ndarray:
    """[32, 32, 3] uint8 image of ``scene``."""
    from PIL import Image, ImageDraw

    s = supersample
    img = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    jitter = scene.jitter or tuple((0.0, 0.0) for _ in scene.objects)
    for obj, (jx, jy) in zip(scene.objects, jitter):
        cx, cy = (obj.col + 0.5) * CELL + jx, (obj.row + 0.5) * CELL + jy
        for kind, args in _shape_polygons(obj.shape, cx * s, cy * s, SIZES[obj.size] * s):
            if kind == "ellipse":
                draw.ellipse(args, fill=COLOURS[obj.colour])
            elif kind == "hole":
                draw.ellipse(args, fill=BACKGROUNDS[scene.background])
            else:
                draw.polygon(args, fill=COLOURS[obj.colour])
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.uint8)


@dataclass(frozen=True)
class Sample:
    scene: Scene
    caption: str
    image: np.ndarray  # [32, 32, 3] uint8


def samples(seed: int, split: str = "train", kind: str | None = None) -> Iterator[Sample]:
    """Endless deterministic stream of (scene, caption, image) for ``split``."""
    rng = np.random.default_rng([seed, SPLITS.index(check_split(split))])
    while True:
        scene = sample_scene(rng, split, kind)
        yield Sample(scene, caption(scene, rng), render(scene))


def batch(seed: int, n: int, split: str = "train", kind: str | None = None) -> list[Sample]:
    it = samples(seed, split, kind)
    return [next(it) for _ in range(n)]


def captioned_source(n: int, seed: int, split: str = "train"):
    """The toy world as a training data source (``distill.data``, entry point ``toyworld``): ``n`` scenes of
    ``split`` -> (captions, ``load(start, stop)`` -> uint8 [stop - start, 32, 32, 3])."""
    drawn = batch(seed, n, split)
    return [s.caption for s in drawn], lambda a, b: np.stack([s.image for s in drawn[a:b]])
