"""Action evaluation for UNet slimming (SnapFusion §3.3): the value of removing or restoring each block.

Quality proxy: the mean squared difference between the elastic UNet's noise prediction (with the
current removals) and the frozen full teacher's, over a fixed probe set of noisy latents at several
timesteps with their text conditions. It is the cheapest signal that moves with every single block
(CLIP score and attribute accuracy need full sampling runs per candidate, tens of seconds each on the
toy teacher; this needs one UNet call per probe batch). The chosen architecture is then checked with
the real metrics (FID, CLIP score, attribute accuracy) in the stage report.

Latency: each block's median from a per-block latency table (``benchmarks/blocks.py``) of the chosen
target, so a phone's table can drive the choice.

Actions:
- ``remove`` (SnapFusion's A-/R-): ``d_quality`` = proxy(removed + {b}) - proxy(removed) >= 0 in
  practice, ``d_latency_ms`` = -latency(b); value = d_quality / latency(b), the quality lost per ms
  saved. Lower is better.
- ``restore`` (A+/R+): ``d_quality`` = proxy(removed - {b}) - proxy(removed) (a gain is negative),
  ``d_latency_ms`` = +latency(b); value = -d_quality / latency(b), the quality regained per ms spent.
  Higher is better.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pocketdiff.architectures.elastic_unet import ElasticUNet
from pocketdiff.architectures.slim_unet import materialise
from pocketdiff.benchmarks.blocks import load_latency_table
from pocketdiff.distill.kd import KDJob, KDTrainConfig, encoded_pool
from pocketdiff.loop import Interrupted, LoopConfig, config_hash, train
from pocketdiff.distributed import broadcast, device
from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import StageRecord, atomic_output_file, load_pipeline, read_history, read_json, write_pipeline


@dataclass(frozen=True)
class Probe:
    """Fixed UNet inputs and the teacher's outputs on them: lists of [B, C, h, w], [B], [B, 77, D], [B, C, h, w]."""

    samples: list[torch.Tensor]
    timesteps: list[torch.Tensor]
    hidden: list[torch.Tensor]
    teacher_out: list[torch.Tensor]


@torch.no_grad()
def make_probe(teacher_unet, latents: torch.Tensor, hidden: torch.Tensor, noise_sched,
               timesteps=(100, 400, 700, 950), seed: int = 0) -> Probe:
    """Noise ``latents`` [N, C, h, w] (with text states ``hidden`` [N, 77, D]) to each timestep and record
    the teacher's prediction."""
    g = torch.Generator().manual_seed(seed)
    probe = Probe([], [], [], [])
    for t in timesteps:
        tt = torch.full((len(latents),), int(t), dtype=torch.long, device=latents.device)
        noisy = noise_sched.add_noise(latents, torch.randn(latents.shape, generator=g).to(latents.device), tt)
        probe.samples.append(noisy)
        probe.timesteps.append(tt)
        probe.hidden.append(hidden)
        probe.teacher_out.append(teacher_unet(noisy, tt, hidden).sample)
    return probe


@torch.no_grad()
def quality_proxy(elastic, probe: Probe, removed) -> float:
    """Mean squared difference to the teacher's prediction with ``removed`` blocks skipped."""
    errs = [torch.mean((elastic(x, t, h, skip=sorted(removed)).sample - y) ** 2)
            for x, t, h, y in zip(probe.samples, probe.timesteps, probe.hidden, probe.teacher_out)]
    return float(torch.stack(errs).mean())


@dataclass(frozen=True)
class Action:
    kind: str  # "remove" or "restore"
    block: str
    d_quality: float  # change of the proxy (higher = worse)
    d_latency_ms: float  # change of the estimated latency (negative = faster)

    @property
    def value(self) -> float:
        """remove: quality lost per ms saved (lower is better); restore: quality regained per ms spent
        (higher is better)."""
        cost = abs(self.d_latency_ms) or 1e-9
        return self.d_quality / cost if self.kind == "remove" else -self.d_quality / cost


def evaluate_actions(elastic, probe: Probe, removed, latency_ms) -> tuple[float, list[Action]]:
    """(current proxy, every remove and restore action from the ``removed`` set), each scored.

    ``latency_ms(block)`` gives a block's latency (``LatencyTable.latency_ms``)."""
    removed = set(removed)
    unknown = removed - set(elastic.skippable)
    if unknown:
        raise PocketdiffError(f"cannot evaluate from a removed set with unskippable or unknown block "
                              f"{sorted(unknown)[0]!r}")
    base = quality_proxy(elastic, probe, removed)
    actions = []
    for b in elastic.skippable:
        if b in removed:
            q = quality_proxy(elastic, probe, removed - {b})
            actions.append(Action("restore", b, q - base, latency_ms(b)))
        else:
            q = quality_proxy(elastic, probe, removed | {b})
            actions.append(Action("remove", b, q - base, -latency_ms(b)))
    return base, actions


def best_action(actions: list[Action], kind: str) -> Action | None:
    pool = [a for a in actions if a.kind == kind]
    if not pool:
        return None
    return min(pool, key=lambda a: a.value) if kind == "remove" else max(pool, key=lambda a: a.value)


# ---- Stage ``slim-evolve``: architecture evolution down to a latency budget -----------------------

@dataclass
class EvolveConfig:
    """``slim-evolve``: which target's latency table to read, the budget, the quality floor, and the
    short robust fine-tune between actions (``finetune``; its ``skip_prob`` drops kept blocks at random
    while the removed ones are always skipped)."""

    latency_table: str = ""  # path of a per-block latency table (``pocketdiff bench blocks``)
    target: str = "onnx-cpu-2t"  # its key in that file
    budget: float = 0.55  # stop once the estimated UNet latency <= budget x the full UNet's
    quality_floor: float = 0.05  # proxy (MSE to the full model) above which the best restore action is taken
    max_iterations: int = 64
    probe_size: int = 32
    probe_timesteps: tuple[int, ...] = (100, 400, 700, 950)
    finetune: KDTrainConfig = field(default_factory=lambda: KDTrainConfig(steps=50, checkpoint_every=25))
    seed: int = 0

    def validate(self) -> "EvolveConfig":
        if not self.latency_table:
            raise PocketdiffError("slim-evolve needs a latency table (`pocketdiff bench blocks --out FILE`)")
        if not 0.0 < self.budget <= 1.0:
            raise PocketdiffError(f"budget must be in (0, 1] (a fraction of the full UNet's latency), got {self.budget}")
        if self.quality_floor <= 0:
            raise PocketdiffError(f"quality_floor must be > 0 (a proxy MSE), got {self.quality_floor}")
        if self.max_iterations < 1 or self.probe_size < 1 or not self.probe_timesteps:
            raise PocketdiffError(f"max_iterations and probe_size must be >= 1 and probe_timesteps non-empty; got "
                                  f"{self.max_iterations}, {self.probe_size}, {self.probe_timesteps}")
        self.finetune.validate()
        return self


def _state_hash(cfg: EvolveConfig, pipeline_dir) -> str:
    return config_hash({**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve())})


class EvolutionState:
    """What a stopped ``slim-evolve`` resumes from: ``WORKDIR/state.json`` (removed blocks, blocks never to
    remove again, the iteration records) and ``WORKDIR/unet.safetensors`` (the weights after the last
    finished fine-tune). Both are replaced atomically."""

    def __init__(self, workdir: Path, config_hash: str):
        self.workdir, self.hash = workdir, config_hash
        self.removed: list[str] = []
        self.tabu: list[str] = []  # restored blocks: never removed again, so the search cannot cycle
        self.records: list[dict] = []
        self.finished: dict | None = None

    @property
    def file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def weights(self) -> Path:
        return self.workdir / "unet.safetensors"

    def load(self, unet) -> bool:
        from safetensors.torch import load_file

        if not self.file.is_file():
            return False
        doc = read_json(self.file)
        if doc["config_hash"] != self.hash:
            raise PocketdiffError(f"{self.workdir} holds an evolution of a different config ({doc['config_hash']} != "
                                  f"{self.hash}); use a new work dir or delete it")
        self.removed, self.tabu, self.records = doc["removed"], doc["tabu"], doc["records"]
        self.finished = doc.get("finished")
        if self.weights.is_file():
            unet.load_state_dict(load_file(str(self.weights)))
        return True

    def save(self, unet=None) -> None:
        import json

        from safetensors.torch import save_file

        self.workdir.mkdir(parents=True, exist_ok=True)
        if unet is not None:
            with atomic_output_file(self.weights) as tmp:
                save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp))
        doc = {"config_hash": self.hash, "removed": self.removed, "tabu": self.tabu, "records": self.records,
               "finished": self.finished}
        with atomic_output_file(self.file) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")


def choose_action(actions: list[Action], proxy: float, estimate_ms: float, cfg: EvolveConfig, unet_ms: float,
                  tabu) -> tuple[Action | None, str]:
    """(the action to take, why) given the current proxy and latency estimate.

    Quality below the floor (proxy above it) with blocks removed: restore the best-value block. Else,
    over budget: remove the best-value block not in ``tabu``. Else: done."""
    if proxy > cfg.quality_floor and any(a.kind == "restore" for a in actions):
        return best_action(actions, "restore"), "quality below the floor"
    if estimate_ms > cfg.budget * unet_ms:
        best = best_action([a for a in actions if a.block not in set(tabu)], "remove")
        return best, "over budget" if best else "over budget, but no block is left to remove"
    return None, "budget met"


def plot_evolution(records: list[dict], cfg: EvolveConfig, path: Path) -> Path:
    """Estimated latency ratio and quality proxy per iteration, with the budget and the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [0, *[r["iteration"] for r in records]]
    ratio = [1.0, *[r["estimate_ratio"] for r in records]]
    proxy = [records[0]["proxy_before"] if records else 0.0, *[r["proxy_after_finetune"] for r in records]]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a1.plot(it, ratio, "-", color="#1f77b4")
    for r in records:
        a1.plot(r["iteration"], r["estimate_ratio"], "v" if r["kind"] == "remove" else "^",
                color="#d62728" if r["kind"] == "remove" else "#2ca02c")
    a1.axhline(cfg.budget, ls="--", color="grey", label=f"budget {cfg.budget:g}")
    a1.set_ylabel("estimated UNet latency / full")
    a1.legend(loc="upper right")
    a2.plot(it, proxy, "-o", ms=3, color="#9467bd", label="after fine-tune")
    a2.plot([r["iteration"] for r in records], [r["proxy_after"] for r in records], "x", color="#8c564b",
            label="right after the action")
    a2.axhline(cfg.quality_floor, ls="--", color="grey", label=f"floor {cfg.quality_floor:g}")
    a2.set_yscale("symlog", linthresh=1e-4)  # the proxy spans decades; the floor may sit far above it
    a2.set_ylabel("quality proxy (MSE to full, symlog)")
    a2.set_xlabel("iteration (v remove, ^ restore)")
    a2.legend(loc="upper left")
    fig.suptitle("slim-evolve: architecture evolution")
    fig.tight_layout()
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def evolve(pipeline_dir: str | Path, out_dir: str | Path, cfg: EvolveConfig, workdir: str | Path,
           stop_after: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Evolve ``pipeline_dir``'s (robust-trained) UNet down to the latency budget; write the pipeline with
    the materialised slim UNet to ``out_dir``, and ``report.json`` + ``evolution.png`` to ``workdir``.

    Each iteration scores every remove/restore action (:func:`evaluate_actions` with the latency
    table's savings), applies the one :func:`choose_action` picks, then fine-tunes for
    ``cfg.finetune.steps`` with the removed blocks always skipped. ``stop_after`` stops after that many
    iterations of this invocation (tests use it to simulate a killed run); rerunning resumes."""
    import copy
    import shutil

    from diffusers import DDPMScheduler
    from tqdm import tqdm

    cfg.validate()
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    workdir = Path(workdir)
    table = load_latency_table(cfg.latency_table, cfg.target)
    pipe = load_pipeline(pipeline_dir)
    if getattr(pipe.unet.config, "removed_blocks", None):
        raise PocketdiffError(f"{pipeline_dir} already holds a slim UNet; evolve its full (robust-trained) UNet")
    elastic = ElasticUNet(pipe.unet)
    missing = sorted(set(elastic.skippable) - set(table.blocks))
    if missing:
        raise PocketdiffError(f"latency table {cfg.latency_table} ({cfg.target}) has no block {missing[0]!r}: was it "
                              "measured on this UNet?")
    unet_ms = table.estimate_ms([])
    teacher = copy.deepcopy(pipe.unet).eval().requires_grad_(False)  # the input (full) UNet, frozen
    state = EvolutionState(workdir, _state_hash(cfg, pipeline_dir))
    state.load(pipe.unet)  # a resumed run continues from the weights of its last finished fine-tune
    pipe.text_encoder.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    pool = encoded_pool(pipe, cfg.finetune.data, cfg.finetune.pool_size, cfg.finetune.seed)
    p_lat, p_ids, _ = encoded_pool(pipe, cfg.finetune.data, cfg.probe_size, cfg.seed + 1, split="val")
    dev = device()  # the probe runs where the fine-tunes train
    elastic.to(dev)
    teacher.to(dev)
    p_lat = p_lat.to(dev)
    with torch.no_grad():
        p_hidden = pipe.text_encoder.to(dev)(p_ids.to(dev))[0]
    probe = make_probe(teacher, p_lat, p_hidden, noise_sched, cfg.probe_timesteps, cfg.seed)
    done_here = 0
    bar = tqdm(total=cfg.max_iterations, initial=len(state.records), desc="slim-evolve", disable=not progress)
    elastic.eval()
    while state.finished is None:
        pending = state.records and not state.records[-1].get("finetuned")
        if not pending:
            if len(state.records) >= cfg.max_iterations:
                state.finished = {"reason": f"max_iterations ({cfg.max_iterations}) reached"}
                break
            proxy, actions = evaluate_actions(elastic, probe, state.removed, table.saving_ms)
            estimate = table.estimate_ms(state.removed)
            # the main process's choice: float noise between devices must not split the processes' paths
            action, why = broadcast(choose_action(actions, proxy, estimate, cfg, unet_ms, state.tabu))
            if action is None:
                state.finished = {"reason": why}
                break
            if action.kind == "remove":
                state.removed = sorted({*state.removed, action.block})
            else:
                state.removed = sorted(set(state.removed) - {action.block})
                state.tabu = sorted({*state.tabu, action.block})
            new_estimate = table.estimate_ms(state.removed)
            state.records.append({
                "iteration": len(state.records) + 1, "kind": action.kind, "block": action.block, "why": why,
                "d_quality": action.d_quality, "d_latency_ms": action.d_latency_ms, "value": action.value,
                "proxy_before": proxy, "proxy_after": proxy + action.d_quality, "estimate_ms": new_estimate,
                "estimate_ratio": new_estimate / unet_ms, "removed": list(state.removed), "finetuned": False})
            state.save()
        rec = state.records[-1]
        ft_dir = workdir / "finetune" / f"iter_{rec['iteration']:03d}"
        if cfg.finetune.steps:
            elastic.train()
            opt = torch.optim.AdamW(elastic.parameters(), lr=cfg.finetune.lr, weight_decay=0.0)
            with KDJob(pipe, elastic, teacher, cfg.finetune, pool, noise_sched, fixed_skip=state.removed) as job:
                train(ft_dir, [elastic], opt, job.batch, job.loss,
                      LoopConfig(steps=cfg.finetune.steps, checkpoint_every=cfg.finetune.checkpoint_every,
                                 progress=False), {**asdict(cfg.finetune), "iteration": rec["iteration"],
                                                   "removed": state.removed, "evolution": state.hash},
                      name=f"slim-evolve fine-tune {rec['iteration']}")
            elastic.eval()
            shutil.rmtree(ft_dir / "checkpoint", ignore_errors=True)  # the weights live in unet.safetensors
        rec["proxy_after_finetune"] = quality_proxy(elastic, probe, state.removed)
        rec["finetuned"] = True
        state.save(pipe.unet)
        bar.update(1)
        bar.set_postfix(est=f"{rec['estimate_ratio']:.3f}", proxy=f"{rec['proxy_after_finetune']:.4f}")
        done_here += 1
        if stop_after is not None and done_here >= stop_after and state.finished is None:
            bar.close()
            raise Interrupted(f"slim-evolve: stopped after iteration {rec['iteration']} (state saved)")
    bar.close()
    state.save()
    estimate = table.estimate_ms(state.removed)
    slim = materialise(pipe.unet, state.removed)
    n_full = sum(p.numel() for p in pipe.unet.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    report = {
        "pipeline": str(Path(pipeline_dir).resolve()), "config": asdict(cfg), "target": cfg.target,
        "finished": state.finished["reason"], "budget_met": estimate <= cfg.budget * unet_ms,
        "removed_blocks": state.removed, "kept_blocks": [b for b in elastic.blocks if b not in set(state.removed)],
        "restored_blocks": state.tabu, "unet_ms": unet_ms, "estimate_ms": estimate, "estimate_ratio": estimate / unet_ms,
        "proxy": quality_proxy(elastic, probe, state.removed), "params_full": n_full, "params_slim": n_slim,
        "iterations": [{k: v for k, v in r.items() if k != "finetuned"} for r in state.records],
    }
    import json

    with atomic_output_file(workdir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    plot_evolution(state.records, cfg, workdir / "evolution.png")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**pipe.components, "unet": slim}, requires_safety_checker=False)
    summary = {k: report[k] for k in ("finished", "budget_met", "removed_blocks", "unet_ms", "estimate_ms",
                                      "estimate_ratio", "proxy", "params_full", "params_slim")}
    history = [*read_history(pipeline_dir), StageRecord("slim-evolve", {**asdict(cfg), "summary": summary})]
    return write_pipeline(pipe, out_dir, history, overwrite=overwrite)
