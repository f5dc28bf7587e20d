"""Every committed recipe loads and validates; the SD1.5 recipe's real-checkpoint eval refuses to start
without its files, before anything is written."""

from pathlib import Path

import pytest

from pocketdiff.build import build, load_recipe, stages
from pocketdiff.distill.steps import plan
from pocketdiff.errors import PocketdiffError

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


def test_the_three_recipes_are_there():
    assert [p.name for p in RECIPES] == ["sd15.toml", "toy-full.toml", "toy.toml"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_validates(path):
    r = load_recipe(path)
    assert set(r.stages) <= set(stages()) and {"slim", "decoder", "steps", "export", "report"} <= set(r.stages)
    assert plan(r.steps.distill)[-1].steps == (4 if path.name == "toy-full.toml" else 8)  # the shipped student: 4


def test_toy_recipes_are_quick_and_full():
    quick, full = load_recipe(RECIPES[2]), load_recipe(RECIPES[1])
    assert quick.slim.robust.steps < full.slim.robust.steps and quick.decoder.steps < full.decoder.steps
    assert quick.steps.distill.iters < full.steps.distill.iters and quick.eval.n < full.eval.n
    assert quick.eval.student == full.eval.student == "bundle" and not quick.eval.real


def test_sd15_recipe_checks_its_eval_files_before_writing(tiny_pipeline_dir, tmp_path):
    r = load_recipe(RECIPES[0])
    assert r.eval.real and r.eval.student == "pipeline" and r.export.precision == "fp16"
    with pytest.raises(PocketdiffError, match="captions file /data/coco2014-val-30k/captions.txt does not exist"):
        build(tiny_pipeline_dir, r, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    r.eval.clip_model = ""
    with pytest.raises(PocketdiffError, match="captions is set .the real-checkpoint protocol., so clip_model must be"):
        build(tiny_pipeline_dir, r, tmp_path / "w")


def test_a_given_latency_table_is_checked_when_the_recipe_loads():
    r = load_recipe(RECIPES[1])  # toy-full: the committed table make slim-toy measured alone
    assert r.slim.evolve.latency_table == "benchmarks/latency_tables/toy-onnx-cpu-2t.json"
    with pytest.raises(PocketdiffError, match="cannot read latency table nope.json"):
        load_recipe(RECIPES[1], ["slim.evolve.latency_table=nope.json"])
