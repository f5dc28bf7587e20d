#!/usr/bin/env node
// The JS port's runner (docs/ports.md, "The runner every port provides"):
//   node tools/conformance.mjs conformance BUNDLE [--trusted-key FILE]   JSON report on stdout; exit 0/1
//   node tools/conformance.mjs verify BUNDLE [--trusted-key FILE]        `ok` (exit 0) or `error: MESSAGE` (exit 2)
// Bundles load exactly as the app loads them (src/bundle.js); the policy replay runs RuntimePipeline.generate
// itself on replay sessions (tools/replay.mjs). Without --trusted-key, POCKETDIFF_TRUSTED_KEY names the key file,
// as in the Python CLI.

import fs from 'node:fs';
import process from 'node:process';
import { PocketdiffError, parseJson } from '../src/errors.js';
import { loadBundle } from '../src/bundle.js';
import { nodeReader } from '../src/node_reader.js';
import { BudgetSpec } from '../src/policies/index.js';
import { initialLatents } from '../src/rng.js';
import { RuntimePipeline, policyFor } from '../src/sampler.js';
import { schedulerFromConfig } from '../src/schedulers.js';
import { loadPublicKey } from '../src/signing.js';
import { NotRun, ReplayLog, ReplayMismatch, ReplaySession, b64bytes, recordData, summaryMismatch } from './replay.mjs';

const PORT = 'js';
const USAGE = 'usage: conformance.mjs {conformance|verify} BUNDLE [--trusted-key FILE]';

function parseArgs(argv) {
  const [verb, bundle, ...rest] = argv;
  let keyFile = process.env.POCKETDIFF_TRUSTED_KEY || null;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--trusted-key' && i + 1 < rest.length) keyFile = rest[++i];
    else if (rest[i].startsWith('--trusted-key=')) keyFile = rest[i].slice('--trusted-key='.length);
    else return null;
  }
  if (!['conformance', 'verify'].includes(verb) || !bundle) return null;
  return { verb, bundle, keyFile };
}

function readKey(keyFile) {
  if (!keyFile) return null;
  let text = null;
  try { text = fs.readFileSync(keyFile, 'latin1'); } catch { /* named by loadPublicKey's message */ }
  return loadPublicKey(text, keyFile);
}

/** The load-time checks the app makes before any session opens (RuntimePipeline.from_bundle's, sessions aside). */
export async function loadChecked(dir, trustedKey) {
  const bundle = await loadBundle(nodeReader(dir), { verify: true, trustedKey });
  const m = bundle.manifest;
  schedulerFromConfig(m.scheduler.config);
  const unet = bundle.component('unet', 'onnx');
  const policy = policyFor(m.sampler, unet.inputs.map((i) => i.name));
  if ('step_budget' in m) BudgetSpec.fromDict(m.step_budget);
  const tokenizer = await bundle.tokenizer();
  return { bundle, policy, tokenizer };
}

const pass = (detail) => ({ status: 'passed', detail });
const failed = (detail) => ({ status: 'failed', detail });
const notRun = (detail) => ({ status: 'not run', detail });
const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

function checkTokenizer(tokenizer, vectors) {
  for (const { prompt, input_ids: want } of vectors) {
    const got = tokenizer.encode(prompt).inputIds;
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      return failed(`${JSON.stringify(prompt)}: got ${JSON.stringify(got.slice(0, 20))}..., want ${JSON.stringify(want.slice(0, 20))}...`);
    }
  }
  return pass(`${vectors.length} prompts, 77 ids each, identical`);
}

function checkRng(vectors) {
  let worst = 0;
  for (const { seed, shape, first_values: want } of vectors) {
    const got = initialLatents(seed, shape).slice(0, want.length);
    const d = maxDiff(Array.from(got), want);
    worst = Math.max(worst, d);
    if (!(d <= 1e-6)) return failed(`seed ${seed}: first values differ by ${d}`);
  }
  return pass(`${vectors.length} seeds, max abs diff ${worst}`);
}

function checkTimesteps(config, vec) {
  const s = schedulerFromConfig(config);
  s.setTimesteps(vec.steps);
  const got = s.timesteps.map(Number);
  if (JSON.stringify(got) !== JSON.stringify(vec.values)) return failed(`got ${JSON.stringify(got)}, want ${JSON.stringify(vec.values)}`);
  return pass(`${vec.steps} steps: ${JSON.stringify(got)}`);
}

function checkScheduler(vec) {
  const s = schedulerFromConfig(vec.config);
  s.setTimesteps(vec.steps);
  const ts = s.timesteps.map(Number);
  if (JSON.stringify(ts) !== JSON.stringify(vec.timesteps)) return failed(`timesteps ${JSON.stringify(ts)}, want ${JSON.stringify(vec.timesteps)}`);
  if (Math.abs(s.initNoiseSigma - vec.init_noise_sigma) > 1e-4 * Math.max(1, vec.init_noise_sigma)) {
    return failed(`init_noise_sigma ${s.initNoiseSigma}, want ${vec.init_noise_sigma}`);
  }
  let worst = 0;
  for (const r of vec.records) {
    const sample = recordData(r.sample, `record ${r.index} sample`);
    const scaled = s.scaleModelInput(sample, r.index);
    const prev = s.step(recordData(r.model_output, `record ${r.index} model_output`), r.index, sample);
    for (const [name, got, rec] of [['scaled_sample', scaled, r.scaled_sample], ['prev_sample', prev, r.prev_sample]]) {
      const d = maxDiff(Array.from(got), Array.from(recordData(rec, `record ${r.index} ${name}`)));
      worst = Math.max(worst, d);
      if (!(d <= 1e-4)) return failed(`step ${r.index} (t=${r.timestep}): ${name} differs by ${d}`);
    }
  }
  return pass(`${vec.records.length} steps, max abs diff ${worst.toExponential(2)}`);
}

/** The recorded run replayed through RuntimePipeline.generate on replay sessions. */
export async function checkReplay(bundle, policy, tokenizer, sampler, replay) {
  const m = bundle.manifest;
  const log = new ReplayLog(replay.calls);
  const sessions = {};
  const roles = new Set(replay.calls.map((c) => c.role));
  for (const role of ['text_encoder', ...policy.roles(), 'vae_decoder', ...roles]) {
    if (role in sessions) continue;
    const c = bundle.components.find((x) => x.role === role && x.target === 'onnx') ??
      bundle.components.find((x) => x.role === role);
    if (c) sessions[role] = new ReplaySession(role, c.inputs, c.outputs, log);
  }
  const runtime = new RuntimePipeline(tokenizer, sessions, m.scheduler.config, m.model.latent_shape,
    m.model.latent_scale_factor, policy, null);
  const latents = new Map();
  let result;
  try {
    result = await runtime.generate(sampler.prompt, { steps: sampler.steps, guidance: sampler.guidance,
      seed: sampler.seed, onStep: (i, x) => latents.set(i, x.slice()) });
  } catch (exc) {
    if (exc instanceof ReplayMismatch || exc instanceof PocketdiffError) return failed(exc.message);
    if (exc instanceof NotRun) return notRun(exc.message);
    throw exc;
  }
  if (log.index !== replay.calls.length) return failed(`${log.index} calls made, ${replay.calls.length} recorded`);
  const got = result.trace.map((c) => c.toDict(false));
  if (JSON.stringify(got) !== JSON.stringify(sampler.trace)) {
    return failed(`trace ${JSON.stringify(got)} differs from the recorded ${JSON.stringify(sampler.trace)}`);
  }
  const tol = sampler.tolerance ?? 1e-3;
  const last = Math.max(...latents.keys());
  for (const [name, x, rec] of [['latent_after_step_1', latents.get(0), sampler.latent_after_step_1],
    ['latent_after_last_step', latents.get(last), sampler.latent_after_last_step]]) {
    const bad = summaryMismatch(x, rec, tol);
    if (bad) return failed(`${name}: ${bad}`);
  }
  const want = b64bytes(replay.image.data);
  if (JSON.stringify([result.height, result.width, 3]) !== JSON.stringify(replay.image.shape)) {
    return failed(`image shape ${JSON.stringify([result.height, result.width, 3])}, recorded ${JSON.stringify(replay.image.shape)}`);
  }
  const d = maxDiff(Array.from(result.image), Array.from(want));
  if (d > 1) return failed(`decoded image differs from the recorded one by ${d}/255`);
  return pass(`${replay.calls.length} calls replayed through RuntimePipeline.generate; trace, inputs (max abs ` +
    `diff ${log.worst.toExponential(2)}), latents and image (max diff ${d}/255) match`);
}

function checkBudget(manifest, vectors) {
  if (!('step_budget' in manifest)) return failed('test vectors have step_budget but the manifest has none');
  const spec = BudgetSpec.fromDict(manifest.step_budget);
  for (const v of vectors) {
    const targets = spec.targets('auto');
    const tol = v.tolerance ?? 1e-3;
    const same = Object.keys(targets).length === Object.keys(v.targets).length &&
      Object.entries(v.targets).every(([k, x]) => k in targets && Math.abs(targets[k] - x) <= tol);
    if (!same) return failed(`${JSON.stringify(v.prompt)}: targets ${JSON.stringify(targets)}, want ${JSON.stringify(v.targets)}`);
    const steps = spec.choose(v.quality, targets);
    if (steps !== v.steps) return failed(`${JSON.stringify(v.prompt)}: the rule picks ${steps} steps, want ${v.steps}`);
  }
  return pass(`${vectors.length} prompts: same steps`);
}

async function guarded(fn) {
  try {
    return await fn();
  } catch (exc) {
    if (exc instanceof NotRun) return notRun(exc.message);
    if (exc instanceof PocketdiffError) return failed(exc.message);
    return failed(`${exc.name}: ${exc.message}`);
  }
}

export async function conformance(dir, keyFile) {
  const checks = {};
  let loaded = null;
  let trustedKey = null;
  let keyError = null;
  try {
    trustedKey = readKey(keyFile);
  } catch (exc) {
    if (!(exc instanceof PocketdiffError)) throw exc;
    keyError = exc.message;
  }
  try {
    loaded = await loadChecked(dir, trustedKey);
    checks.manifest = pass(`manifest checked, ${loaded.bundle.manifest.files.length} files of the right size and sha256`);
    checks.signature = keyError ? failed(keyError)
      : trustedKey ? pass(`signed by ${loaded.bundle.signedBy}`) : notRun('no trusted key given');
  } catch (exc) {
    if (!(exc instanceof PocketdiffError)) throw exc;
    let unsigned = null;
    if (trustedKey) unsigned = await loadChecked(dir, null).catch(() => null);
    if (unsigned) {
      checks.manifest = pass('manifest and files check without the key');
      checks.signature = failed(exc.message);
    } else {
      checks.manifest = failed(exc.message);
      checks.signature = notRun('the bundle did not load');
    }
  }
  if (loaded) {
    const { bundle, policy, tokenizer } = loaded;
    const m = bundle.manifest;
    let vec = null;
    if (m.test_vectors) {
      const bytes = await bundle.read(m.test_vectors);
      vec = parseJson(new TextDecoder().decode(bytes));
    }
    const none = (what) => notRun(`the bundle's test vectors have no ${what}`);
    checks.tokenizer = vec?.tokens ? await guarded(() => checkTokenizer(tokenizer, vec.tokens)) : none('tokens');
    checks.rng = vec?.initial_latents ? await guarded(() => checkRng(vec.initial_latents)) : none('initial_latents');
    checks.timesteps = vec?.timesteps ? await guarded(() => checkTimesteps(m.scheduler.config, vec.timesteps)) : none('timesteps');
    for (const s of vec?.schedulers ?? []) checks[`scheduler:${s.name}`] = await guarded(() => checkScheduler(s));
    const name = `policy:${vec?.sampler?.policy ?? policy.name}`;
    if (vec?.sampler && vec?.replay) {
      checks[name] = await guarded(() => checkReplay(bundle, policy, tokenizer, vec.sampler, vec.replay));
    } else checks[name] = none('replay');
    checks.step_budget = vec?.step_budget ? await guarded(() => checkBudget(m, vec.step_budget))
      : notRun('the bundle has no step-budget predictor');
  }
  return { port: PORT, bundle: dir, checks };
}

async function main(argv) {
  const args = parseArgs(argv);
  if (!args) {
    process.stderr.write(USAGE + '\n');
    return 2;
  }
  if (args.verb === 'verify') {
    try {
      await loadChecked(args.bundle, readKey(args.keyFile));
    } catch (exc) {
      if (!(exc instanceof PocketdiffError)) throw exc;
      process.stderr.write(`error: ${exc.message.replace(/\n/g, ' ')}\n`);
      return 2;
    }
    process.stdout.write('ok\n');
    return 0;
  }
  const report = await conformance(args.bundle, args.keyFile);
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  return Object.values(report.checks).some((c) => c.status === 'failed') ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('conformance.mjs')) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
