# pocketdiff: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# This machine's pip config lists local indexes that do not exist; drop that noise only.
QUIET_PIP := { grep -v "^WARNING: Location '.*' is ignored" || true; }
DEMO := build/demo

.PHONY: venv test test-slow test-ports ports-deps ports-table demo regress-demo toy-full teacher baseline export-bench bench-sd15 sd15-student-spec phone-projection slim-toy bench-slim-sd15 decoder-toy bench-decoder-sd15 steps-toy ddsm-toy ddsm-sd15 clockwork-toy clockwork-sd15 adadiff-toy adadiff-sd15 budget-toy int8-toy clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e '.[test]' 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

# One worker per core, each test module whole on one worker (its module fixtures built once; session fixtures such
# as the tiny all-target bundle once per worker): 25 min against 33 min serial on this 2-core machine (README).
test: venv ports-deps
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=10

# The app ports' toolchains (docs/ports.md): Debian's kotlin (kotlinc 1.3.31), gson, junit4 and chromium, and
# web_demo's npm packages from its package-lock.json. Installs only what is missing.
PORT_DEBS := kotlin libgoogle-gson-java junit4 chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ports-deps: web_demo/node_modules/.installed
	@missing=""; for p in $(PORT_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; $(SUDO) apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing >/dev/null; fi

web_demo/node_modules/.installed: web_demo/package-lock.json
	npm ci --prefix web_demo --no-audit --no-fund --loglevel=error
	touch $@

# The ports alone (the quick loop): the shipped student's vectors, hostile bundles, signatures, JUnit, node --test
# and the headless-Chromium generation.
test-ports: venv ports-deps
	$(BIN)/python -m pytest -q tests/test_ports.py

# docs/ports.md's conformance table and docs/web_demo.png: the port tests and every method bundle's replay (builds
# the method test fixtures: about 10 min on 2 cores).
ports-table: venv ports-deps
	rm -rf build/ports/reports
	$(BIN)/python -m pytest -q -k "test_ports or app_port" tests/
	$(BIN)/python scripts/ports_table.py

test-slow: venv
	$(BIN)/python -m pytest -q -m slow --durations=0 -s

# The main job: `pocketdiff build` with the quick recipe on the shipped toy teacher (slim UNet -> TAESD-style
# decoder -> 8-step CFG-aware student -> ONNX/Core ML/ExecuTorch bundle -> bench -> eval -> one HTML report),
# about 9 min on 2 cores; a rerun skips finished stages. Then one image from the student bundle on ExecuTorch.
TEACHER := pocketdiff/toyworld/assets
PROMPT := a small red circle in the top left on a grey background
demo: venv
	$(BIN)/pocketdiff build --teacher $(TEACHER)/pipeline --recipe recipes/toy.toml --out $(DEMO)
	$(BIN)/pocketdiff generate --bundle $(DEMO)/export/student --backend executorch "$(PROMPT)" --guidance 2 \
		--out $(DEMO)/student_executorch.png
	@echo "demo report: $(DEMO)/report/index.html; student app bundle: $(DEMO)/export/student"

# The quality gate on a quick build (what CI runs after make test): make demo's student against its own, looser
# baseline. The shipped student's gate runs inside make test (tests/test_shipped_student.py).
regress-demo: demo
	$(BIN)/pocketdiff regress --bundle $(DEMO)/export/student --baseline benchmarks/baselines/toy_quick.json

# The shipped student bundle (pocketdiff/toyworld/assets/student): recipes/toy-full.toml, about 3 h on 2 cores
# (docs/build_toy_full.md lists each stage's time); a rerun, also after a kill, resumes where it stopped.
toy-full: venv
	$(BIN)/pocketdiff build --teacher $(TEACHER)/pipeline --recipe recipes/toy-full.toml --out build/toy-full

# Rebuild the toy teacher from scratch (resumable; see README for the wall time), and its docs tables.
teacher: venv
	$(BIN)/pocketdiff toy train-teacher --out build/teacher

baseline: venv
	$(BIN)/pocketdiff toy baseline --n 500 --out docs/toy_baseline.md

# Latency record for docs/export.md: torch vs onnxruntime vs ExecuTorch on the tiny and toy pipelines.
export-bench: venv
	$(BIN)/python scripts/export_benchmark.py --threads 2

# SD1.5 results page (docs/sd15_benchmark.md/.json/.html): SD1.5 at 50 CFG steps (diffusers, optimum, ours) against
# the student architecture (arch=sd15-student) at 8 steps on onnxruntime and ExecuTorch, fp32 then int8, end to end
# from the call traces; per component, peak memory of one image, int8 parity, the phone projection. Builds its models
# once under build/bench (~1 h the first time, ~15 GB peak RSS), then about an hour of measuring on 2 cores;
# resumable (build/bench/sd15_record.json).
bench-sd15: venv
	$(BIN)/python scripts/sd15_benchmark.py --threads 2

# Efficient UNet on the toy teacher (issue 6): per-block ORT latency table -> robust training -> evolution to an
# estimated 0.65x of the teacher UNet's latency (on the toy the table's estimate is pessimistic: a 0.534 estimate
# measured 0.467, docs/efficient_unet.md) -> KD fine-tune -> report (docs/efficient_unet_toy.md). Every stage
# resumes from its work dir when rerun; about 45 min on 2 cores.
SLIM := build/slim
slim-toy: venv
	$(BIN)/pocketdiff bench blocks --pipeline $(TEACHER)/pipeline --backend onnx --threads 2 --batch 2 --repeat 20 \
		--warmup 5 --out $(SLIM)/toy_latency.json --no-progress
	$(BIN)/pocketdiff slim-robust --pipeline $(TEACHER)/pipeline --out $(SLIM)/robust --workdir $(SLIM)/robust.work \
		--steps 1500 --batch-size 64 --lr 1e-4 --skip-prob 0.15 --force
	$(BIN)/pocketdiff slim-evolve --pipeline $(SLIM)/robust --out $(SLIM)/evolved --workdir $(SLIM)/evolved.work \
		--latency-table $(SLIM)/toy_latency.json --target onnx-cpu-2t --budget 0.65 --quality-floor 0.15 \
		--finetune-steps 100 --finetune-batch-size 32 --finetune-skip-prob 0.1 --force
	$(BIN)/pocketdiff slim-finetune --pipeline $(SLIM)/evolved --teacher $(TEACHER)/pipeline --out $(SLIM)/finetuned \
		--workdir $(SLIM)/finetuned.work --steps 3000 --batch-size 64 --lr 1e-4 --force
	$(BIN)/python scripts/efficient_unet_report.py --work $(SLIM) --out docs/efficient_unet_toy

# The shipped SD1.5 slim spec against SD1.5, UNet step on onnxruntime at 512², side by side (random weights;
# builds both once under build/bench, ~10 min each the first time; ~19 GB peak RSS while measuring).
SD15_SPEC := pocketdiff/architectures/specs/sd15-snapfusion.json
bench-slim-sd15: venv
	$(BIN)/pocketdiff bench compare arch=sd15,steps=50 arch=sd15,spec=$(SD15_SPEC),steps=50 --components unet \
		--threads 2 --repeat 5 --json docs/sd15_slim_benchmark.json --html docs/sd15_slim_benchmark.html

# The SD1.5 student's UNet spec (architecture sd15-student): SD1.5's batch-1 per-block onnxruntime latency table
# (random weights, 512²; ~15 min), then the shipped spec evolved on it, guided by the toy's redundancy findings
# (docs/efficient_unet_toy.json) -> pocketdiff/architectures/specs/sd15-student.json, docs/sd15_student_spec.json.
SD15_TABLE := benchmarks/latency_tables/sd15-onnx-cpu-2t-b1.json
sd15-student-spec: venv
	$(BIN)/pocketdiff bench blocks --arch sd15 --backend onnx --threads 2 --batch 1 --warmup 1 --repeat 5 \
		--out $(SD15_TABLE) --no-progress
	$(BIN)/python scripts/sd15_student_spec.py --table $(SD15_TABLE)

# Phone latency projection (docs/phone_projection.md/.json): the roofline model calibrated on published phone
# figures, its leave-one-out error, and SD1.5 and the student projected per device (~30 s; no phone needed).
phone-projection: venv
	$(BIN)/python scripts/phone_projection.py

# Efficient decoder on the toy teacher (issue 7): a 0.5-width pruned decoder and TAESD-style decoders, each
# distilled on the teacher's own latents (cached once per cache folder: 2000 generations, or 8000 for the last),
# then the report (docs/efficient_decoder_toy.md).
DEC := build/decoder
DEC_COMMON := --pipeline $(TEACHER)/pipeline --guidance 2 --perceptual clip --perceptual-model $(TEACHER)/clip \
	--batch-size 32 --force
DEC_TINY16 := --kind tiny --tiny-channels 16 --steps 10000 --lr 1e-3 --w-perceptual 1
decoder-toy: venv
	$(BIN)/pocketdiff distill-decoder $(DEC_COMMON) --latent-cache $(DEC)/latents --out $(DEC)/pruned \
		--workdir $(DEC)/pruned.work --kind pruned --width 0.5 --steps 3000 --lr 2e-4 --lr-schedule constant
	$(BIN)/pocketdiff distill-decoder $(DEC_COMMON) --latent-cache $(DEC)/latents --out $(DEC)/tiny32 \
		--workdir $(DEC)/tiny32.work --kind tiny --tiny-channels 32 --steps 3000 --lr 1e-3 --lr-schedule constant
	$(BIN)/pocketdiff distill-decoder $(DEC_COMMON) --latent-cache $(DEC)/latents --out $(DEC)/tiny16 \
		--workdir $(DEC)/tiny16.work $(DEC_TINY16) --tiny-blocks 2
	$(BIN)/pocketdiff distill-decoder $(DEC_COMMON) --latent-cache $(DEC)/latents --out $(DEC)/tiny16x4 \
		--workdir $(DEC)/tiny16x4.work $(DEC_TINY16) --tiny-blocks 4
	$(BIN)/pocketdiff distill-decoder $(DEC_COMMON) --latent-cache $(DEC)/latents8k --n-generated 8000 \
		--out $(DEC)/tiny16x4g8k --workdir $(DEC)/tiny16x4g8k.work $(DEC_TINY16) --tiny-blocks 4
	$(BIN)/python scripts/efficient_decoder_report.py --student pruned=$(DEC)/pruned --student tiny32=$(DEC)/tiny32 \
		--student tiny16=$(DEC)/tiny16 --student tiny16x4=$(DEC)/tiny16x4 --student tiny16x4g8k=$(DEC)/tiny16x4g8k \
		--work $(DEC) --out docs/efficient_decoder_toy

# SD1.5's VAE decoder against the 0.5-width pruned decoder at 512², onnxruntime, side by side (random weights).
bench-decoder-sd15: venv
	$(BIN)/pocketdiff bench compare arch=sd15,steps=50 arch=sd15,decoder_width=0.5,steps=50 --components vae_decoder \
		--threads 2 --repeat 5 --json docs/sd15_decoder_benchmark.json --html docs/sd15_decoder_benchmark.html

# The 8-step sampler on the toy teacher: CFG-aware step distillation 16 -> 8 in one round from the teacher (the
# student first warmed up to v-prediction; cosine lr), then 8 -> 4, the ablation without the CFG-aware term, the
# guidance-embedded single-pass student, and three variants of the CFG student (p = 0.5; an EMA of the weights;
# 32 -> 16 -> 8 in two rounds); then the report. The runs are independent (for the committed report they ran
# side by side, one thread each, OMP_NUM_THREADS=1).
STEPS := build/steps
STEPS_COMMON := --pipeline $(TEACHER)/pipeline --start-steps 16 --rounds 1 --v-warmup-iters 400 --iters 2000 \
	--batch-size 32 --lr 2e-4 --lr-schedule cosine --w-min 1.5 --w-max 3 --force
steps-toy: venv
	$(BIN)/pocketdiff distill-steps $(STEPS_COMMON) --rounds 2 --out $(STEPS)/cfg --workdir $(STEPS)/cfg.work
	$(BIN)/pocketdiff distill-steps $(STEPS_COMMON) --cfg-prob 0 --out $(STEPS)/vanilla --workdir $(STEPS)/vanilla.work
	$(BIN)/pocketdiff distill-steps $(STEPS_COMMON) --guidance-embed --cfg-prob 1 --out $(STEPS)/embed \
		--workdir $(STEPS)/embed.work
	$(BIN)/pocketdiff distill-steps $(STEPS_COMMON) --cfg-prob 0.5 --out $(STEPS)/cfg-p05 --workdir $(STEPS)/cfg-p05.work
	$(BIN)/pocketdiff distill-steps $(STEPS_COMMON) --ema-decay 0.999 --out $(STEPS)/cfg-ema \
		--workdir $(STEPS)/cfg-ema.work
	$(BIN)/pocketdiff distill-steps $(STEPS_COMMON) --start-steps 32 --rounds 2 --out $(STEPS)/cfg-32 \
		--workdir $(STEPS)/cfg-32.work
	$(BIN)/python scripts/step_distillation_report.py --student cfg=$(STEPS)/cfg.work \
		--student vanilla=$(STEPS)/vanilla.work --student embed=$(STEPS)/embed.work \
		--student cfg-p05=$(STEPS)/cfg-p05.work --student cfg-ema=$(STEPS)/cfg-ema.work \
		--student cfg-32=$(STEPS)/cfg-32.work --out docs/step_distillation_toy

# DDSM on the toy teacher (issue 22): sandwich training of the slimmable UNet, the width-per-step search at 8
# DPM-Solver++ and 25 DDIM steps, 1000-prompt evals and a bench compare per setting -> docs/ddsm_toy.md.
# Cached under build/ddsm (resumes); about an hour on 2 cores.
ddsm-toy: venv
	$(BIN)/python scripts/ddsm_toy.py

# DDSM at SD1.5 scale: per-width UNet MACs and onnxruntime latency (512², batch 2, 2 threads, alternating) and the
# toy schedules priced on SD1.5 -> docs/ddsm_sd15.md. Exports cached under build/ddsm_sd15.
ddsm-sd15: venv
	$(BIN)/python scripts/ddsm_sd15.py

# Clockwork on the toy teacher (8 DPM-Solver++ steps) and the shipped student (its pinned 4 steps; needs
# build/toy-full from make toy-full): adaptor training, the clock period against quality (trained and identity
# adaptor, 1000-prompt evals) and a bench compare per setting -> docs/clockwork_toy.md. Cached under build/clockwork.
clockwork-toy: venv
	$(BIN)/python scripts/clockwork_toy.py

# Clockwork at SD1.5 scale: the full and light graphs' MACs and onnxruntime latency (512², batch 2, 2 threads,
# alternating), the toy's clock priced on SD1.5 -> docs/clockwork_sd15.md. Exports cached under build/clockwork_sd15.
clockwork-sd15: venv
	$(BIN)/python scripts/clockwork_sd15.py

# AdaDiff on the toy teacher: exit heads trained (uncertainty-weighted, plain-loss ablation, unfrozen backbone), the
# threshold calibrated at 25 DDIM and 8 DPM-Solver++ steps, 1000-prompt evals, exit histograms and a bench compare
# per setting -> docs/adadiff_toy.md. Cached under build/adadiff (resumes).
adadiff-toy: venv
	$(BIN)/python scripts/adadiff_toy.py

# AdaDiff at SD1.5 scale: per-segment and per-head MACs and onnxruntime latency (512², batch 2, 2 threads,
# alternating), the toy's exit histograms priced on SD1.5 -> docs/adadiff_sd15.md. Exports under build/adadiff_sd15.
adadiff-sd15: venv
	$(BIN)/python scripts/adadiff_sd15.py

# BudgetFusion on the shipped toy student (needs make toy-full's build/toy-full/steps): budget-data over S = {1, 2, 3,
# 4, 6, 8}, both predictor kinds, export with step_budget, fixed / oracle / random / predictor on 1000 toy-val
# prompts, runtime timing and bench -> docs/budget_toy.md. Cached under build/budget.
budget-toy: venv
	$(BIN)/python scripts/budget_toy.py

# int8 on the shipped toy student (issue 27): its ONNX bundle quantised to static QDQ int8, calibrated on the student's
# own activations (32 toy-world prompts), against fp32 on 1000 toy-val prompts (FID, CLIP, attribute accuracy) and
# per-component PSNR -> docs/int8_toy.md. Cached under build/int8_toy; about 10 min on 2 cores.
int8-toy: venv
	$(BIN)/python scripts/int8_toy.py

clean:
	rm -rf build .pytest_cache
