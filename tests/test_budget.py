"""BudgetFusion on the tiny pipeline: the perceptual metrics against hand computations, a tiny budget-data table
(killed after one chunk and resumed), a 2-step predictor training (killed and resumed), the rule on hand-made
curves, export of the ``step_budget`` role with parity, and ``--steps auto`` through the one sampler loop."""

import json

import numpy as np
import pytest
import torch

from pocketdiff.architectures.step_budget import StepBudgetPredictor, load_step_budget
from pocketdiff.benchmarks.perceptual import METRICS, PSNR_CAP, laplacian_sharpness, similarity_table
from pocketdiff.benchmarks.quality import EvalModels
from pocketdiff.distill.budget_data import BudgetDataConfig, budget_data, load_table
from pocketdiff.distill.budget_train import BudgetTrainConfig, budget_train
from pocketdiff.errors import PocketdiffError
from pocketdiff.loop import Interrupted
from pocketdiff.pipedir import read_history, read_train_log
from pocketdiff.runtime.manifest import check_manifest
from pocketdiff.runtime.policies import STEP_BUDGET, BudgetSpec, runtime_roles
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.toyworld import TOY_TEACHER_DIR
from ports import check_all_ports


def _images(seed, n=3):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_metrics_match_hand_computations():
    """PSNR by its formula, the Laplacian by scipy, the CLIP cosine from ``get_image_features``; the reference
    against itself is perfect on every metric."""
    from scipy import ndimage

    clip = EvalModels.load_clip(TOY_TEACHER_DIR)
    a, b = _images(0), _images(1)
    t = similarity_table(clip, a, b)
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(t["psnr"], 10 * np.log10(255.0 ** 2 / mse), rtol=1e-4)
    luma = (a.astype(np.float64) / 255 * [0.299, 0.587, 0.114]).sum(-1) * 255
    want = [ndimage.laplace(y)[1:-1, 1:-1].var() for y in luma]
    np.testing.assert_allclose(laplacian_sharpness(a), want, rtol=1e-4)
    with torch.no_grad():
        fa = clip.get_image_features(pixel_values=torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1)
        fb = clip.get_image_features(pixel_values=torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1)
    np.testing.assert_allclose(t["clip"], torch.nn.functional.cosine_similarity(fa, fb).numpy(), atol=1e-5)
    same = similarity_table(clip, a, a)
    assert np.all(same["psnr"] == PSNR_CAP) and np.allclose(same["ssim"], 1) and np.allclose(same["sharpness"], 1)
    assert np.allclose(same["clip"], 1, atol=1e-5) and np.allclose(same["dreamsim"], 0, atol=1e-5)
    assert np.all(t["dreamsim"] > 0.0) and np.all(t["ssim"] < 0.5)


@pytest.fixture(scope="module")
def table(tiny_pipeline_dir, tmp_path_factory):
    """A tiny table (6 prompts, S = {1, 2}), killed after its first chunk and resumed."""
    root = tmp_path_factory.mktemp("budget")
    cfg = BudgetDataConfig(n=6, step_counts=(1, 2), chunk=3, guidance=2.0)

    def kill_after_first(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        budget_data(tiny_pipeline_dir, root / "data", cfg, root / "data.work", progress=kill_after_first)
    first = root / "data.work" / "part-0000000.npz"
    stamp = first.stat().st_mtime_ns
    assert not (root / "data" / "budget_data.npz").exists()
    out = budget_data(tiny_pipeline_dir, root / "data", cfg, root / "data.work")
    assert first.stat().st_mtime_ns == stamp  # the finished chunk was not redone
    return out


def test_table_holds_prompts_attributes_and_curves(table):
    t = load_table(table)
    assert t["curves"].shape == (6, 2, len(METRICS)) and list(t["metrics"]) == list(METRICS)
    assert list(t["step_counts"]) == [1, 2] and list(t["seed"]) == list(range(6))
    assert set(t["kind"]) <= {"single", "pair"} and all(json.loads(s)["background"] for s in t["scene"])
    ref = t["curves"][:, -1]  # the largest step count against itself
    assert np.all(ref[:, 0] == PSNR_CAP) and np.allclose(ref[:, 1], 1) and np.allclose(ref[:, 4], 0, atol=1e-5)
    assert t["meta"]["guidance"] == 2.0


def test_budget_data_refuses_another_config_and_bad_values(tiny_pipeline_dir, table, tmp_path):
    work = table.parent.parent / "data.work"
    with pytest.raises(PocketdiffError, match="another config"):
        budget_data(tiny_pipeline_dir, tmp_path / "d", BudgetDataConfig(n=6, step_counts=(1, 3), chunk=3,
                                                                         guidance=2.0), work)
    with pytest.raises(PocketdiffError, match="increasing"):
        BudgetDataConfig(step_counts=(4, 2)).validate()
    with pytest.raises(PocketdiffError, match="toy-train"):
        BudgetDataConfig(prompts="coco").validate()


def test_a_larger_n_extends_the_table_as_a_fresh_run_makes_it(tiny_pipeline_dir, tmp_path):
    """The last chunk of a 3-prompt table held 1 prompt; at n=4 it holds 2 and is redone, the first is kept."""
    cfg = BudgetDataConfig(n=3, step_counts=(1, 2), chunk=2, guidance=2.0)
    budget_data(tiny_pipeline_dir, tmp_path / "a", cfg, tmp_path / "w")
    cfg.n = 4
    extended = load_table(budget_data(tiny_pipeline_dir, tmp_path / "b", cfg, tmp_path / "w"))
    fresh = load_table(budget_data(tiny_pipeline_dir, tmp_path / "c", cfg, tmp_path / "w2"))
    assert list(extended["prompt"]) == list(fresh["prompt"]) and len(fresh["prompt"]) == 4
    np.testing.assert_allclose(extended["curves"], fresh["curves"], atol=1e-5)


@pytest.fixture(scope="module")
def budget_pipeline(tiny_pipeline_dir, table, tmp_path_factory):
    """Both predictor kinds, 2 steps each, the first run killed after one step and resumed."""
    root = tmp_path_factory.mktemp("budget_train")
    cfg = BudgetTrainConfig(data=str(table), steps=2, batch_size=4, checkpoint_every=1, val_fraction=0.34, width=16,
                            layers=1, heads=2)
    with pytest.raises(Interrupted):
        budget_train(tiny_pipeline_dir, root / "out", cfg, root / "work", progress=False, stop_after=1)
    out = budget_train(tiny_pipeline_dir, root / "out", cfg, root / "work", progress=False)
    return out, root / "work"


def test_training_resumes_logs_named_terms_and_reports_heldout_errors(budget_pipeline):
    out, work = budget_pipeline
    rows = read_train_log(work / "mlp")
    assert rows[-1]["step"] == 2
    assert {f"mse_{m}" for m in METRICS} <= set(rows[-1]) and "loss" in rows[-1]
    rep = json.loads((work / "report.json").read_text())
    assert set(rep["kinds"]) == {"mlp", "seq"} and rep["kept"] in rep["kinds"]
    # the kill came after mlp's first step: mlp resumed from its checkpoint, seq started afresh
    assert rep["kinds"]["mlp"]["train"]["resumed_from"] == 1 and rep["kinds"]["seq"]["train"]["resumed_from"] == 0
    for kind in rep["kinds"].values():
        assert {"mae", "r2"} <= set(kind["heldout"]["dreamsim"]) and kind["train"]["steps"] == 2
    model = load_step_budget(out)
    assert model.config.kind == rep["kept"] and list(model.config.step_counts) == [1, 2]
    assert read_history(out)[-1].name == "budget-train"


def test_rule_picks_the_smallest_step_count_reaching_every_target():
    spec = BudgetSpec((1, 2, 4, 8), ("ssim", "dreamsim"), (True, False), {"fast": {"ssim": 0.5}}, "fast")
    q = np.array([[0.4, 0.30], [0.6, 0.20], [0.9, 0.05], [1.0, 0.0]])
    assert spec.choose(q, {"ssim": 0.5}) == 2
    assert spec.choose(q, {"dreamsim": 0.1}) == 4
    assert spec.choose(q, {"ssim": 0.5, "dreamsim": 0.06}) == 4
    assert spec.choose(q, {"ssim": 2.0}) == 8  # none reaches: the largest
    batch = np.stack([q, q[::-1]])  # the second curve's quality falls with steps: only 1 step reaches ssim 0.95
    assert spec.choose(batch, {"ssim": 0.95}).tolist() == [8, 1] and spec.choose(batch, {"ssim": 2.0}).tolist() == [8, 8]
    assert spec.targets("auto") == {"ssim": 0.5} and spec.targets("auto:dreamsim=0.2,ssim=0.1") == {
        "dreamsim": 0.2, "ssim": 0.1}
    for bad, msg in (("auto:slow", "preset"), ("auto:lpips=0.1", "lpips"), ("auto:ssim=high", "METRIC=NUMBER"),
                     ("fast", "integer")):
        with pytest.raises(PocketdiffError, match=msg):
            spec.targets(bad)


def test_a_bad_step_budget_entry_is_refused_by_the_manifest_check(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    m["step_budget"] = {"step_counts": [4, 2], "metrics": ["ssim"], "higher_is_better": [True]}
    with pytest.raises(PocketdiffError, match="manifest.step_budget"):
        check_manifest(m, runtime_roles())


@pytest.fixture(scope="module")
def budget_bundle(budget_pipeline, tmp_path_factory):
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    return write_bundle(budget_pipeline[0], tmp_path_factory.mktemp("bb") / "b",
                        ExportConfig(targets=("onnx",), steps=2, guidance=7.5))


def test_export_writes_the_role_with_parity_and_its_test_vectors(budget_bundle, budget_pipeline):
    m = json.loads((budget_bundle / "manifest.json").read_text())
    comp = next(c for c in m["components"] if c["role"] == STEP_BUDGET)
    assert comp["inputs"][0]["shape"][1:] == [77, 32] and comp["outputs"][0]["shape"][1:] == [2, len(METRICS)]
    assert all(r["ok"] for runs in comp["parity"].values() for r in runs.values())
    assert m["step_budget"]["step_counts"] == [1, 2] and m["step_budget"]["metrics"] == list(METRICS)
    vectors = json.loads((budget_bundle / "test_vectors.json").read_text())["step_budget"]
    assert len(vectors) == 3 and all(v["steps"] in (1, 2) for v in vectors)
    # the vectors are the torch predictor's output on the torch text encoder's states
    from pocketdiff.export.torch_session import torch_runtime
    from pocketdiff.pipedir import load_pipeline
    from pocketdiff.architectures.step_budget import attach_step_budget

    out = budget_pipeline[0]
    pipe = attach_step_budget(load_pipeline(out), out)
    rt = RuntimePipeline.from_bundle(budget_bundle)
    ids = torch.tensor([rt.tokenizer(vectors[1]["prompt"]).input_ids])
    with torch.no_grad():
        q = pipe.step_budget(pipe.text_encoder(ids)[0])[0].numpy()
    np.testing.assert_allclose(vectors[1]["quality"], q, atol=1e-4)
    assert isinstance(pipe.step_budget, StepBudgetPredictor)
    assert torch_runtime(pipe, out / "tokenizer", m["scheduler"]["config"]).budget is not None


def test_generate_auto_chooses_and_records_the_steps(budget_bundle):
    rt = RuntimePipeline.from_bundle(budget_bundle)
    spec = rt.budget
    for request, targets in (("auto:dreamsim=1e9", {"dreamsim": 1e9}), ("auto:dreamsim=-1", {"dreamsim": -1.0})):
        res = rt.generate("a red circle", steps=request, guidance=7.5, seed=0)
        assert res.budget["targets"] == targets
        assert res.budget["steps"] == spec.choose(np.array(res.budget["predicted"]), targets)
        assert res.budget["steps"] == (1 if targets["dreamsim"] > 0 else 2)  # all reach 1e9; none reaches -1
        assert res.trace[2].role == STEP_BUDGET and res.trace[2].step is None
        fixed = rt.generate("a red circle", steps=res.budget["steps"], guidance=7.5, seed=0)
        assert res.steps == fixed.steps == res.call_counts()["unet"] and np.array_equal(res.image, fixed.image)
    res = rt.generate("a red circle", steps="auto", guidance=7.5, seed=0)
    assert res.budget["request"] == "auto" and "step_budget_s" in res.timings


def test_auto_errors_are_one_line(tiny_bundle, budget_bundle, tmp_path, capsys):
    from pocketdiff.cli import main

    assert main(["generate", "--bundle", str(tiny_bundle), "a red circle", "--steps", "auto",
                 "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "step-budget predictor" in err[0]
    assert main(["generate", "--bundle", str(budget_bundle), "a red circle", "--steps", "auto:nope",
                 "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and not (tmp_path / "x.png").exists()
    assert main(["generate", "--bundle", str(budget_bundle), "a red circle", "--steps", "auto", "--json",
                 "--out", str(tmp_path / "y.png"), "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["budget"]["steps"] in (1, 2) and out["calls"]["unet"] == out["steps"]
    assert (tmp_path / "y.png").is_file()


def test_both_kinds_export_to_onnx_and_executorch_with_parity(tmp_path):
    from pocketdiff.export.components import StepBudgetExport
    from pocketdiff.export.executorch import export_program
    from pocketdiff.runtime.sessions import ExecuTorchSession, OnnxSession, TensorSpec

    hidden = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    for kind in ("mlp", "seq"):
        torch.manual_seed(0)
        module = StepBudgetExport(StepBudgetPredictor(hidden_size=32, step_counts=(1, 2, 4), kind=kind, width=16,
                                                      layers=1, heads=2).eval())
        with torch.no_grad():
            want = module(hidden).numpy()
        path = tmp_path / f"{kind}.onnx"
        torch.onnx.export(module, (hidden,), str(path), input_names=["encoder_hidden_states"],
                          output_names=["quality"], dynamo=True)
        ort = OnnxSession(path).run({"encoder_hidden_states": hidden.numpy()})["quality"]
        np.testing.assert_allclose(ort, want, atol=1e-5)
        pte = tmp_path / f"{kind}.pte"
        export_program(module, (hidden,), pte)
        et = ExecuTorchSession(pte, [TensorSpec("encoder_hidden_states", (1, 77, 32), "float32")],
                               [TensorSpec("quality", want.shape, "float32")]).run(
            {"encoder_hidden_states": hidden.numpy()})["quality"]
        np.testing.assert_allclose(et, want, atol=1e-4)


def test_budget_build_stage_writes_the_pipeline_with_its_predictor(tiny_pipeline_dir, tmp_path):
    from pocketdiff.build import build, load_recipe
    from pocketdiff.pinned import pinned_defaults

    recipe = tmp_path / "r.toml"
    recipe.write_text('stages = ["budget"]\n[budget.data]\nn = 4\nstep_counts = [1, 2]\nchunk = 2\nguidance = 2.0\n'
                      '[budget.train]\nkinds = ["mlp"]\nsteps = 1\nbatch_size = 2\nval_fraction = 0.5\nwidth = 8\n')
    build(tiny_pipeline_dir, load_recipe(recipe), tmp_path / "work", progress=False)
    out = tmp_path / "work" / "budget"
    assert load_step_budget(out).config.kind == "mlp"
    assert load_table(tmp_path / "work" / "budget.work" / "data")["curves"].shape[:2] == (4, 2)
    assert pinned_defaults(pipeline=out).guidance == 2.0


def test_eval_auto_reports_the_steps_taken(budget_bundle, tmp_path, capsys):
    from pocketdiff.cli import main

    assert main(["eval", "--bundle", str(budget_bundle), "--steps", "auto:dreamsim=1e9", "--n", "2", "--out",
                 str(tmp_path / "e.json"), "--no-progress"]) == 0
    taken = json.loads((tmp_path / "e.json").read_text())["steps_taken"]
    assert taken == {"mean": 1.0, "histogram": {"1": 2}}  # every step count reaches 1e9: the smallest, 1
    assert "steps auto:dreamsim=1e9: mean 1.00" in capsys.readouterr().out


def test_every_app_port_replays_this_bundles_vectors(budget_bundle, ports):
    """The Kotlin and JS cores (and the runtime itself) replay this bundle's recorded run (tests/ports.py)."""
    check_all_ports(ports, budget_bundle, "tiny-budget", expect=("step_budget",))
