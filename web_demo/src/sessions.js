// Mirrors pocketdiff/runtime/sessions.py: Tensor (data + shape + dtype), TensorSpec, the Session interface the
// one sampler loop calls, and its backends here: OrtSession (onnxruntime-web; each feed cast to the dtype the
// component spec declares: input_ids int32 or int64, a float timestep, ...) and ShapeSession (zeros of the
// declared shapes: a dry run's stand-in for a model).
//
// Session interface: { inputs: TensorSpec[], outputs: TensorSpec[], fixedBatch: number | null,
//                      async run(feeds: {name: Tensor}) -> {name: Tensor} }

import { PocketdiffError, repr } from './errors.js';

const ARRAYS = { float32: Float32Array, float64: Float64Array, int32: Int32Array, int64: BigInt64Array,
  uint8: Uint8Array, bool: Uint8Array };

export class Tensor {
  /** data: a typed array (BigInt64Array for int64) or a plain array; shape: dims, [] for a scalar. */
  constructor(data, shape, dtype = 'float32') {
    Object.assign(this, { data, shape: [...shape], dtype });
  }

  get size() { return this.shape.reduce((a, b) => a * b, 1); }

  /** The values as plain numbers (bigint converted). */
  numbers() { return Array.from(this.data, Number); }

  /** This tensor's values cast to `dtype` (a new Tensor; the same one when the dtype already matches). */
  cast(dtype) {
    if (dtype === this.dtype && this.data instanceof (ARRAYS[dtype] ?? Array)) return this;
    if (dtype === 'float16') return new Tensor(Uint16Array.from(this.data, (v) => f32ToF16(Number(v))), this.shape, dtype);
    const T = ARRAYS[dtype];
    if (!T) throw new PocketdiffError(`no cast to dtype ${repr(dtype)}`);
    const src = this.dtype === 'float16' ? Array.from(this.data, f16ToF32) : this.data;
    const conv = dtype === 'int64' ? (v) => BigInt(Math.trunc(Number(v)))
      : dtype.startsWith('int') ? (v) => Math.trunc(Number(v)) : Number;
    return new Tensor(T.from(src, conv), this.shape, dtype);
  }

  /** Rows [start, end) of the leading (batch) dim. */
  rows(start, end) {
    const per = this.size / this.shape[0];
    return new Tensor(this.data.slice(start * per, end * per), [end - start, ...this.shape.slice(1)], this.dtype);
  }

  /** Tensors stacked along the leading (batch) dim. */
  static concat(tensors) {
    const first = tensors[0];
    const T = first.data.constructor;
    const out = new T(tensors.reduce((a, t) => a + t.size, 0));
    let k = 0;
    for (const t of tensors) { out.set(t.data, k); k += t.size; }
    return new Tensor(out, [tensors.reduce((a, t) => a + t.shape[0], 0), ...first.shape.slice(1)], first.dtype);
  }
}

export function f32ToF16(v) {
  const f = new Float32Array([v]), u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000, e = ((u >>> 23) & 0xff) - 127 + 15, m = u & 0x7fffff;
  if (((u >>> 23) & 0xff) === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const mm = (m | 0x800000) >>> (1 - e);
    return sign | ((mm + 0xfff + ((mm >>> 13) & 1)) >>> 13);
  }
  const r = sign | (e << 10) | (m >>> 13);
  return r + ((m & 0x1fff) > 0x1000 || ((m & 0x1fff) === 0x1000 && (r & 1)) ? 1 : 0);
}

export function f16ToF32(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >>> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** One named tensor of a component's interface; a string dim is symbolic (batch_size). */
export class TensorSpec {
  constructor(name, shape, dtype) { Object.assign(this, { name, shape: [...shape], dtype }); }

  static fromDict(d) { return new TensorSpec(d.name, d.shape, d.dtype); }

  toDict() { return { name: this.name, shape: this.shape, dtype: this.dtype }; }
}

/** The batch of a static-shape interface: the first input's leading dim when it is a number. */
export function firstDim(specs) {
  const shape = specs.length ? specs[0].shape : [];
  return shape.length && typeof shape[0] === 'number' ? shape[0] : null;
}

export function checkFeeds(path, specs, feeds) {
  const missing = specs.map((s) => s.name).filter((n) => !(n in feeds)).sort();
  if (missing.length) throw new PocketdiffError(`${path}: missing inputs ${repr(missing)}`);
}

/** An onnxruntime-web InferenceSession with named Tensor inputs and outputs. */
export class OrtSession {
  constructor(ort, session, inputs, outputs, path) {
    Object.assign(this, { ort, session, inputs, outputs, path });
  }

  /** `ort`: the onnxruntime-web module; `model`: the .onnx bytes; inputs/outputs: the component's TensorSpecs. */
  static async create(ort, model, inputs, outputs, { path = 'model.onnx', executionProviders = ['wasm'] } = {}) {
    let session;
    try {
      session = await ort.InferenceSession.create(model, { executionProviders });
    } catch (exc) {
      throw new PocketdiffError(`cannot load ONNX model ${path}: ${exc.message ?? exc}`);
    }
    return new OrtSession(ort, session, inputs, outputs, path);
  }

  get fixedBatch() { return firstDim(this.inputs); }

  async run(feeds) {
    checkFeeds(this.path, this.inputs, feeds);
    const ortFeeds = {};
    for (const spec of this.inputs) {
      const t = feeds[spec.name].cast(spec.dtype);
      ortFeeds[spec.name] = new this.ort.Tensor(spec.dtype, t.data, t.shape);
    }
    const res = await this.session.run(ortFeeds);
    const out = {};
    for (const spec of this.outputs) {
      const r = res[spec.name];
      if (!r) throw new PocketdiffError(`${this.path}: the model gave no output ${repr(spec.name)}`);
      const dtype = r.type === 'float16' ? 'float16' : r.type;
      const t = new Tensor(r.data, r.dims, dtype);
      out[spec.name] = dtype === 'float16' ? t.cast('float32') : t;
    }
    return out;
  }

  async release() { await this.session.release?.(); }
}

/** Zeros of the declared output shapes, the symbolic (batch) dims taken from the feeds' batch. */
export class ShapeSession {
  constructor(inputs, outputs, name = 'shape session') { Object.assign(this, { inputs, outputs, path: name }); }

  get fixedBatch() { return firstDim(this.inputs); }

  async run(feeds) {
    checkFeeds(this.path, this.inputs, feeds);
    const sym = this.inputs.find((s) => s.shape.length && typeof s.shape[0] !== 'number');
    const batch = sym ? feeds[sym.name].shape[0] : this.fixedBatch ?? 1;
    const out = {};
    for (const o of this.outputs) {
      const shape = o.shape.map((d) => (typeof d === 'number' ? d : batch));
      const T = ARRAYS[o.dtype] ?? Float32Array;
      out[o.name] = new Tensor(new T(shape.reduce((a, b) => a * b, 1)), shape, o.dtype);
    }
    return out;
  }
}
