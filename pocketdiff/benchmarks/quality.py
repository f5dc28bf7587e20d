"""Quality metrics on the toy world: FID, CLIP score and attribute accuracy (``pocketdiff eval``).

* **FID** uses torchmetrics' ``FrechetInceptionDistance`` with the toy CLIP's image tower as the
  feature extractor; the reference set is fresh renders of the same prompts (new sub-cell jitter).
* **CLIP score** is 100 x cosine of the toy CLIP's text and image embeddings, clipped at 0.
* **Attribute accuracy** reads each image back with the attribute checker; an image counts when
  every attribute its prompt names is right. Reported overall, per attribute, per kind (single /
  pair) and per split (``val``: combinations seen in training; ``heldout``: never seen).

Prompt set ``toy-val``: 75% from the val split, 25% from the held-out split, 30% two-object scenes,
deterministic from the seed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketdiff.architectures.vocab import TOKENIZER_DIR
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.generate import GenerateConfig, generate_many
from pocketdiff.pipedir import atomic_output_file
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer
from pocketdiff.toyworld import TOY_TEACHER_DIR
from pocketdiff.toyworld.checker import AttributeChecker, read, score, summarize
from pocketdiff.toyworld.clip import ClipImageFeatures, clip_score
from pocketdiff.toyworld.world import Scene, caption, rephrase, render, sample_scene

PROMPT_SETS = ("toy-val",)


@dataclass
class PromptItem:
    scene: Scene
    prompt: str
    split: str

    @property
    def kind(self) -> str:
        return "single" if self.scene.relation is None else "pair"


def prompt_set(name: str, n: int, seed: int = 0) -> list[PromptItem]:
    if name not in PROMPT_SETS:
        raise choice_error("prompt set", name, PROMPT_SETS)
    if n < 2:
        raise PocketdiffError(f"--n must be at least 2 (FID needs two samples), got {n}")
    rng = np.random.default_rng([seed, 31337])
    items = []
    for i in range(n):
        split = "heldout" if i % 4 == 3 else "val"
        scene = sample_scene(rng, split)
        items.append(PromptItem(scene, caption(scene, rng), split))
    return items


def rephrased(items: list[PromptItem], seed: int = 0) -> list[PromptItem]:
    """The phrasing split: the same scenes captioned in phrasings no training template produces
    (``toyworld.world.rephrase``), to tell template-following from understanding; never trained on."""
    rng = np.random.default_rng([seed, 27182])
    return [dataclasses.replace(it, prompt=rephrase(it.scene, rng)) for it in items]


def reference_images(items: list[PromptItem], seed: int = 0) -> np.ndarray:
    """Fresh renders of the same scenes with new sub-cell jitter."""
    rng = np.random.default_rng([seed, 4242])
    out = []
    for it in items:
        jit = tuple((float(rng.uniform(-0.75, 0.75)), float(rng.uniform(-0.75, 0.75))) for _ in it.scene.objects)
        out.append(render(dataclasses.replace(it.scene, jitter=jit)))
    return np.stack(out)


@dataclass
class EvalModels:
    clip: object
    checker: object
    tokenizer: object

    @classmethod
    def load(cls, path: str | Path) -> "EvalModels":
        """``path`` holds ``clip/`` and ``checker/`` as written by ``pocketdiff toy train-teacher``."""
        path = Path(path)
        for sub in ("clip", "checker"):
            if not (path / sub / "config.json").is_file():
                raise PocketdiffError(f"eval models folder {path} has no {sub}/ (expected {sub}/config.json)")
        return cls(cls.load_clip(path), AttributeChecker.from_pretrained(str(path / "checker")).eval(),
                   CLIPBPETokenizer.from_dir(TOKENIZER_DIR))

    @staticmethod
    def load_clip(path: str | Path):
        """The toy CLIP alone (``path/clip``), in eval mode."""
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(str(Path(path) / "clip")).eval()


def fid(models: EvalModels, images: np.ndarray, reference: np.ndarray) -> float:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=ClipImageFeatures(models.clip), reset_real_features=True)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)  # noqa: E731  uint8 NCHW
    for i in range(0, len(images), 256):
        metric.update(to_t(reference[i:i + 256]), real=True)
        metric.update(to_t(images[i:i + 256]), real=False)
    return float(metric.compute())


def attribute_report(models: EvalModels, items: list[PromptItem], images: np.ndarray) -> dict:
    scores = [score(it.scene, r) for it, r in zip(items, read(models.checker, images))]
    report = {"overall": summarize(scores)}
    groups = {f"kind={k}": lambda it, k=k: it.kind == k for k in ("single", "pair")}
    groups.update({f"split={s}": lambda it, s=s: it.split == s for s in ("val", "heldout")})
    groups.update({f"kind={k},split={s}": lambda it, k=k, s=s: it.kind == k and it.split == s
                   for k in ("single", "pair") for s in ("val", "heldout")})
    for name, keep in groups.items():
        sub = [sc for sc, it in zip(scores, items) if keep(it)]
        if sub:
            report[name] = {**summarize(sub), "n": len(sub)}
    return report


def evaluate_images(models: EvalModels, items: list[PromptItem], images: np.ndarray, seed: int = 0) -> dict:
    """All toy metrics for ``images`` (uint8 [N, H, W, 3]) generated from ``items``' prompts."""
    if len(images) != len(items):
        raise PocketdiffError(f"{len(images)} images for {len(items)} prompts")
    ref = reference_images(items, seed)
    attrs = attribute_report(models, items, images)
    return {
        "n": len(items),
        "fid": fid(models, images, ref),
        "clip_score": float(clip_score(models.clip, models.tokenizer, images, [it.prompt for it in items]).mean()),
        "attribute_accuracy": attrs["overall"]["all"],
        "attributes": attrs,
    }


def image_grid(images: np.ndarray, cols: int = 8, scale: int = 4) -> np.ndarray:
    """Tile [N, H, W, 3] images into one uint8 grid, upscaled ``scale`` x (nearest)."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return grid.repeat(scale, 0).repeat(scale, 1)


def eval_grid(images: np.ndarray) -> np.ndarray:
    """An eval report's picture: small (toy) images, the first 64 eight wide, upscaled to about 128 px; large
    ones, the first 16 four wide, as they are."""
    h = images.shape[1]
    if h >= 256:
        return image_grid(images[:16], cols=4, scale=1)
    return image_grid(images[:64], cols=8, scale=max(1, 128 // h))


def write_report(result: dict, out_json: str | Path, grid: np.ndarray | None = None) -> Path:
    """Write ``eval.json`` (and ``eval.png`` beside it) atomically."""
    from PIL import Image

    out_json = Path(out_json)
    if grid is not None:
        with atomic_output_file(out_json.with_suffix(".png")) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
    with atomic_output_file(out_json) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return out_json


def evaluate_source(gen, prompts: str = "toy-val", n: int = 500, eval_models: str | Path | None = None,
                    real: "RealEvalInputs | None" = None, pipeline_dir=None, onnx_dir=None, bundle_dir=None,
                    callback=None, backend: str = "onnx", trusted_key=None, policy=None) -> tuple[dict, np.ndarray]:
    """Generate an eval set with ``gen`` (a ``GenerateConfig``; its seed seeds the prompt set too) from one
    source (a pipeline folder, an ONNX folder or a bundle) and score it; (result, images).

    The toy protocol: ``n`` prompts of the set ``prompts``, toy FID/CLIP and the attribute checker of
    ``eval_models`` (default: the toy teacher's); then the same scenes and seeds captioned in the phrasing
    split (:func:`rephrased`), whose attribute accuracy is ``result["rephrased"]`` (``callback`` counts both
    sets: 2n images). With ``real`` (see :func:`check_real_eval_inputs`): its
    captions, Inception FID against its reference images, CLIP score with its local CLIP. This is the one
    implementation ``pocketdiff eval``, the build's eval stage and the regression gate share. A bundle runs on
    ``backend``, its manifest's signature checked with ``trusted_key`` when one is given, with its own step policy
    or ``policy``."""
    source = {"pipeline_dir": pipeline_dir, "onnx_dir": onnx_dir, "bundle_dir": bundle_dir}
    if sum(v is not None for v in source.values()) != 1:
        raise PocketdiffError(f"evaluate one source: a pipeline, an ONNX folder or a bundle; got {source}")
    if real is not None:
        images = generate_many(real.captions, gen, **source, callback=callback, backend=backend, trusted_key=trusted_key,
                               policy=policy)
        result = evaluate_real(real, images)
    else:
        items = prompt_set(prompts, n, gen.seed)
        again = rephrased(items, gen.seed)
        progress = (lambda done, total: callback(done, 2 * total)) if callback else None
        taken: list[int] = []
        images = generate_many([it.prompt for it in items], gen, **source, callback=progress, backend=backend, trusted_key=trusted_key,
                               policy=policy, steps_taken=taken)
        models = EvalModels.load(eval_models or TOY_TEACHER_DIR)
        result = evaluate_images(models, items, images, seed=gen.seed)
        if taken:  # the runtime's step counts (with --steps auto, the predictor's choices)
            counts = np.unique(taken, return_counts=True)
            result["steps_taken"] = {"mean": float(np.mean(taken)),
                                     "histogram": {int(k): int(v) for k, v in zip(*counts)}}
        progress = (lambda done, total: callback(total + done, 2 * total)) if callback else None
        other = generate_many([it.prompt for it in again], gen, **source, callback=progress, backend=backend, trusted_key=trusted_key,
                               policy=policy)
        attrs = attribute_report(models, again, other)
        result.update(prompts=prompts, rephrased={"attribute_accuracy": attrs["overall"]["all"], "attributes": attrs,
                                                   "examples": [it.prompt for it in again[:4]]})
    result.update(seed=gen.seed, steps=gen.steps, guidance=gen.guidance, scheduler=gen.scheduler,
                  source=str(next(v for v in source.values() if v is not None)),
                  **({"backend": backend} if bundle_dir is not None else {}))
    return result, images


BASELINE_STEPS = (50, 25, 8, 4)
BASELINE_SCHEDULERS = ("ddim", "dpm++2m")


def baseline_table(pipeline_dir: str | Path, models: EvalModels, n: int, guidance: float, seed: int = 0,
                   steps: tuple[int, ...] = BASELINE_STEPS, schedulers: tuple[str, ...] = BASELINE_SCHEDULERS,
                   callback=None) -> list[dict]:
    """The teacher at each (scheduler, steps): the reference every later stage must beat."""
    items = prompt_set("toy-val", n, seed)
    rows = []
    for sched in schedulers:
        for k in steps:
            cfg = GenerateConfig(prompt="", steps=k, guidance=guidance, seed=seed, scheduler=sched)
            images = generate_many([it.prompt for it in items], cfg, pipeline_dir=pipeline_dir)
            res = evaluate_images(models, items, images, seed=seed)
            rows.append({"scheduler": sched, "steps": k, "guidance": guidance, **res})
            if callback:
                callback(len(rows), len(schedulers) * len(steps))
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| scheduler | steps | FID ↓ | CLIP score ↑ | attribute acc. ↑ | single (val) | two-object (val) "
            "| single (held-out) | two-object (held-out) |\n|---|---|---|---|---|---|---|---|---|\n")
    body = []
    for r in rows:
        a = r["attributes"]
        get = lambda k: a.get(k, {}).get("all", float("nan"))  # noqa: E731
        body.append(f"| {r['scheduler']} | {r['steps']} | {r['fid']:.2f} | {r['clip_score']:.2f} | "
                    f"{r['attribute_accuracy']:.3f} | {get('kind=single,split=val'):.3f} | "
                    f"{get('kind=pair,split=val'):.3f} | {get('kind=single,split=heldout'):.3f} | "
                    f"{get('kind=pair,split=heldout'):.3f} |")
    return head + "\n".join(body) + "\n"


# ---- Real-checkpoint mode (the COCO-30K protocol): Inception FID + a local CLIP model -------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class RealEvalInputs:
    captions: list[str]
    reference_images: list[Path]
    clip_model_dir: Path
    inception_weights: Path


def check_real_eval_inputs(captions_file, reference_dir, clip_model_dir, inception_weights,
                           n: int) -> RealEvalInputs:
    """Everything the real-checkpoint protocol needs, checked before any generation starts."""
    import importlib.util

    captions_file, reference_dir = Path(captions_file), Path(reference_dir)
    clip_model_dir = Path(clip_model_dir) if clip_model_dir else None
    if not captions_file.is_file():
        raise PocketdiffError(f"captions file {captions_file} does not exist (one caption per line)")
    captions = [c.strip() for c in captions_file.read_text(encoding="utf-8").splitlines() if c.strip()]
    if len(captions) < n:
        raise PocketdiffError(f"captions file {captions_file} has {len(captions)} captions; --n asks for {n}")
    if not reference_dir.is_dir():
        raise PocketdiffError(f"reference image folder {reference_dir} does not exist")
    refs = sorted(p for p in reference_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(refs) < 2:
        raise PocketdiffError(f"reference image folder {reference_dir} has {len(refs)} images "
                              f"({'/'.join(IMAGE_SUFFIXES)}); FID needs at least 2")
    if clip_model_dir is None or not (clip_model_dir / "config.json").is_file():
        raise PocketdiffError(f"--clip-model {clip_model_dir} is not a local transformers CLIP folder "
                              "(config.json + weights), e.g. a downloaded openai/clip-vit-large-patch14")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise PocketdiffError("Inception FID needs the torch-fidelity package (pip install torch-fidelity)")
    if inception_weights is None or not Path(inception_weights).is_file():
        raise PocketdiffError(f"--inception-weights {inception_weights} does not exist: pass torch-fidelity's "
                              "weights-inception-2015-12-05-6726825d.pth (nothing is downloaded at run time)")
    return RealEvalInputs(captions[:n], refs, clip_model_dir, Path(inception_weights))


def evaluate_real(inputs: RealEvalInputs, images: np.ndarray) -> dict:
    """FID (Inception, 2048-d) against the reference folder and CLIP score with the local CLIP model."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchmetrics.image.fid import FrechetInceptionDistance
    from transformers import CLIPModel, CLIPProcessor

    fid_metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inputs.inception_weights))
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)  # noqa: E731
    for i in range(0, len(inputs.reference_images), 64):
        ref = np.stack([np.asarray(Image.open(p).convert("RGB").resize((299, 299))) for p in
                        inputs.reference_images[i:i + 64]])
        fid_metric.update(to_t(ref), real=True)
    for i in range(0, len(images), 64):
        fid_metric.update(to_t(images[i:i + 64]), real=False)
    clip = CLIPModel.from_pretrained(str(inputs.clip_model_dir)).eval()
    proc = CLIPProcessor.from_pretrained(str(inputs.clip_model_dir))
    scores = []
    with torch.no_grad():
        for i in range(0, len(images), 32):
            batch = proc(text=inputs.captions[i:i + 32], images=list(images[i:i + 32]), return_tensors="pt",
                         padding=True, truncation=True)
            out = clip(**batch)
            scores.append((100 * F.cosine_similarity(out.image_embeds, out.text_embeds)).clamp(min=0))
    return {"n": len(images), "fid_inception": float(fid_metric.compute()),
            "clip_score": float(torch.cat(scores).mean())}
