// Golden values for the JS core, copied from the Python suite (independent references):
// tests/test_tokenizer.py::test_literal_ids, tests/test_rng.py::VECTORS, RFC 8032 test vector 1.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { PocketdiffError } from '../src/errors.js';
import { checkSeed, initialLatents } from '../src/rng.js';
import { SCHEDULERS, schedulerFromConfig } from '../src/schedulers.js';
import { verify } from '../src/signing.js';
import { CLIPBPETokenizer } from '../src/tokenizer.js';
import { makePolicy } from '../src/policies/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const BUNDLE = process.env.POCKETDIFF_BUNDLE || path.join(here, '../../pocketdiff/toyworld/assets/student');

function tokenizer() {
  const d = path.join(BUNDLE, 'tokenizer');
  const read = (n) => fs.readFileSync(path.join(d, n), 'utf8');
  return CLIPBPETokenizer.fromTexts(read('vocab.json'), read('merges.txt'), read('special_tokens_map.json'),
    { vocab: 'vocab.json', merges: 'merges.txt', special: 'special_tokens_map.json', folder: d });
}

test('tokenizer: literal ids (tests/test_tokenizer.py)', () => {
  const tok = tokenizer();
  const out = tok.encode('a small red circle in the top left on a grey background');
  assert.deepEqual(out.inputIds.slice(0, 15), [1059, 320, 709, 707, 647, 538, 604, 717, 558, 519, 320, 667, 623, 1060, 1060]);
  assert.equal(out.nTokens, 14);
  assert.equal(out.inputIds.length, 77);
  assert.deepEqual(tok.encode('Hello, World! 123').inputIds.slice(0, 14),
    [1059, 521, 75, 75, 334, 267, 86, 533, 723, 256, 272, 273, 274, 1060]);
});

test('tokenizer: overflow error and truncate', () => {
  const tok = tokenizer();
  const long = Array(80).fill('circle').join(' ');
  assert.throws(() => tok.encode(long), (e) => e instanceof PocketdiffError && /82 tokens.*limit of 77/.test(e.message));
  const out = tok.encode(long, { truncate: true });
  assert.ok(out.truncated);
  assert.equal(out.inputIds.length, 77);
  assert.equal(out.inputIds[76], tok.eosId);
});

const VECTORS = {
  0: [1.764052391052246, 0.40015721321105957, 0.978738009929657, 2.2408931255340576, 1.8675580024719238,
    -0.9772778749465942],
  42: [0.49671414494514465, -0.13826429843902588, 0.6476885676383972, 1.5230298042297363, -0.2341533750295639,
    -0.23413695394992828],
  4294967295: [0.6484086513519287, 0.6693235039710999, -1.0805437564849854, 0.2845010459423065,
    0.1138877347111702, 0.867621898651123],
};

test('rng: first draws (tests/test_rng.py), C order, bad seeds', () => {
  for (const [seed, want] of Object.entries(VECTORS)) {
    assert.deepEqual(Array.from(initialLatents(Number(seed), [1, 4, 8, 8]).slice(0, 6)), want.map(Math.fround));
  }
  assert.deepEqual(Array.from(initialLatents(7, [2, 4])), Array.from(initialLatents(7, [8])));
  for (const bad of [-1, 2 ** 32, 1.5, '3', true]) assert.throws(() => checkSeed(bad), /seed must be an integer/);
});

test('schedulers: registry, timesteps, refusals name the option', () => {
  assert.deepEqual(Object.keys(SCHEDULERS), ['ddim', 'euler', 'dpm++2m', 'pndm']);
  const config = JSON.parse(fs.readFileSync(path.join(BUNDLE, 'manifest.json'), 'utf8')).scheduler.config;
  const s = schedulerFromConfig(config);
  s.setTimesteps(4);
  assert.deepEqual(s.timesteps, [999, 749, 499, 249]);
  assert.throws(() => SCHEDULERS.euler.create({ ...config, use_karras_sigmas: true }),
    { message: 'scheduler option use_karras_sigmas=True is not supported by the pocketdiff runtime (EulerDiscrete); allowed: False' });
  assert.throws(() => schedulerFromConfig({ _class_name: 'LMSDiscreteScheduler' }),
    { message: "unknown scheduler class 'LMSDiscreteScheduler'; allowed: DDIMScheduler, EulerDiscreteScheduler, " +
      'DPMSolverMultistepScheduler, PNDMScheduler' });
  assert.throws(() => s.setTimesteps(0), { message: 'steps must be an integer in [1, 1000], got 0' });
});

test('policies: registry and param errors', () => {
  assert.throws(() => makePolicy('nope'), { message: "unknown sampler policy 'nope'; allowed: cfg, guidance_embedded, ddsm, clockwork, adadiff" });
  assert.throws(() => makePolicy('cfg', { x: 1 }), { message: "sampler policy 'cfg' has no param 'x'; allowed: none" });
  assert.throws(() => makePolicy('clockwork', { period: 'a' }), { message: "sampler policy 'clockwork': param period must be int, got 'a'" });
  assert.equal(makePolicy('ddsm', { widths: [1, 0.625] }).roles().join(), 'unet,unet_w625');
});

test('signing: RFC 8032 test vector 1 verifies with WebCrypto Ed25519, a changed message does not', async () => {
  const hex = (s) => Uint8Array.from(s.match(/../g), (h) => parseInt(h, 16));
  const pub = hex('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a');
  const sig = 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0' +
    '595bbe24655141438e7a100b\n';
  await verify(new Uint8Array(0), sig, pub, 'b');
  await assert.rejects(verify(new Uint8Array([1]), sig, pub, 'b'), /does not verify with the trusted key/);
  await assert.rejects(verify(new Uint8Array(0), null, pub, 'b'), /is not signed \(manifest.json.sig is missing\)/);
});

test('sampler: the loop on shape sessions gives the trace; a callback returning false cancels', async () => {
  const { RuntimePipeline, Cancelled } = await import('../src/sampler.js');
  const { ShapeSession, TensorSpec } = await import('../src/sessions.js');
  const m = JSON.parse(fs.readFileSync(path.join(BUNDLE, 'manifest.json'), 'utf8'));
  const sessions = {};
  for (const c of m.components.filter((x) => x.target === 'onnx')) {
    sessions[c.role] = new ShapeSession(c.inputs.map(TensorSpec.fromDict), c.outputs.map(TensorSpec.fromDict), c.role);
  }
  const rt = new RuntimePipeline(tokenizer(), sessions, m.scheduler.config, m.model.latent_shape,
    m.model.latent_scale_factor, makePolicy('guidance_embedded'));
  const r = await rt.generate('a red circle', { steps: 4, guidance: 2, seed: 0 });
  assert.equal(r.image.length, 32 * 32 * 3);
  assert.deepEqual(r.trace.map((c) => `${c.step}:${c.role}`),
    ['null:text_encoder', '0:unet', '1:unet', '2:unet', '3:unet', 'null:vae_decoder']);
  await assert.rejects(rt.generate('a red circle', { steps: 4, guidance: 2, seed: 0, callback: (done) => done < 2 }),
    (e) => e instanceof Cancelled && e.message === 'generation cancelled after step 2 of 4');
});
