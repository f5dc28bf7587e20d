"""Phone latency projection: a roofline model calibrated on published per-component phone figures.

A component call's time on a device is the sum over its aten ops (``benchmarks/workload.py``) of

    combine(MACs / (peak MAC rate x efficiency), bytes / (DRAM bandwidth x bandwidth factor))

plus a fixed overhead per call, where ``combine`` is ``max`` (a roofline: each op is bound by compute or by
memory) or ``sum`` (no overlap). The peak and the bandwidth come from a :class:`DeviceProfile`
(``device_profiles.json``, every value sourced); the precision (``workload.PRECISIONS``) picks the int8 or
fp16 peak and the bytes per weight and per activation. ``traffic`` picks which activations count: ``all``
ops', or only the matrix ops' (``matrix``: elementwise ops fused away).

The free parameters are one efficiency and one bandwidth factor per accelerator class (a profile's
``accelerator``: ``qualcomm-hexagon``, ``apple-ane``) and one overhead shared by all. They are fitted by
Levenberg-Marquardt least squares on log latency to the published figures (``phone_figures.json``), and
each figure is then predicted by a fit that left it out (leave-one-out). ``combine``/``traffic`` ``auto``
keeps the variant with the lowest mean leave-one-out error. A projection composes one generation:
text encoder + steps x UNet + decoder, with an error band of the class's largest leave-one-out error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from pocketdiff.architectures.factory import build_pipeline, get_architecture, load_unet_spec, text_encoder_config
from pocketdiff.benchmarks.components import meta_pipeline
from pocketdiff.benchmarks.workload import PRECISIONS, Precision, Workload, component_workload, get_precision
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.pipedir import inspect_pipeline, read_json

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SHIPPED_PROFILES, SHIPPED_FIGURES = HERE / "device_profiles.json", HERE / "phone_figures.json"
COMBINES, TRAFFIC, COMPONENTS = ("max", "sum"), ("all", "matrix"), ("text_encoder", "unet", "vae_decoder")
_STARTS = [(e, b) for e in (0.1, 0.5) for b in (0.3, 3.0)]  # (efficiency, bandwidth factor) starting points


@dataclass(frozen=True)
class ProjectionConfig:
    """What `pocketdiff bench project` projects, and from which data."""

    arch: str = "sd15"  # named architecture, built on the meta device (no weights); ignored with --pipeline
    pipeline: str | None = None  # a diffusers pipeline folder instead of --arch
    unet_spec: str | None = None  # JSON of UNet config overrides for --arch (e.g. a slim spec)
    resolution: int | None = None  # image size for --arch (default: its native size)
    steps: int = 8  # denoising steps
    precision: str = "w8a16"  # deployed precision: w8a16, fp16 or w6a16
    unet_batch: int | None = None  # UNet batch per step (default: 1 with a guidance embedding, else 2 for CFG)
    combine: str = "auto"  # per-op time: max (roofline), sum, or auto (the lower leave-one-out error)
    traffic: str = "auto"  # activation bytes of all ops, of matrix ops only (fused), or auto
    target_ms: float = 2000.0  # the end-to-end budget the verdict compares with
    profiles: str | None = None  # device profiles, JSON (default: the shipped benchmarks/device_profiles.json)
    figures: str | None = None  # published per-component figures, JSON (default: benchmarks/phone_figures.json)

    def validate(self) -> None:
        get_precision(self.precision)
        if self.combine not in (*COMBINES, "auto"):
            raise choice_error("combine", self.combine, (*COMBINES, "auto"))
        if self.traffic not in (*TRAFFIC, "auto"):
            raise choice_error("traffic", self.traffic, (*TRAFFIC, "auto"))
        for name in ("steps", "unet_batch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PocketdiffError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.target_ms > 0:
            raise PocketdiffError(f"target_ms must be > 0, got {self.target_ms!r}")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    device: str
    chipset: str
    accelerator: str  # calibration class
    peak_int8_tops: float
    peak_fp16_tflops: float
    bandwidth_gbs: float
    sources: dict = field(default_factory=dict)
    estimates: tuple = ()

    def mac_rate(self, precision: Precision) -> float:
        """Peak multiply-accumulates per second at ``precision``'s compute type (2 operations per MAC)."""
        return (self.peak_int8_tops if precision.compute == "int8" else self.peak_fp16_tflops) * 1e12 / 2


@dataclass(frozen=True)
class Figure:
    id: str
    device: str  # a profile name
    component: str
    batch: int
    model: str  # a key of the figures file's "models"
    precision: str
    latency_ms: float
    device_label: str = ""
    chipset: str = ""
    runtime: str = ""
    source: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Params:
    combine: str
    traffic: str
    efficiency: dict  # accelerator -> fraction of the peak MAC rate the matrix ops reach
    bandwidth: dict  # accelerator -> effective fraction of DRAM bandwidth (> 1: traffic kept on chip)
    overhead_ms: float  # per call


def _positive(entry: dict, key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise PocketdiffError(f"{where}: {key} must be a number > 0, got {value!r}")
    return float(value)


def load_profiles(path: str | Path) -> dict[str, DeviceProfile]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), list) or not data["profiles"]:
        raise PocketdiffError(f"device profiles {path} must be a JSON object with a non-empty 'profiles' list")
    out = {}
    for p in data["profiles"]:
        where = f"device profiles {path}, profile {p.get('name')!r}"
        missing = [k for k in ("name", "device", "chipset", "accelerator") if not isinstance(p.get(k), str)]
        if missing:
            raise PocketdiffError(f"{where}: missing or non-text {', '.join(missing)}")
        nums = {k: _positive(p, k, where) for k in ("peak_int8_tops", "peak_fp16_tflops", "bandwidth_gbs")}
        out[p["name"]] = DeviceProfile(p["name"], p["device"], p["chipset"], p["accelerator"], **nums,
                                       sources=dict(p.get("sources", {})), estimates=tuple(p.get("estimates", ())))
    return out


def load_figures(path: str | Path, profiles: dict[str, DeviceProfile]) -> tuple[list[Figure], dict]:
    """(figures, models) of a figures file, each checked against ``profiles`` and the known roles/precisions."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("figures"), list) or not data["figures"]:
        raise PocketdiffError(f"phone figures {path} must be a JSON object with a non-empty 'figures' list")
    models = data.get("models", {})
    figures = []
    for f in data["figures"]:
        where = f"phone figures {path}, figure {f.get('id')!r}"
        if f.get("device") not in profiles:
            raise PocketdiffError(f"{where}: unknown device {f.get('device')!r}; profiles: {', '.join(profiles)}")
        if f.get("component") not in COMPONENTS:
            raise PocketdiffError(f"{where}: unknown component {f.get('component')!r}; allowed: {', '.join(COMPONENTS)}")
        if f.get("model") not in models:
            raise PocketdiffError(f"{where}: unknown model {f.get('model')!r}; models: {', '.join(models)}")
        if f.get("precision") not in PRECISIONS:
            raise PocketdiffError(f"{where}: unknown precision {f.get('precision')!r}; allowed: {', '.join(PRECISIONS)}")
        if isinstance(f.get("batch"), bool) or not isinstance(f.get("batch"), int) or f["batch"] < 1:
            raise PocketdiffError(f"{where}: batch must be an integer >= 1, got {f.get('batch')!r}")
        figures.append(Figure(**{**f, "latency_ms": _positive(f, "latency_ms", where)}))
    return figures, models


class Case:
    """One workload on one device at one precision, its ops sorted by arithmetic intensity so that the
    roofline sum is a search: ops with bytes/MAC at or below bandwidth/MAC rate are compute-bound."""

    def __init__(self, workload: Workload, profile: DeviceProfile, precision: Precision):
        self.accelerator, self.mac_rate = profile.accelerator, profile.mac_rate(precision)
        self.bandwidth = profile.bandwidth_gbs * 1e9
        self.sorted = {}
        for traffic in TRAFFIC:
            macs, moved = workload.macs, workload.bytes(precision, traffic)
            intensity = np.where(macs > 0, moved / np.maximum(macs, 1), np.inf)
            order = np.argsort(intensity, kind="stable")
            self.sorted[traffic] = (intensity[order], np.concatenate([[0.0], np.cumsum(macs[order])]),
                                    np.concatenate([[0.0], np.cumsum(moved[order])]))

    def predict_ms(self, p: Params) -> float:
        rate = self.mac_rate * p.efficiency[self.accelerator]
        bandwidth = self.bandwidth * p.bandwidth[self.accelerator]
        intensity, macs, moved = self.sorted[p.traffic]
        if p.combine == "sum":
            return (macs[-1] / rate + moved[-1] / bandwidth) * 1e3 + p.overhead_ms
        k = int(np.searchsorted(intensity, bandwidth / rate, side="right"))
        return (macs[k] / rate + (moved[-1] - moved[k]) / bandwidth) * 1e3 + p.overhead_ms


def meta_models(arch: str = "sd15", pipeline: str | Path | None = None, resolution: int | None = None,
                unet_overrides: dict | None = None, text_overrides: dict | None = None):
    """A pipeline's three models on the meta device (no weights): from a folder, or a named architecture with
    optional UNet and text-encoder config overrides."""
    if pipeline:
        vae_class = inspect_pipeline(pipeline).vae_config.get("_class_name", "AutoencoderKL")
        if vae_class != "AutoencoderKL":  # meta_pipeline would build a full KL decoder from its config
            raise PocketdiffError(f"pipeline {pipeline}: its VAE is a {vae_class}; a folder's decoder is built as an "
                                  "AutoencoderKL only, so project its architecture with --arch instead")
        return meta_pipeline(pipeline)
    with torch.device("meta"):
        pipe = build_pipeline(arch, seed=0, resolution=resolution, unet_overrides=unet_overrides)
        text = pipe.text_encoder
        if text_overrides:
            config = {**text_encoder_config(get_architecture(arch)), **text_overrides}
            text = CLIPTextModel(CLIPTextConfig(**config)).eval()
    return SimpleNamespace(unet=pipe.unet.eval(), vae=pipe.vae.eval(), text_encoder=text)


def figure_cases(figures: list[Figure], models: dict, profiles: dict[str, DeviceProfile]) -> list[Case]:
    """A :class:`Case` per figure; each model is built once on the meta device and each workload traced once."""
    pipes, workloads, cases = {}, {}, []
    for f in figures:
        if f.model not in pipes:
            m = models[f.model]
            pipes[f.model] = meta_models(m.get("arch", "sd15"), unet_overrides=m.get("unet_overrides"),
                                         text_overrides=m.get("text_encoder_overrides"))
        key = (f.model, f.component, f.batch)
        if key not in workloads:
            workloads[key] = component_workload(pipes[f.model], f.component, f.batch)
        cases.append(Case(workloads[key], profiles[f.device], get_precision(f.precision)))
    return cases


def _unpack(x: np.ndarray, classes: list[str], combine: str, traffic: str) -> Params:
    n = len(classes)
    v = np.exp(np.clip(x, -30.0, 30.0))
    return Params(combine, traffic, dict(zip(classes, v[:n])), dict(zip(classes, v[n:2 * n])), float(v[-1]))


def _levenberg_marquardt(residuals, x: np.ndarray, iterations: int = 100) -> tuple[np.ndarray, float]:
    r = residuals(x)
    cost, damping = float(r @ r), 1e-2
    for _ in range(iterations):
        h = 1e-6
        jac = np.stack([(residuals(x + h * e) - r) / h for e in np.eye(len(x))], axis=1)
        a, g = jac.T @ jac, jac.T @ r
        while damping < 1e10:
            trial = x - np.linalg.solve(a + damping * np.diag(np.diag(a) + 1e-12), g)
            r_trial = residuals(trial)
            if (c := float(r_trial @ r_trial)) < cost:
                done = cost - c < 1e-12 * (1 + cost)
                x, r, cost, damping = trial, r_trial, c, max(damping / 3, 1e-9)
                break
            damping *= 4
        else:
            break
        if done:
            break
    return x, cost


def fit(cases: list[Case], observed_ms, combine: str = "max", traffic: str = "all") -> Params:
    """Least squares on log latency: the efficiency and bandwidth factor of every accelerator class in
    ``cases`` and one per-call overhead, from a few starting points; the best fit wins."""
    classes = sorted({c.accelerator for c in cases})
    target = np.log(np.asarray(observed_ms, dtype=float))

    def residuals(x):
        p = _unpack(x, classes, combine, traffic)
        with np.errstate(all="ignore"):
            r = np.log([c.predict_ms(p) for c in cases]) - target
        return np.where(np.isfinite(r), r, 1e6)

    best = None
    for eff, bw in _STARTS:
        x0 = np.log([eff] * len(classes) + [bw] * len(classes) + [0.5])
        x, cost = _levenberg_marquardt(residuals, x0)
        if best is None or cost < best[1]:
            best = (x, cost)
    return _unpack(best[0], classes, combine, traffic)


def leave_one_out(cases: list[Case], observed_ms, combine: str, traffic: str) -> list[float]:
    """Each figure predicted (ms) by a fit on all the others."""
    observed = list(observed_ms)
    return [cases[i].predict_ms(fit(cases[:i] + cases[i + 1:], observed[:i] + observed[i + 1:], combine, traffic))
            for i in range(len(cases))]


def _errors(predicted, observed) -> dict:
    e = [p / o - 1 for p, o in zip(predicted, observed)]
    return {"mean_abs_pct": 100 * float(np.mean(np.abs(e))), "max_abs_pct": 100 * float(np.max(np.abs(e))),
            "max_abs_log": float(np.max(np.abs(np.log1p(e))))}


def calibrate(profiles_path: str | Path | None = None, figures_path: str | Path | None = None,
              combine: str = "auto", traffic: str = "auto") -> dict:
    """Fit the model to the published figures (every variant ``auto`` leaves open), report each variant's
    leave-one-out error, and keep the best. Returns a JSON-able dict with the fitted ``params``, per-figure
    rows (published, fitted, leave-one-out) and the error statistics overall and per accelerator class."""
    ProjectionConfig(combine=combine, traffic=traffic).validate()
    shown = {"profiles_path": str(profiles_path or "shipped"), "figures_path": str(figures_path or "shipped")}
    profiles_path, figures_path = profiles_path or SHIPPED_PROFILES, figures_path or SHIPPED_FIGURES
    profiles = load_profiles(profiles_path)
    figures, models = load_figures(figures_path, profiles)
    cases = figure_cases(figures, models, profiles)
    observed = [f.latency_ms for f in figures]
    variants = []
    for c in (COMBINES if combine == "auto" else (combine,)):
        for t in (TRAFFIC if traffic == "auto" else (traffic,)):
            loo = leave_one_out(cases, observed, c, t)
            variants.append({"combine": c, "traffic": t, "loo": _errors(loo, observed), "loo_ms": loo})
            log.info("variant combine=%s traffic=%s: leave-one-out mean %.1f%%", c, t, variants[-1]["loo"]["mean_abs_pct"])
    chosen = min(variants, key=lambda v: v["loo"]["mean_abs_pct"])
    params = fit(cases, observed, chosen["combine"], chosen["traffic"])
    fitted = [c.predict_ms(params) for c in cases]
    rows = [{**{k: getattr(f, k) for k in ("id", "device", "device_label", "chipset", "component", "batch", "model",
                                             "precision", "latency_ms")},
             "fitted_ms": fm, "loo_ms": lm, "loo_error_pct": 100 * (lm / f.latency_ms - 1)}
            for f, fm, lm in zip(figures, fitted, chosen["loo_ms"])]
    by_class = {}
    for cls in sorted({profiles[f.device].accelerator for f in figures}):
        idx = [i for i, f in enumerate(figures) if profiles[f.device].accelerator == cls]
        by_class[cls] = {"figures": len(idx), **_errors([chosen["loo_ms"][i] for i in idx], [observed[i] for i in idx])}
    return {"params": asdict(params), "fit": _errors(fitted, observed), "loo": chosen["loo"], "loo_by_class": by_class,
            "variants": [{k: v[k] for k in ("combine", "traffic", "loo")} for v in variants], "figures": rows,
            "profiles": {n: asdict(p) for n, p in profiles.items()}, **shown}


def project(config: ProjectionConfig, calibration: dict | None = None, unet_overrides: dict | None = None) -> dict:
    """Project one generation (text encoder + steps x UNet + decoder) of ``config``'s model on every device
    profile whose accelerator class was calibrated, with the class's leave-one-out error band and a verdict
    against ``target_ms``. ``calibration`` (from :func:`calibrate`) is computed when not given;
    ``unet_overrides`` is merged over ``config.unet_spec``."""
    config.validate()
    calibration = calibration or calibrate(config.profiles, config.figures, config.combine, config.traffic)
    params = Params(**calibration["params"])
    profiles = load_profiles(config.profiles or SHIPPED_PROFILES)
    precision = get_precision(config.precision)
    overrides = {**(load_unet_spec(config.unet_spec) if config.unet_spec else {}), **(unet_overrides or {})}
    pipe = meta_models(config.arch, config.pipeline, config.resolution, overrides or None)
    embedded = getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None
    batch = config.unet_batch or (1 if embedded else 2)
    workloads = {role: component_workload(pipe, role, batch if role != "vae_decoder" else 1) for role in COMPONENTS}
    rows = []
    for prof in profiles.values():
        if prof.accelerator not in params.efficiency:
            log.info("skipping %s: accelerator %s has no calibration figures", prof.name, prof.accelerator)
            continue
        ms = {role: Case(w, prof, precision).predict_ms(params) for role, w in workloads.items()}
        e2e = ms["text_encoder"] + config.steps * ms["unet"] + ms["vae_decoder"]
        band = calibration["loo_by_class"][prof.accelerator]["max_abs_log"]
        low, high = e2e * math.exp(-band), e2e * math.exp(band)
        verdict = "yes" if high < config.target_ms else "no" if low > config.target_ms else "within error"
        rows.append({"device": prof.name, "device_label": prof.device, "chipset": prof.chipset,
                     "accelerator": prof.accelerator, **{f"{r}_ms": v for r, v in ms.items()}, "e2e_ms": e2e,
                     "low_ms": low, "high_ms": high, f"under_{config.target_ms:g}_ms": verdict})
    return {"config": asdict(config), "unet_overrides": overrides or None, "guidance_embedded": embedded,
            "unet_batch": batch, "workloads": {r: w.summary(precision) for r, w in workloads.items()},
            "devices": rows, "calibration": calibration}


def project_arch(arch: str = "sd15", steps: int = 8, precision: str = "w8a16", unet_spec: str | None = None,
                 resolution: int | None = None, unet_overrides: dict | None = None,
                 calibration: dict | None = None, **config) -> dict:
    """:func:`project` for a named architecture (for scripts: e.g. ``scripts/sd15_benchmark.py``)."""
    return project(ProjectionConfig(arch=arch, steps=steps, precision=precision, unet_spec=unet_spec,
                                    resolution=resolution, **config), calibration, unet_overrides)


def format_projection(result: dict) -> str:
    """A plain-text table of :func:`project`'s result (what the CLI prints)."""
    cfg, cal = result["config"], result["calibration"]
    key = f"under_{cfg['target_ms']:g}_ms"
    lines = [f"{'device':<30}{'text enc':>10}{'UNet':>10}{'decoder':>10}{'e2e ms':>10}{'band ms':>17}  "
             f"< {cfg['target_ms']:g} ms?"]
    for r in result["devices"]:
        band = f"{r['low_ms']:.0f}-{r['high_ms']:.0f}"
        lines.append(f"{r['device_label'][:29]:<30}{r['text_encoder_ms']:>10.1f}{r['unet_ms']:>10.1f}"
                     f"{r['vae_decoder_ms']:>10.1f}{r['e2e_ms']:>10.0f}{band:>17}  {r[key]}")
    p = cal["params"]
    lines.append(f"{cfg['steps']} steps, UNet batch {result['unet_batch']}, {cfg['precision']}; model: per-op "
                 f"{p['combine']} of compute and memory, {p['traffic']}-op traffic, overhead {p['overhead_ms']:.2f} ms")
    lines.append("leave-one-out error on {} published figures: mean {:.1f}%, max {:.1f}% ({})".format(
        len(cal["figures"]), cal["loo"]["mean_abs_pct"], cal["loo"]["max_abs_pct"],
        "; ".join(f"{c}: mean {v['mean_abs_pct']:.1f}%, max {v['max_abs_pct']:.1f}%"
                  for c, v in cal["loo_by_class"].items())))
    return "\n".join(lines)
