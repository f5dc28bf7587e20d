// Mirrors pocketdiff/runtime/sampler.py: the one loop. tokenize -> text encoder (one batch-1 call per text the
// policy names) -> [step budget] -> initial latents * init_noise_sigma -> N steps of the step policy ->
// VAE decode -> uint8 HWC. Every session call is timed and traced (step, role, batch, ms); the progress callback
// (done, total) may return false to cancel: the loop stops at once and throws Cancelled.

import { PocketdiffError, choiceError, repr } from './errors.js';
import { BudgetSpec, Call, Denoise, STEP_BUDGET, defaultPolicyName, isAuto, makePolicy, predictSteps }
  from './policies/index.js';
import { initialLatents } from './rng.js';
import { schedulerFromConfig } from './schedulers.js';
import { Tensor, TensorSpec } from './sessions.js';

export const TEXT_ENCODER = 'text_encoder';
export const VAE_DECODER = 'vae_decoder';
const now = () => globalThis.performance.now();

export class Cancelled extends Error {
  constructor(message) {
    super(message);
    this.name = 'Cancelled';
  }
}

/** The user-facing limits shared by every generation path. */
export function checkGenerationArgs(steps, guidance) {
  if (typeof steps !== 'number' || !Number.isInteger(steps) || steps < 1) {
    throw new PocketdiffError(`steps must be an integer >= 1, got ${repr(steps)}`);
  }
  if (typeof guidance !== 'number' || !Number.isFinite(guidance) || guidance < 0) {
    throw new PocketdiffError(`guidance must be a finite number >= 0, got ${repr(guidance)}`);
  }
}

/** VAE output [1, 3, H, W] in [-1, 1] -> HWC uint8, exactly as diffusers post-processes (float32, half-even). */
export function toUint8(decoded) {
  const f = Math.fround;
  const [, c, h, w] = decoded.shape;
  const out = new Uint8Array(h * w * c);
  for (let k = 0; k < c; k++) {
    for (let p = 0; p < h * w; p++) {
      const v = Math.min(Math.max(f(f(decoded.data[k * h * w + p] / 2) + 0.5), 0), 1);
      const x = f(v * 255);
      const r = Math.round(x);
      out[p * c + k] = x % 1 === 0.5 && r % 2 !== 0 ? r - 1 : r;
    }
  }
  return out;
}

/** A manifest's sampler entry as a policy; without one, the policy its UNet implies. */
export function policyFor(sampler, unetInputNames) {
  if (sampler === null || sampler === undefined) return makePolicy(defaultPolicyName(unetInputNames));
  return makePolicy(sampler.policy, sampler.params ?? null);
}

export class RuntimePipeline {
  constructor(tokenizer, sessions, schedulerConfig, latentShape, scalingFactor, policy, budget = null) {
    const missing = [TEXT_ENCODER, ...policy.roles(), VAE_DECODER].filter((r) => !(r in sessions));
    if (missing.length) {
      throw new PocketdiffError(`sampler policy ${repr(policy.name)} needs roles ${missing.join(', ')}; the sessions ` +
        `given are: ${Object.keys(sessions).join(', ')}`);
    }
    Object.assign(this, { tokenizer, sessions: { ...sessions }, schedulerConfig, latentShape: [...latentShape],
      scalingFactor: Math.fround(scalingFactor), policy });
    this.budget = budget !== null && STEP_BUDGET in this.sessions ? budget : null;
  }

  /**
   * A loaded bundle's (bundle.js loadBundle: verified before this) components for `backend`, each opened with
   * `openSession(bundle, component, inputs, outputs)` -> Session. `policy` replaces the manifest's.
   */
  static async fromBundle(bundle, openSession, { backend = 'onnx', policy = null } = {}) {
    if (backend !== 'onnx') throw choiceError('backend', backend, ['onnx']);
    const m = bundle.manifest;
    schedulerFromConfig(m.scheduler.config); // a bad scheduler config fails before any session opens
    const unet = bundle.component('unet', backend);
    policy = policy ?? policyFor(m.sampler, unet.inputs.map((i) => i.name));
    const budget = 'step_budget' in m ? BudgetSpec.fromDict(m.step_budget) : null;
    const extra = budget !== null && bundle.components.some((c) => c.role === STEP_BUDGET && c.target === backend)
      ? [STEP_BUDGET] : [];
    const sessions = {};
    for (const role of [TEXT_ENCODER, ...policy.roles(), ...extra, VAE_DECODER]) {
      const c = bundle.component(role, backend);
      sessions[role] = await openSession(bundle, c, c.inputs.map(TensorSpec.fromDict), c.outputs.map(TensorSpec.fromDict));
    }
    return new RuntimePipeline(await bundle.tokenizer(), sessions, m.scheduler.config, m.model.latent_shape,
      m.model.latent_scale_factor, policy, budget);
  }

  /** The same pipeline on other sessions (replay sessions, shape sessions). */
  withSessions(sessions, policy = null) {
    return new RuntimePipeline(this.tokenizer, sessions, this.schedulerConfig, this.latentShape, this.scalingFactor,
      policy ?? this.policy, this.budget);
  }

  /** Refuse a step request this pipeline cannot serve before any model runs. */
  checkSteps(steps) {
    if (!isAuto(steps)) {
      checkGenerationArgs(steps, 0.0);
      return;
    }
    if (this.budget === null) {
      throw new PocketdiffError(`steps ${repr(steps)} needs a bundle with a step-budget predictor (role ${STEP_BUDGET}, ` +
        'from pocketdiff budget-train); this one has none: give --steps N');
    }
    if (this.policy.fixedSteps() !== null) {
      throw new PocketdiffError(`sampler policy ${repr(this.policy.name)} runs ${this.policy.fixedSteps()} steps ` +
        `only; steps ${repr(steps)} cannot change them`);
    }
    this.budget.targets(steps);
  }

  /**
   * One image: {image (HWC uint8), height, width, timings (s per stage), trace, steps, tokens, budget}.
   * onStep(i, x) sees the latent (Float32Array) after each step; callback(done, total) === false cancels.
   */
  async generate(prompt, { steps, guidance, seed, negativePrompt = '', scheduler = null, truncate = false,
    callback = null, onStep = null } = {}) {
    this.checkSteps(steps);
    checkGenerationArgs(1, guidance);
    const sched = schedulerFromConfig(this.schedulerConfig, scheduler);
    this.policy.check(this.sessions, guidance);
    const trace = [];
    let at = null; // the step the next call belongs to
    const call = async (role, feeds) => {
      const session = this.sessions[role];
      const first = feeds[session.inputs[0].name];
      const batch = first.shape.length ? first.shape[0] : 1;
      const t = now();
      const out = await session.run(feeds);
      trace.push(new Call(at, role, batch, now() - t));
      return out;
    };

    const t0 = now();
    const tokens = this.tokenizer.encode(prompt, { truncate });
    const texts = this.policy.texts(guidance);
    const ids = texts.map((k) => (k === 'prompt' ? tokens.inputIds
      : this.tokenizer.encode(negativePrompt, { truncate: true }).inputIds));
    const t1 = now();
    const states = [];
    for (const row of ids) {
      const feeds = { input_ids: new Tensor(BigInt64Array.from(row, BigInt), [1, row.length], 'int64') };
      states.push((await call(TEXT_ENCODER, feeds)).last_hidden_state);
    }
    const hidden = Tensor.concat(states);
    const t2 = now();
    let budget = null;
    if (isAuto(steps)) { // the prompt's own states, whatever else the policy encoded
      const row = texts.indexOf('prompt');
      [steps, budget] = await predictSteps(call, this.budget, hidden.rows(row, row + 1), steps);
    }
    const tBudget = now();
    sched.setTimesteps(steps);
    const sigma = Math.fround(sched.initNoiseSigma);
    const shape = [1, ...this.latentShape];
    let x = initialLatents(seed, shape).map((v) => Math.fround(v * sigma));
    const run = new Denoise(hidden, guidance, sched.timesteps, this.sessions, call);
    const state = this.policy.begin(run);
    const n = sched.timesteps.length;
    for (let i = 0; i < n; i++) {
      at = i;
      const t = sched.timesteps[i];
      const scaled = new Tensor(sched.scaleModelInput(x, i), shape, 'float32');
      const out = await this.policy.step(run, i, t, scaled, state);
      x = sched.step(out.data, i, x);
      if (onStep !== null) onStep(i, x);
      if (callback !== null && (await callback(i + 1, n)) === false) {
        throw new Cancelled(`generation cancelled after step ${i + 1} of ${n}`);
      }
    }
    at = null;
    const t3 = now();
    const latent = new Tensor(x.map((v) => Math.fround(v / this.scalingFactor)), shape, 'float32');
    const decoded = (await call(VAE_DECODER, { latent_sample: latent })).sample;
    const image = toUint8(decoded);
    const t4 = now();
    const s = (a, b) => (b - a) / 1000;
    const timings = { tokenize_s: s(t0, t1), text_encoder_s: s(t1, t2), ...(budget ? { step_budget_s: s(t2, tBudget) } : {}),
      unet_s: s(tBudget, t3), decoder_s: s(t3, t4), total_s: s(t0, t4) };
    return { image, height: decoded.shape[2], width: decoded.shape[3], timings, trace, steps: n, tokens, budget };
  }
}
