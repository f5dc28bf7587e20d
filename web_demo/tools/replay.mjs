// Replay sessions (docs/ports.md, `replay`): the Session interface (src/sessions.js) answering each call of a
// recorded run with its recorded outputs, checking on the way that the call is the one recorded (role, batch)
// and that every input fed matches the recorded summary (shape, first_values, mean_abs within 1e-3 + 1e-3
// relative). The step of each call is checked afterwards against the sampler's trace (the loop records it).

import { Tensor, TensorSpec, firstDim } from '../src/sessions.js';

export class ReplayMismatch extends Error {}
export class NotRun extends Error {}

/** base64 -> bytes (node and browsers). */
export function b64bytes(s) {
  if (typeof Buffer !== 'undefined') return new Uint8Array(Buffer.from(s, 'base64'));
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

/** A tensor record's `data` (base64 little-endian float32) as a Float32Array; NotRun when it was left out. */
export function recordData(rec, what) {
  if (typeof rec.data !== 'string') throw new NotRun(`${what} has no data (over 2^20 elements)`);
  const bytes = b64bytes(rec.data);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

export const close = (got, want, tol) => Math.abs(got - want) <= tol + tol * Math.abs(want);

/** The largest |got - want| over a summary record ({first_values, mean_abs}) of `values`; null if within tol. */
export function summaryMismatch(values, rec, tol) {
  const first = Array.from(values.slice(0, rec.first_values.length), Number);
  const meanAbs = values.length ? Array.from(values, (v) => Math.abs(Number(v))).reduce((a, b) => a + b, 0) / values.length : 0;
  if (first.length !== rec.first_values.length) return `${first.length} values, recorded ${rec.first_values.length}`;
  for (let i = 0; i < first.length; i++) {
    if (!close(first[i], rec.first_values[i], tol)) return `value ${i} is ${first[i]}, recorded ${rec.first_values[i]}`;
  }
  if (!close(meanAbs, rec.mean_abs, tol)) return `mean_abs is ${meanAbs}, recorded ${rec.mean_abs}`;
  return null;
}

/** The shared cursor over the recorded calls: [{step, role, batch, inputs, outputs}]. */
export class ReplayLog {
  constructor(calls, tol = 1e-3) {
    Object.assign(this, { calls, tol, index: 0, worst: 0 });
  }

  next(role, feeds, firstInput) {
    const k = this.index;
    const rec = this.calls[k];
    if (!rec) throw new ReplayMismatch(`call ${k} (${role}) is one more than the ${this.calls.length} recorded`);
    this.index += 1;
    const first = feeds[firstInput];
    const batch = first && first.shape.length ? first.shape[0] : 1;
    if (rec.role !== role || rec.batch !== batch) {
      throw new ReplayMismatch(`call ${k} is ${role} at batch ${batch}; recorded: ${rec.role} at batch ${rec.batch}`);
    }
    for (const [name, want] of Object.entries(rec.inputs)) {
      const got = feeds[name];
      if (!got) throw new ReplayMismatch(`call ${k} (${role}) fed no ${name}`);
      if (JSON.stringify(got.shape) !== JSON.stringify(want.shape)) {
        throw new ReplayMismatch(`call ${k} (${role}) fed ${name} of shape ${JSON.stringify(got.shape)}, recorded ` +
          JSON.stringify(want.shape));
      }
      const bad = summaryMismatch(got.data, want, this.tol);
      if (bad) throw new ReplayMismatch(`call ${k} (${role}) input ${name}: ${bad}`);
      const first = Array.from(got.data.slice(0, want.first_values.length), Number);
      first.forEach((v, i) => { this.worst = Math.max(this.worst, Math.abs(v - want.first_values[i])); });
    }
    const extra = Object.keys(feeds).filter((n) => !(n in rec.inputs));
    if (extra.length) throw new ReplayMismatch(`call ${k} (${role}) fed ${extra.join(', ')}, not recorded`);
    const out = {};
    for (const [name, o] of Object.entries(rec.outputs)) {
      out[name] = new Tensor(recordData(o, `call ${k} (${role}) output ${name}`), o.shape, 'float32');
    }
    return out;
  }
}

/** One role's replay session, declared I/O from the bundle component's specs. */
export class ReplaySession {
  constructor(role, inputs, outputs, log) {
    Object.assign(this, { role, inputs: inputs.map(TensorSpec.fromDict), outputs: outputs.map(TensorSpec.fromDict),
      log, path: `replay:${role}` });
  }

  get fixedBatch() { return firstDim(this.inputs); }

  async run(feeds) { return this.log.next(this.role, feeds, this.inputs[0].name); }
}
