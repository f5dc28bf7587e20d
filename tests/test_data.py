"""Captioned-image sources (distill.data): the toy world and an image folder with metadata.jsonl, the
form of a real checkpoint's data; bad values fail with the value named."""

import json

import numpy as np
import pytest
from PIL import Image

from pocketdiff.distill.data import captioned_samples, check_data_source
from pocketdiff.distill.kd import KDTrainConfig, encoded_pool
from pocketdiff.errors import PocketdiffError


def _folder(tmp_path, rows):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, w, h in [("a.png", 40, 30), ("b.jpg", 30, 50), ("c.png", 64, 64)]:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


ROWS = [{"file_name": "a.png", "text": "a wide one"}, {"file_name": "b.jpg", "text": "a tall one"},
        {"file_name": "c.png", "text": "a square one"}]


def test_imagefolder_source_draws_seeded_square_crops(tmp_path):
    src = f"imagefolder:{_folder(tmp_path, ROWS)}"
    assert check_data_source(src) == src
    got = captioned_samples(src, 5, seed=1, size=16)
    images = got.images()
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(got.images(3, 5), images[3:])  # loaded in chunks on demand
    assert sorted(got.captions[:3]) == sorted(r["text"] for r in ROWS)  # a permutation, then repeated
    again = captioned_samples(src, 5, seed=1, size=16)
    assert again.captions == got.captions and np.array_equal(again.images(), images)
    # the image of a caption is that caption's file, centre-cropped and resized
    i = got.captions.index("a square one")
    want = np.asarray(Image.open(tmp_path / "imgs" / "c.png").convert("RGB").resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(images[i], want)
    toy = captioned_samples("toyworld", 3, seed=0)
    assert toy.images().shape[0] == 3 and all(isinstance(c, str) and c for c in toy.captions)


def test_encoded_pool_reads_an_image_folder(tiny_pipe, tmp_path):
    src = f"imagefolder:{_folder(tmp_path, ROWS)}"
    latents, ids, empty = encoded_pool(tiny_pipe, src, 4, seed=0)
    size = tiny_pipe.unet.config.sample_size
    assert latents.shape == (4, tiny_pipe.unet.config.in_channels, size, size)
    assert ids.shape == (4, tiny_pipe.tokenizer.model_max_length) and empty.shape == (ids.shape[1],)


def test_bad_data_sources_name_the_value(tmp_path):
    with pytest.raises(PocketdiffError, match="unknown KD training data source 'laion'; allowed: toyworld, "
                                              "imagefolder:DIR"):
        KDTrainConfig(data="laion").validate()
    with pytest.raises(PocketdiffError, match="metadata.jsonl does not exist"):
        check_data_source(f"imagefolder:{tmp_path / 'nope'}")
    bad = _folder(tmp_path, ROWS)
    (bad / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(PocketdiffError, match="line 1: expected a JSON object with file_name and text"):
        captioned_samples(f"imagefolder:{bad}", 2, seed=0, size=8)
    (bad / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(PocketdiffError, match="gone.png .listed in metadata.jsonl. does not exist"):
        captioned_samples(f"imagefolder:{bad}", 1, seed=0, size=8).images()
