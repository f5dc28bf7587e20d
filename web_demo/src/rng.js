// Mirrors pocketdiff/runtime/rng.py: MT19937 seeded with init_genrand(seed), 53-bit doubles, Marsaglia's polar
// method (keep f*x1 for the next call), C-order fill, float64 -> float32. This is NumPy's legacy
// RandomState(seed).standard_normal stream. uint32 arithmetic with Math.imul and >>> 0.

import { PocketdiffError, repr } from './errors.js';

const MAX_SEED = 2 ** 32 - 1;

export function checkSeed(seed) {
  if (typeof seed !== 'number' || !Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
    throw new PocketdiffError(`seed must be an integer in [0, ${MAX_SEED}], got ${repr(seed)}`);
  }
  return seed;
}

export class MT19937 {
  constructor(seed) {
    this.mt = new Uint32Array(624);
    this.mt[0] = seed >>> 0;
    for (let i = 1; i < 624; i++) {
      const prev = this.mt[i - 1];
      this.mt[i] = (Math.imul(1812433253, (prev ^ (prev >>> 30)) >>> 0) + i) >>> 0;
    }
    this.index = 624;
  }

  twist() {
    const mt = this.mt;
    for (let i = 0; i < 624; i++) {
      const y = ((mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7fffffff)) >>> 0;
      mt[i] = (mt[(i + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0)) >>> 0;
    }
    this.index = 0;
  }

  nextU32() {
    if (this.index >= 624) this.twist();
    let y = this.mt[this.index];
    this.index += 1;
    y = (y ^ (y >>> 11)) >>> 0;
    y = (y ^ ((y << 7) & 0x9d2c5680)) >>> 0;
    y = (y ^ ((y << 15) & 0xefc60000)) >>> 0;
    y = (y ^ (y >>> 18)) >>> 0;
    return y;
  }

  nextDouble() {
    const a = this.nextU32() >>> 5;
    const b = this.nextU32() >>> 6;
    return (a * 67108864.0 + b) / 9007199254740992.0;
  }
}

/** The first `count` float64 standard normals for `seed` (a Float64Array). */
export function referenceNormals(seed, count) {
  const gen = new MT19937(checkSeed(seed));
  const out = new Float64Array(count);
  let k = 0;
  while (k < count) {
    let x1, x2, r2;
    do {
      x1 = 2.0 * gen.nextDouble() - 1.0;
      x2 = 2.0 * gen.nextDouble() - 1.0;
      r2 = x1 * x1 + x2 * x2;
    } while (!(r2 > 0.0 && r2 < 1.0));
    const f = Math.sqrt((-2.0 * Math.log(r2)) / r2);
    out[k++] = f * x2;
    if (k < count) out[k++] = f * x1;
  }
  return out;
}

/** Standard-normal float32 latents of `shape` for `seed`, in C order (a Float32Array). */
export function initialLatents(seed, shape) {
  const n = shape.reduce((a, b) => a * b, 1);
  return Float32Array.from(referenceNormals(checkSeed(seed), n));
}
