// Mirrors pocketdiff/runtime/manifest.py: a bundle manifest's structure and its paths, checked by hand before
// anything in it is used, with the same messages naming the same fields (`manifest.components[2].role`).
// resolveInside confines a path to the bundle through a reader ({isSymlink(rel), readLink(rel)}): each symlink
// on the way is followed by reading the link, judged lexically before the next lstat.

import { PocketdiffError, pyEq, repr, typeName } from './errors.js';
import { BudgetSpec } from './policies/budget.js';

export const FORMAT_VERSION = 1;
export const TARGETS = ['onnx', 'coreml', 'executorch'];
export const PRECISIONS = ['fp32', 'fp16'];
export const QUANTIZATIONS = [null, 'int8', 'palette6', 'palette4'];
export const TOP_KEYS = { format_version: true, created_by: false, export: false, model: true, tokenizer: true,
  scheduler: true, defaults: true, sampler: false, step_budget: false, components: true, files: true,
  test_vectors: false };
const COMPONENT_KEYS = { name: true, role: true, target: true, path: true, precision: true, quantization: false,
  inputs: true, outputs: true, parity: false, meta: false };
const FILE_KEYS = { path: true, sha256: true, bytes: true };
const TENSOR_KEYS = { name: true, shape: true, dtype: true };
const SHA256 = /^[0-9a-f]{64}$/;
export const MAX_SYMLINKS = 40;

const fail = (where, what) => new PocketdiffError(`bundle manifest: ${where} ${what}`);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isInt = (v) => typeof v === 'number' && Number.isInteger(v);
const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
const has = (o, k) => Object.hasOwn(o, k);

function keys(obj, spec, where) {
  if (!isObject(obj)) throw fail(where, `must be an object, got ${typeName(obj)}`);
  const unknown = Object.keys(obj).filter((k) => !has(spec, k)).sort();
  if (unknown.length) throw fail(where, `has an unknown field ${repr(unknown[0])}; allowed: ${Object.keys(spec).join(', ')}`);
  const missing = Object.entries(spec).filter(([k, required]) => required && !has(obj, k)).map(([k]) => k);
  if (missing.length) throw fail(`${where}.${missing[0]}`, 'is missing');
  return obj;
}

function int(v, where, minimum) {
  if (!isInt(v) || v < minimum) throw fail(where, `must be an integer >= ${minimum}, got ${repr(v)}`);
  return v;
}

function str(v, where) {
  if (typeof v !== 'string' || !v) throw fail(where, `must be a non-empty string, got ${repr(v)}`);
  return v;
}

function ints(v, where, n) {
  if (!Array.isArray(v) || v.length !== n) throw fail(where, `must be a list of ${n} integers, got ${repr(v)}`);
  v.forEach((x, i) => int(x, `${where}[${i}]`, 1));
  return v;
}

function tensors(v, where) {
  if (!Array.isArray(v)) throw fail(where, `must be a list, got ${typeName(v)}`);
  v.forEach((t, i) => {
    const w = `${where}[${i}]`;
    keys(t, TENSOR_KEYS, w);
    str(t.name, `${w}.name`);
    str(t.dtype, `${w}.dtype`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => (isInt(d) && d >= 0) || typeof d === 'string')) {
      throw fail(`${w}.shape`, `must be a list of integers >= 0 or symbol strings, got ${repr(t.shape)}`);
    }
  });
}

/** PurePosixPath(p).parts of a relative path: no empty or '.' parts ('..' kept). */
export const posixParts = (p) => p.split('/').filter((x) => x !== '' && x !== '.');

/** A path the manifest names: relative POSIX, inside the bundle by its letters alone. */
export function checkPath(rel, where) {
  str(rel, where);
  if (rel.includes('\\') || rel.includes('\0') || rel.startsWith('/') || /^[A-Za-z]:/.test(rel)) {
    throw fail(where, `must be a relative POSIX path inside the bundle, got ${repr(rel)}`);
  }
  const parts = posixParts(rel);
  if (rel.split('/').some((p) => p === '..' || p === '.') || rel.replace(/\/+$/, '').split('/').includes('') || !parts.length) {
    throw fail(where, `must stay inside the bundle (no '..', '.' or empty parts), got ${repr(rel)}`);
  }
  return rel;
}

/**
 * `rel` (which passed checkPath) with every symlink on the way followed by reading the link (reader.isSymlink,
 * reader.readLink on the path so far, relative to the bundle) and checked to stay inside; returns the resolved
 * path relative to the bundle. A reader without symlinks (the browser's) answers isSymlink with false.
 */
export async function resolveInside(reader, rel, where) {
  let parts = posixParts(rel);
  const done = [];
  let hops = 0;
  while (parts.length) {
    const part = parts.shift();
    if (part === '..') {
      if (!done.length) throw fail(where, `${repr(rel)} leaves the bundle through a symlink`);
      done.pop();
      continue;
    }
    const current = [...done, part].join('/');
    if (await reader.isSymlink(current)) {
      hops += 1;
      const target = await reader.readLink(current);
      if (hops > MAX_SYMLINKS || target.startsWith('/')) {
        throw fail(where, `${repr(rel)} is a symlink that leaves the bundle (to ${repr(target)})`);
      }
      parts = [...posixParts(target), ...parts];
      continue;
    }
    done.push(part);
  }
  return done.join('/');
}

/** Every field the runtime reads, with its type and range; returns `m`. knownRoles: a Set of roles. */
export function checkManifest(m, knownRoles) {
  if (!isObject(m)) throw fail('(the whole file)', `must be a JSON object, got ${typeName(m)}`);
  keys(m, TOP_KEYS, 'manifest');
  if (!pyEq(m.format_version, FORMAT_VERSION)) {
    throw new PocketdiffError(`bundle has manifest format_version ${repr(m.format_version)}; this pocketdiff reads ` +
      `${FORMAT_VERSION}`);
  }
  const model = keys(m.model, { image_size: true, latent_shape: true, latent_scale_factor: true }, 'manifest.model');
  ints(model.image_size, 'manifest.model.image_size', 2);
  ints(model.latent_shape, 'manifest.model.latent_shape', 3);
  if (!isNumber(model.latent_scale_factor) || model.latent_scale_factor <= 0) {
    throw fail('manifest.model.latent_scale_factor', `must be a number > 0, got ${repr(model.latent_scale_factor)}`);
  }
  const tok = keys(m.tokenizer, { vocab: true, merges: true, max_length: true }, 'manifest.tokenizer');
  checkPath(tok.vocab, 'manifest.tokenizer.vocab');
  checkPath(tok.merges, 'manifest.tokenizer.merges');
  int(tok.max_length, 'manifest.tokenizer.max_length', 2);
  const sched = keys(m.scheduler, { name: true, diffusers_class: true, config: true, timesteps: true },
    'manifest.scheduler');
  str(sched.name, 'manifest.scheduler.name');
  str(sched.diffusers_class, 'manifest.scheduler.diffusers_class');
  if (!isObject(sched.config)) throw fail('manifest.scheduler.config', 'must be an object');
  if (!Array.isArray(sched.timesteps) || !sched.timesteps.every(isNumber)) {
    throw fail('manifest.scheduler.timesteps', 'must be a list of numbers');
  }
  const defaults = keys(m.defaults, { steps: true, guidance: true }, 'manifest.defaults');
  int(defaults.steps, 'manifest.defaults.steps', 1);
  if (!isNumber(defaults.guidance) || defaults.guidance < 0) {
    throw fail('manifest.defaults.guidance', `must be a number >= 0, got ${repr(defaults.guidance)}`);
  }
  if (has(m, 'sampler')) {
    const sampler = keys(m.sampler, { policy: true, params: true }, 'manifest.sampler');
    str(sampler.policy, 'manifest.sampler.policy');
    if (!isObject(sampler.params)) throw fail('manifest.sampler.params', 'must be an object');
  }
  if (has(m, 'step_budget')) {
    if (!isObject(m.step_budget)) throw fail('manifest.step_budget', 'must be an object');
    try {
      BudgetSpec.fromDict(m.step_budget);
    } catch (exc) {
      if (!(exc instanceof PocketdiffError)) throw exc;
      throw fail('manifest.step_budget', `is invalid: ${exc.message}`);
    }
  }
  for (const key of ['created_by', 'export']) {
    if (has(m, key) && !isObject(m[key])) throw fail(`manifest.${key}`, 'must be an object');
  }
  if (m.test_vectors !== undefined && m.test_vectors !== null) checkPath(m.test_vectors, 'manifest.test_vectors');
  if (!Array.isArray(m.components) || !m.components.length) throw fail('manifest.components', 'must be a non-empty list');
  m.components.forEach((c, i) => {
    const w = `manifest.components[${i}]`;
    keys(c, COMPONENT_KEYS, w);
    str(c.name, `${w}.name`);
    if (typeof c.role !== 'string' || !knownRoles.has(c.role)) {
      throw fail(`${w}.role`, `is ${repr(c.role)}, not a role this runtime knows; allowed: ${[...knownRoles].sort().join(', ')}`);
    }
    if (!TARGETS.includes(c.target)) throw fail(`${w}.target`, `is ${repr(c.target)}; allowed: ${TARGETS.join(', ')}`);
    checkPath(c.path, `${w}.path`);
    if (!PRECISIONS.includes(c.precision)) {
      throw fail(`${w}.precision`, `is ${repr(c.precision)}; allowed: ${PRECISIONS.join(', ')}`);
    }
    if (!QUANTIZATIONS.includes(c.quantization ?? null)) {
      throw fail(`${w}.quantization`, `is ${repr(c.quantization)}; allowed: null, int8, palette6, palette4`);
    }
    tensors(c.inputs, `${w}.inputs`);
    tensors(c.outputs, `${w}.outputs`);
    for (const key of ['parity', 'meta']) {
      if (c[key] !== undefined && c[key] !== null && !isObject(c[key])) throw fail(`${w}.${key}`, 'must be an object or null');
    }
  });
  if (!Array.isArray(m.files)) throw fail('manifest.files', 'must be a list');
  m.files.forEach((e, i) => {
    const w = `manifest.files[${i}]`;
    keys(e, FILE_KEYS, w);
    checkPath(e.path, `${w}.path`);
    if (typeof e.sha256 !== 'string' || !SHA256.test(e.sha256)) {
      throw fail(`${w}.sha256`, `must be 64 lowercase hex digits, got ${repr(e.sha256)}`);
    }
    int(e.bytes, `${w}.bytes`, 0);
  });
  return m;
}
