"""Stage ``adadiff-calibrate``: choose an AdaDiff UNet's exit threshold for the deployed sampler.

Calibration prompts (``n_prompts`` captions of ``data``'s train split, drawn apart from the evaluation's
validation prompts) are sampled through the runtime's own loop (``runtime/sampler.py`` on the pipeline's torch
modules, the ``adadiff`` policy) with the deployed scheduler, steps and guidance, first at threshold 0 (never
exit: the full UNet; every head still runs, so every uncertainty it would see is recorded), then at each
threshold of the sweep: ``thresholds``, or ``n_thresholds`` quantiles of those recorded uncertainties (per call
the larger of the CFG halves', the value the policy compares).

Per threshold, from the runs' call traces and final latents:

- ``macs``: UNet MACs per image (every segment and head call, at its batch) over the plain UNet's at the same
  sampler and steps (MACs per call counted once per role by ``FlopCounterMode``);
- ``proxy``: the final latents' squared error to the full UNet's, over the full latents' mean square;
- ``exits``: per step, how many prompts stopped at each level (0: the full UNet).

The rule picks the threshold: ``macs`` (the lowest proxy among thresholds at or under ``target_macs``) or
``proxy`` (the fewest MACs among thresholds at or under ``max_proxy``). The curve, the rule and the choice go
into the UNet config's ``adadiff_schedule`` (so the export writes them into the manifest's ``sampler``), the
stage record (which pins the sampler) and ``WORKDIR/curve.{json,png}``. Each threshold's result is appended to
``WORKDIR/curve.jsonl`` as it finishes: a rerun (after a kill) does only the missing ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pocketdiff.architectures.exit_unet import adadiff_params, as_exit_unet, is_exit_unet
from pocketdiff.benchmarks.components import component_flops, meta_pipeline
from pocketdiff.distill.data import captioned_samples, check_data_source
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.components import pipeline_roles
from pocketdiff.export.torch_session import torch_runtime
from pocketdiff.pinned import deployed_sampler
from pocketdiff.pipedir import StageRecord, atomic_output_file, inspect_pipeline, load_pipeline, read_history, \
    start_stage, write_pipeline
from pocketdiff.runtime.policies import UNET, exit_levels, make_policy
from pocketdiff.runtime.policies.adadiff import UNCERTAINTY
from pocketdiff.runtime.sampler import VAE_DECODER
from pocketdiff.runtime.schedulers import get_scheduler_entry
from pocketdiff.runtime.sessions import ShapeSession

RULES = ("macs", "proxy")


@dataclass
class AdaDiffCalibrateConfig:
    scheduler: str = ""  # the deployed sampler; "": the pipeline's pinned one, else its own
    sampler_steps: int = 0  # 0: the pipeline's pinned steps, else 25
    guidance: float = 0.0  # 0: the pipeline's pinned guidance, else 7.5
    n_prompts: int = 64
    thresholds: tuple[float, ...] = ()  # (): n_thresholds quantiles of the uncertainties the full runs saw
    n_thresholds: int = 12
    rule: str = "macs"
    target_macs: float = 0.70  # rule "macs": the best proxy at or under this fraction of the UNet's MACs
    max_proxy: float = 0.05  # rule "proxy": the fewest MACs at or under this proxy
    data: str = "toyworld"
    seed: int = 0

    def validate(self) -> "AdaDiffCalibrateConfig":
        if self.rule not in RULES:
            raise choice_error("adadiff-calibrate rule", self.rule, RULES)
        if self.n_prompts < 1 or self.n_thresholds < 1:
            raise PocketdiffError(f"adadiff-calibrate needs n_prompts >= 1 and n_thresholds >= 1, got {self.n_prompts}, "
                                  f"{self.n_thresholds}")
        bad = [t for t in self.thresholds if not 0.0 <= t <= 1.0]
        if bad:
            raise PocketdiffError(f"adadiff-calibrate thresholds must be in [0, 1], got {bad[0]}")
        if not 0.0 < self.target_macs <= 1.0 or self.max_proxy < 0:
            raise PocketdiffError(f"target_macs must be in (0, 1] and max_proxy >= 0, got {self.target_macs}, "
                                  f"{self.max_proxy}")
        if self.scheduler:
            get_scheduler_entry(self.scheduler)
        if self.sampler_steps < 0 or self.guidance < 0:
            raise PocketdiffError(f"sampler_steps and guidance must be >= 0 (0: the pipeline's pinned), got "
                                  f"{self.sampler_steps}, {self.guidance}")
        check_data_source(self.data, "adadiff-calibrate data source")
        return self


class _Watch:
    """A session that keeps every call's ``uncertainty`` output (an exit head's)."""

    def __init__(self, session, seen: list):
        self.session, self.inputs, self.outputs, self.seen = session, session.inputs, session.outputs, seen
        self.fixed_batch, self.path = session.fixed_batch, session.path

    def run(self, feeds):
        out = self.session.run(feeds)
        self.seen.append(float(np.max(out[UNCERTAINTY])))
        return out


def role_macs(pipeline_dir: str | Path, roles) -> dict[str, int]:
    """MACs of one batch-1 call of each role (counted on the meta device)."""
    pipe = meta_pipeline(pipeline_dir)
    return {role: component_flops(pipe, role, 1)["macs"] for role in roles}


@dataclass
class Sweep:
    """The runs of one calibration: the runtime, prompts, sampler, per-role MACs and the full UNet's latents."""

    rt: object
    prompts: list[str]
    sampler: tuple[str, int, float]
    macs: dict[str, int]
    full: np.ndarray = field(default=None)

    def run(self, policy, watch: list | None = None, desc: str | None = None) -> tuple[np.ndarray, list[list]]:
        """(final latents [N, C, h, w], each prompt's trace); a progress bar over the prompts with ``desc``."""
        from tqdm import tqdm

        scheduler, steps, guidance = self.sampler
        sessions = dict(self.rt.sessions)
        if watch is not None:
            sessions = {r: (_Watch(s, watch) if r.startswith("unet_exit") else s) for r, s in sessions.items()}
        rt = self.rt.with_sessions(sessions, policy)
        latents, traces = [], []
        for i, prompt in enumerate(tqdm(self.prompts, desc=desc, disable=desc is None, leave=False)):
            last = {}
            result = rt.generate(prompt, steps=steps, guidance=guidance, seed=i, scheduler=scheduler, truncate=True,
                                 on_step=lambda k, x: last.__setitem__("x", x))
            latents.append(last["x"][0])
            traces.append(result.trace)
        return np.stack(latents), traces

    def point(self, threshold: float, latents: np.ndarray, traces: list[list]) -> dict:
        steps = self.sampler[1]
        unet_calls = [c for tr in traces for c in tr if c.step is not None]
        spent = sum(self.macs[c.role] * c.batch for c in unet_calls)
        batch = max(c.batch for c in unet_calls)
        full = self.macs[UNET] * batch * steps * len(traces)
        levels = np.array([exit_levels(tr, steps) for tr in traces])  # [N, S]
        counts = [[int((levels[:, i] == lv).sum()) for lv in range(int(levels.max()) + 1)] for i in range(steps)]
        proxy = float(((latents - self.full) ** 2).mean() / (self.full ** 2).mean())
        return {"threshold": float(threshold), "macs": spent / full, "proxy": proxy, "exits": counts}


def choose(curve: list[dict], cfg: AdaDiffCalibrateConfig) -> dict:
    """The point the rule picks; one ``error:`` line when no threshold meets it."""
    if cfg.rule == "macs":
        ok = [p for p in curve if p["macs"] <= cfg.target_macs]
        if not ok:
            raise PocketdiffError(f"adadiff-calibrate: no threshold reaches target_macs {cfg.target_macs} (the cheapest "
                                  f"is {min(p['macs'] for p in curve):.3f}); raise it or add thresholds")
        return min(ok, key=lambda p: (p["proxy"], p["macs"]))
    ok = [p for p in curve if p["proxy"] <= cfg.max_proxy]
    return min(ok, key=lambda p: (p["macs"], p["proxy"]))  # threshold 0 (proxy 0) is always in the curve


def plot_curve(curve: list[dict], chosen: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    pts = sorted(curve, key=lambda p: p["macs"])
    ax.plot([p["macs"] for p in pts], [p["proxy"] for p in pts], "o-", color="tab:blue", ms=4)
    for p in pts:
        ax.annotate(f"{p['threshold']:.3f}", (p["macs"], p["proxy"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.plot([chosen["macs"]], [chosen["proxy"]], "*", color="tab:red", ms=14, label="chosen")
    ax.set_xlabel("UNet MACs per image / the full UNet's")
    ax.set_ylabel("final-latent error to the full UNet (relative MSE)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _done(path: Path) -> dict[float, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                p = json.loads(line)
                out[p["threshold"]] = p
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill
    return out


def calibrate(pipeline_dir: str | Path, cfg: AdaDiffCalibrateConfig, workdir: Path, progress: bool = True
              ) -> tuple[list[dict], dict, tuple[str, int, float]]:
    """(the curve, the chosen point, the sampler) for ``pipeline_dir``'s exit UNet; cached in ``workdir``."""
    from tqdm import tqdm

    pipe = load_pipeline(pipeline_dir)
    if not is_exit_unet(pipe.unet):
        raise PocketdiffError(f"adadiff-calibrate needs a pipeline with AdaDiff exits (adadiff-train's output); "
                              f"{pipeline_dir} has a plain UNet")
    sampler = deployed_sampler(pipeline_dir, cfg.scheduler, cfg.sampler_steps, cfg.guidance)
    info = inspect_pipeline(pipeline_dir)
    roles = pipeline_roles(pipe)
    rt = torch_runtime(pipe, info.tokenizer_dir, get_scheduler_entry(sampler[0]).config_for(info.scheduler_config),
                       roles=roles)
    decoder = rt.sessions[VAE_DECODER]
    rt = rt.with_sessions({**rt.sessions, VAE_DECODER: ShapeSession(decoder.inputs, decoder.outputs)})
    prompts = captioned_samples(cfg.data, cfg.n_prompts, cfg.seed + 53, "train").captions
    sweep = Sweep(rt, prompts, sampler, role_macs(pipeline_dir, [r for r in roles if r.startswith("unet")]))
    made_by = {"pipeline": str(Path(pipeline_dir).resolve()), "sampler": list(sampler), "prompts": cfg.n_prompts,
               "data": cfg.data, "seed": cfg.seed}
    full_path, curve_path = workdir / "full.npz", workdir / "curve.jsonl"
    if full_path.is_file() and json.loads(str(np.load(full_path)["made_by"])) != made_by:
        raise PocketdiffError(f"{workdir} holds a calibration of another pipeline, sampler or prompt set; use a new "
                              "work dir or delete it")
    if not full_path.is_file():
        seen: list[float] = []
        latents, _ = sweep.run(make_policy("adadiff", adadiff_params(pipe.unet, 0.0)), watch=seen,
                               desc="adadiff full-UNet runs" if progress else None)
        with atomic_output_file(full_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, latents=latents, uncertainty=np.array(seen), made_by=json.dumps(made_by))
    saved = np.load(full_path)
    sweep.full = saved["latents"]
    grid = cfg.thresholds or tuple(np.quantile(saved["uncertainty"], np.linspace(0.05, 1.0, cfg.n_thresholds)))
    grid = sorted({0.0, *(round(float(t), 6) for t in grid)})
    done = _done(curve_path)
    for tau in tqdm([t for t in grid if t not in done], desc="adadiff thresholds", disable=not progress):
        latents, traces = sweep.run(make_policy("adadiff", adadiff_params(pipe.unet, tau)),
                                    desc=f"threshold {tau:.4f}" if progress else None)
        done[tau] = sweep.point(tau, latents, traces)
        with open(curve_path, "a") as f:
            f.write(json.dumps(done[tau]) + "\n")
    curve = [done[t] for t in grid]
    return curve, choose(curve, cfg), sampler


def adadiff_calibrate(pipeline_dir: str | Path, out_dir: str | Path, cfg: AdaDiffCalibrateConfig,
                      workdir: str | Path, progress: bool = True, overwrite: bool = False) -> Path:
    """Calibrate ``pipeline_dir``'s exit threshold; write the pipeline with it (and the curve) to ``out_dir``."""
    from diffusers import StableDiffusionPipeline

    cfg.validate()
    workdir = start_stage(out_dir, workdir, overwrite)
    curve, chosen, sampler = calibrate(pipeline_dir, cfg, workdir, progress)
    scheduler, steps, guidance = sampler
    pins = {"steps": steps, "guidance": guidance, "scheduler": scheduler}
    calibration = {"rule": cfg.rule, "target_macs": cfg.target_macs, "max_proxy": cfg.max_proxy,
                   "prompts": cfg.n_prompts, "curve": [{k: p[k] for k in ("threshold", "macs", "proxy")} for p in curve]}
    (workdir / "curve.json").write_text(json.dumps({"sampler": list(sampler), "chosen": chosen, "curve": curve,
                                                    "calibration": calibration}, indent=1) + "\n")
    plot_curve(curve, chosen, workdir / "curve.png", f"adadiff-calibrate: {scheduler} {steps} steps, guidance "
                                                     f"{guidance}, {cfg.n_prompts} prompts")
    pipe = load_pipeline(pipeline_dir)
    schedule = {**pins, "threshold": chosen["threshold"], "calibration": calibration}
    unet = as_exit_unet(pipe.unet, pipe.unet.config.adadiff_exits, dict(pipe.unet.config.adadiff_head), schedule)
    out = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    summary = {"threshold": chosen["threshold"], "macs": chosen["macs"], "proxy": chosen["proxy"]}
    history = [*read_history(pipeline_dir), StageRecord("adadiff-calibrate", {**asdict(cfg), "pins": pins,
                                                                              "summary": summary})]
    return write_pipeline(out, out_dir, history, overwrite=overwrite)
