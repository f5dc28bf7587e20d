"""The phone latency projection (benchmarks/projection.py, benchmarks/workload.py): the roofline on a made-up
device by hand, the workload counter against a hand count, calibration recovering known parameters, the
leave-one-out error, the shipped data files, `bench project` on the tiny architecture, and bad input."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from pocketdiff.benchmarks.projection import (SHIPPED_FIGURES, SHIPPED_PROFILES, Case, DeviceProfile, Params,
                                              ProjectionConfig, calibrate, fit, leave_one_out, load_figures,
                                              load_profiles, project)
from pocketdiff.benchmarks.workload import PRECISIONS, Workload, get_precision, module_workload
from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError

W8A16 = PRECISIONS["w8a16"]  # 1 byte per weight, 2 per activation, int8 peak
# A made-up device with round numbers: 2 int8 TOPS = 1e12 MAC/s, 10 GB/s.
TOY = DeviceProfile("toy", "Toy Phone", "Toy SoC", "toy-npu", peak_int8_tops=2.0, peak_fp16_tflops=1.0,
                    bandwidth_gbs=10.0)


def _workload(*ops) -> Workload:
    """ops: (macs, weight elements, activation elements)."""
    macs, weight, act = (np.array(c, dtype=float) for c in zip(*ops))
    return Workload("hand", [f"op{i}" for i in range(len(ops))], macs, weight, act)


def _params(combine="max", traffic="all", eff=0.5, bw=1.0, overhead=1.0, cls="toy-npu"):
    return Params(combine, traffic, {cls: eff}, {cls: bw}, overhead)


def test_roofline_on_a_toy_profile_by_hand():
    # op0 compute-bound: 1e9 MACs at 1e12 x 0.5 MAC/s = 2 ms; its 1e6 weights (1 MB) + 1e6 activations (2 MB)
    # take 0.3 ms at 10 GB/s. op1 memory-bound: no MACs, 5e7 activations = 100 MB = 10 ms.
    case = Case(_workload((1e9, 1e6, 1e6), (0, 0, 5e7)), TOY, W8A16)
    assert case.predict_ms(_params("max")) == pytest.approx(2 + 10 + 1)  # + 1 ms per call
    assert case.predict_ms(_params("sum")) == pytest.approx(2 + 0.3 + 10 + 1)
    assert case.predict_ms(_params("max", "matrix")) == pytest.approx(2 + 1)  # op1 fused away
    # halve the bandwidth factor: op0 is still compute-bound (0.6 < 2 ms), op1 doubles
    assert case.predict_ms(_params("max", bw=0.5)) == pytest.approx(2 + 20 + 1)
    # fp16 runs at the fp16 peak (1 TFLOPS = 5e11 MAC/s) and moves 2-byte weights: 4 ms and 0.4 ms
    fp16 = Case(_workload((1e9, 1e6, 1e6)), TOY, get_precision("fp16"))
    assert fp16.predict_ms(_params("max")) == pytest.approx(4 + 1)
    assert fp16.predict_ms(_params("sum")) == pytest.approx(4 + 0.4 + 1)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(2048, 10), nn.Linear(10, 10)
        self.emb = nn.Embedding(100, 10)

    def forward(self, x, ids):
        h = torch.relu(self.conv(x)).flatten(1)  # flatten is a view: no data moved
        return self.fc2(self.fc2(self.fc1(h))) + self.emb(ids).sum(1)  # fc2 twice: its weights load once


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_workload_counter_matches_a_hand_count(device):
    with torch.device(device):
        module = _Tiny().eval()
        w = module_workload(module, (torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, dtype=torch.long)))
    rows = {(op, m, wt, a) for op, m, wt, a in zip(w.ops, w.macs, w.weight_elems, w.act_elems)}
    assert w.ops == ["convolution", "relu", "addmm", "addmm", "addmm", "embedding", "sum", "add"]
    assert rows == {
        ("convolution", 8 * 16 * 16 * 3 * 3 * 3, 8 * 3 * 3 * 3 + 8, 3 * 16 * 16 + 8 * 16 * 16),
        ("relu", 0, 0, 2 * 2048),
        ("addmm", 2048 * 10, 2048 * 10 + 10, 2048 + 10),  # input + output; weight and bias are weights
        ("addmm", 10 * 10, 10 * 10 + 10, 10 + 10),  # fc2's first call loads its weights
        ("addmm", 10 * 10, 0, 10 + 10),  # its second call does not
        ("embedding", 0, 4 * 10, 4 + 40),  # a lookup reads the 4 rows it gathers, not the table
        ("sum", 0, 0, 40 + 10), ("add", 0, 0, 30)}
    assert w.params == sum(p.numel() for p in module.parameters())
    assert w.bytes(W8A16).sum() == w.weight_elems.sum() + 2 * w.act_elems.sum()
    assert w.bytes(W8A16, "matrix").sum() == w.weight_elems.sum() + 2 * (2816 + 2058 + 20 + 20)


def _synthetic():
    """Two accelerator classes, two devices each, four workloads: compute-bound (5e-4 bytes per MAC), memory-bound,
    one op of each, and one so small that the per-call overhead dominates."""
    profiles = [DeviceProfile(f"{c}{i}", f"{c} {i}", "soc", c, peak, peak / 2, bw)
                for c in ("npu-a", "npu-b") for i, (peak, bw) in enumerate([(20.0, 50.0), (40.0, 70.0)])]
    workloads = [_workload((4e11, 1e6, 1e8)), _workload((0, 1e6, 2e9)), _workload((5e10, 1e6, 1e7), (0, 0, 1e9)),
                 _workload((1e8, 1e6, 1e6))]
    return [Case(w, p, W8A16) for p in profiles for w in workloads]


TRUE = Params("max", "all", {"npu-a": 0.3, "npu-b": 0.6}, {"npu-a": 0.8, "npu-b": 2.0}, 0.7)


def test_calibration_recovers_known_parameters_and_loo_error_is_zero():
    cases = _synthetic()
    observed = [c.predict_ms(TRUE) for c in cases]
    got = fit(cases, observed, "max", "all")
    for key in ("efficiency", "bandwidth"):
        for cls, value in getattr(TRUE, key).items():
            assert getattr(got, key)[cls] == pytest.approx(value, rel=1e-4), (key, cls)
    assert got.overhead_ms == pytest.approx(TRUE.overhead_ms, rel=1e-4)
    loo = leave_one_out(cases, observed, "max", "all")
    assert np.max(np.abs(np.array(loo) / observed - 1)) < 1e-4


def test_loo_error_on_perturbed_figures_is_positive():
    cases = _synthetic()
    observed = [c.predict_ms(TRUE) * f for c, f in zip(cases, np.resize([1.0, 1.25, 0.8, 1.1], len(cases)))]
    errors = np.abs(np.array(leave_one_out(cases, observed, "max", "all")) / observed - 1)
    assert errors.mean() > 0.02


def test_shipped_figures_and_profiles_are_sourced_and_calibrate():
    profiles = load_profiles(SHIPPED_PROFILES)
    figures, _ = load_figures(SHIPPED_FIGURES, profiles)
    assert {p.accelerator for p in profiles.values()} == {"qualcomm-hexagon", "apple-ane"}
    for p in profiles.values():
        assert {"peak_fp16_tflops", "bandwidth_gbs"} <= set(p.sources), p.name
    for f in figures:
        assert f.source["url"].startswith("https://github.com/") and len(f.source["commit"]) == 40, f.id
        assert f.source["quote"] and f.source["field"], f.id
    assert len({(f.device, f.component) for f in figures}) == len(figures)  # one figure per chip and component
    cal = calibrate(combine="max", traffic="matrix")
    assert len(cal["figures"]) == len(figures) and cal["loo"]["mean_abs_pct"] < 50
    assert cal["loo"]["mean_abs_pct"] >= cal["fit"]["mean_abs_pct"] > 0  # held-out is no better than in-sample


def _tiny_data(tmp_path, latency=(30.0, 60.0, 9.0, 20.0)):
    """A toy profile pair and four made-up figures of the tiny architecture."""
    profiles = {"profiles": [
        {"name": n, "device": n, "chipset": "soc", "accelerator": "toy-npu", "peak_int8_tops": t,
         "peak_fp16_tflops": t / 2, "bandwidth_gbs": b, "sources": {"peak_int8_tops": "made up"}}
        for n, t, b in (("toy-a", 0.01, 1.0), ("toy-b", 0.04, 2.0))]}
    figures = {"models": {"tiny": {"arch": "tiny"}}, "figures": [
        {"id": f"{d}-{c}", "device": d, "component": c, "batch": 1, "model": "tiny", "precision": "w8a16",
         "latency_ms": ms} for (d, c), ms in zip([(d, c) for d in ("toy-a", "toy-b") for c in ("unet", "vae_decoder")],
                                                  latency)]}
    (tmp_path / "profiles.json").write_text(json.dumps(profiles))
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    return tmp_path / "profiles.json", tmp_path / "figures.json"


def test_bench_project_cli_on_tiny_writes_json(tmp_path, capsys):
    profiles, figures = _tiny_data(tmp_path)
    out = tmp_path / "projection.json"
    rc = main(["bench", "project", "--arch", "tiny", "--steps", "4", "--profiles", str(profiles),
               "--figures", str(figures), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["config"]["arch"] == "tiny" and result["unet_batch"] == 2  # no guidance embedding: CFG
    assert [r["device"] for r in result["devices"]] == ["toy-a", "toy-b"]
    for r in result["devices"]:
        assert r["e2e_ms"] == pytest.approx(r["text_encoder_ms"] + 4 * r["unet_ms"] + r["vae_decoder_ms"])
        assert r["low_ms"] <= r["e2e_ms"] <= r["high_ms"]
    assert len(result["calibration"]["variants"]) == 4  # combine and traffic auto: every variant tried
    printed = capsys.readouterr().out
    assert "toy-a" in printed and "leave-one-out error on 4 published figures" in printed


def test_project_uses_the_guidance_embedding_for_the_unet_batch(tmp_path):
    profiles, figures = _tiny_data(tmp_path)
    config = ProjectionConfig(arch="tiny", profiles=str(profiles), figures=str(figures), combine="max", traffic="all")
    plain = project(config)
    embedded = project(config, plain["calibration"], unet_overrides={"time_cond_proj_dim": 32})
    assert embedded["guidance_embedded"] and embedded["unet_batch"] == 1
    assert embedded["workloads"]["unet"]["macs"] < plain["workloads"]["unet"]["macs"]  # one sample, not two


@pytest.mark.parametrize("argv, match", [
    (["--precision", "int4"], "unknown precision 'int4'"),
    (["--combine", "min"], "unknown combine 'min'"),
    (["--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--json", "out.txt"], "--json must be a .json file"),
    (["--profiles", "missing.json"], "cannot read missing.json"),
])
def test_bench_project_bad_input(capsys, tmp_path, argv, match):
    profiles, figures = _tiny_data(tmp_path)
    base = ["bench", "project", "--arch", "tiny", "--profiles", str(profiles), "--figures", str(figures)]
    rc = main(base + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0], err


@pytest.mark.parametrize("edit, match", [
    (lambda f: f["figures"][0].update(device="nope"), "unknown device 'nope'"),
    (lambda f: f["figures"][0].update(latency_ms=-3), "latency_ms must be a number > 0, got -3"),
    (lambda f: f["figures"][0].update(component="safety_checker"), "unknown component 'safety_checker'"),
    (lambda f: f["figures"][0].update(precision="w4a8"), "unknown precision 'w4a8'"),
    (lambda f: f["figures"][0].update(batch=1.5), "batch must be an integer >= 1, got 1.5"),
])
def test_bad_figures_are_one_line_errors(tmp_path, edit, match):
    profiles, figures = _tiny_data(tmp_path)
    data = json.loads(figures.read_text())
    edit(data)
    figures.write_text(json.dumps(data))
    with pytest.raises(PocketdiffError, match=match):
        load_figures(figures, load_profiles(profiles))


def test_bad_profile_is_a_one_line_error(tmp_path):
    profiles, _ = _tiny_data(tmp_path)
    data = json.loads(profiles.read_text())
    data["profiles"][1]["bandwidth_gbs"] = 0
    profiles.write_text(json.dumps(data))
    with pytest.raises(PocketdiffError, match="profile 'toy-b': bandwidth_gbs must be a number > 0, got 0"):
        load_profiles(profiles)
