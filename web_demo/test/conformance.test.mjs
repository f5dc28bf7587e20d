// The runner of docs/ports.md on real bundles: the shipped student bundle (POCKETDIFF_BUNDLE overrides it) and,
// when they exist, the per-policy bundles under ../build/ports/bundles/; hostile manifests refused with the
// Python runtime's words (tests/test_bundle_security.py), through the CLI's `verify` verb.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const RUNNER = path.join(here, '../tools/conformance.mjs');
const BUNDLE = process.env.POCKETDIFF_BUNDLE || path.join(here, '../../pocketdiff/toyworld/assets/student');
const POLICY_BUNDLES = path.join(here, '../../build/ports/bundles');

const runner = (...args) => spawnSync(process.execPath, [RUNNER, ...args], { encoding: 'utf8' });

function assertConforms(bundle) {
  const r = runner('conformance', bundle);
  const report = JSON.parse(r.stdout);
  const bad = Object.entries(report.checks).filter(([, c]) => c.status === 'failed');
  assert.deepEqual(bad, [], `failed checks on ${bundle}`);
  assert.equal(r.status, 0);
  assert.equal(report.port, 'js');
  return report;
}

test('conformance: the shipped student bundle, nothing failed', () => {
  const report = assertConforms(BUNDLE);
  for (const name of ['manifest', 'tokenizer', 'rng', 'timesteps']) assert.equal(report.checks[name].status, 'passed', name);
});

const policyBundles = fs.existsSync(POLICY_BUNDLES) ? fs.readdirSync(POLICY_BUNDLES) : [];
for (const name of policyBundles) {
  test(`conformance: the ${name} bundle, nothing failed`, () => { assertConforms(path.join(POLICY_BUNDLES, name)); });
}

function copyBundle(tmp) {
  const b = path.join(tmp, 'b');
  fs.cpSync(BUNDLE, b, { recursive: true });
  return b;
}

function edit(b, change) {
  const file = path.join(b, 'manifest.json');
  const m = JSON.parse(fs.readFileSync(file, 'utf8'));
  change(m);
  fs.writeFileSync(file, JSON.stringify(m));
}

const unet = (m) => m.components.find((c) => c.role === 'unet' && c.target === 'onnx');

const HOSTILE = {
  'component path with ../': [(b) => edit(b, (m) => { unet(m).path = 'onnx/../../outside/secret.onnx'; }),
    'manifest.components[1].path must stay inside the bundle'],
  'absolute path in files': [(b, s) => edit(b, (m) => { m.files[0].path = s; }),
    'manifest.files[0].path must be a relative POSIX path inside the bundle'],
  'symlinked model file pointing outside': [(b, s) => {
    fs.unlinkSync(path.join(b, 'onnx/unet/model.onnx'));
    fs.symlinkSync(s, path.join(b, 'onnx/unet/model.onnx'));
  }, 'is a symlink that leaves the bundle'],
  'component with an unknown key': [(b) => edit(b, (m) => { unet(m).weights = 'x'; }),
    "manifest.components[1] has an unknown field 'weights'"],
  'files entry missing sha256': [(b) => edit(b, (m) => { delete m.files[0].sha256; }), 'manifest.files[0].sha256 is missing'],
  'non-hex sha': [(b) => edit(b, (m) => { m.files[0].sha256 = 'z'.repeat(64); }),
    'manifest.files[0].sha256 must be 64 lowercase hex digits'],
  'unknown role': [(b) => edit(b, (m) => { unet(m).role = 'unet2'; }),
    "manifest.components[1].role is 'unet2', not a role this runtime knows"],
  'unknown target': [(b) => edit(b, (m) => { unet(m).target = 'tflite'; }),
    "manifest.components[1].target is 'tflite'; allowed: onnx, coreml, executorch"],
  'valid JSON but not an object': [(b) => fs.writeFileSync(path.join(b, 'manifest.json'), '[1, 2, 3]'),
    'bundle manifest: (the whole file) must be a JSON object, got list'],
  'a file altered': [(b) => fs.appendFileSync(path.join(b, 'onnx/unet/model.onnx'), 'x'),
    'bundle file onnx/unet/model.onnx is truncated or altered'],
};

for (const [name, [make, message]] of Object.entries(HOSTILE)) {
  test(`verify refuses a hostile bundle (${name}) with the Python message`, () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pocketdiff-hostile-'));
    try {
      const secret = path.join(tmp, 'outside', 'secret.onnx');
      fs.mkdirSync(path.dirname(secret));
      fs.copyFileSync(path.join(BUNDLE, 'onnx/unet/model.onnx'), secret);
      const b = copyBundle(tmp);
      make(b, secret);
      const r = runner('verify', b);
      assert.equal(r.status, 2, r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1);
      assert.ok(lines[0].startsWith('error: ') && lines[0].includes(message), lines[0]);
      assert.equal(r.stdout, '');
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
}

test('verify accepts the shipped bundle', () => {
  const r = runner('verify', BUNDLE);
  assert.equal(r.status, 0);
  assert.equal(r.stdout, 'ok\n');
});
