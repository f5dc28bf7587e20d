import numpy as np
import pytest

from pocketdiff.errors import PocketdiffError
from pocketdiff.toyworld.world import (
    BACKGROUNDS, COLOURS, HELD_OUT, IMAGE_SIZE, POSITIONS, SHAPES, SIZES, batch, render,
)


def test_content_counts():
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8 and len(SIZES) == 2 and len(POSITIONS) == 9
    assert len(BACKGROUNDS) >= 3
    assert len({c for c, _ in HELD_OUT}) == len(HELD_OUT) == len({s for _, s in HELD_OUT})


def test_deterministic():
    a, b = batch(3, 20), batch(3, 20)
    assert [x.caption for x in a] == [x.caption for x in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [x.caption for x in batch(4, 20)] != [x.caption for x in a]


def test_splits_respect_held_out():
    for s in batch(0, 500, "train") + batch(0, 500, "val"):
        assert not any((o.colour, o.shape) in HELD_OUT for o in s.scene.objects)
    for s in batch(0, 300, "heldout"):
        assert any((o.colour, o.shape) in HELD_OUT for o in s.scene.objects)


def test_captions_name_every_attribute_and_vary():
    samples = batch(1, 300)
    for s in samples:
        for o in s.scene.objects:
            assert o.colour in s.caption and o.shape in s.caption
        if s.scene.relation is None:
            o = s.scene.objects[0]
            assert o.size in s.caption and o.position in s.caption and s.scene.background in s.caption
        else:
            assert s.scene.relation in s.caption
    singles = {s.caption.split(o.shape)[0].replace(o.size, "").replace(o.colour, "")
               for s in samples if s.scene.relation is None for o in s.scene.objects[:1]}
    assert len(singles) >= 4  # several phrasings
    assert 0.15 < np.mean([s.scene.relation is not None for s in samples]) < 0.45


def test_relations_hold_geometrically():
    for s in batch(2, 300, kind="pair"):
        a, b = s.scene.objects
        assert {"left of": a.col < b.col and a.row == b.row, "right of": a.col > b.col and a.row == b.row,
                "above": a.row < b.row and a.col == b.col, "below": a.row > b.row and a.col == b.col}[s.scene.relation]


def test_render_draws_the_object():
    s = batch(5, 1, kind="single")[0]
    img = s.image
    assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and img.dtype == np.uint8
    o = s.scene.objects[0]
    cy, cx = int((o.row + 0.5) * IMAGE_SIZE / 3), int((o.col + 0.5) * IMAGE_SIZE / 3)
    bg = np.array(BACKGROUNDS[s.scene.background])
    patch = img[cy - 3:cy + 4, cx - 3:cx + 4].reshape(-1, 3).astype(int)
    assert np.abs(patch - bg).sum(1).max() > 60  # something other than background near the centre
    assert np.array_equal(render(s.scene), img)


def test_bad_split():
    with pytest.raises(PocketdiffError, match="unknown split 'test'; allowed: train, val, heldout"):
        batch(0, 1, "test")
