// Port of pocketdiff/runtime/rng.py: NumPy's legacy RandomState(seed).standard_normal, exactly.
// MT19937 seeded with init_genrand(seed); uniform double (a >> 5, b >> 6) -> (a * 67108864 + b) / 2^53; Marsaglia's
// polar method returning f*x2 first and keeping f*x1; latents filled row-major, cast float64 -> float32.
package pocketdiff.core

const val MAX_SEED = 4294967295L

fun checkSeed(seed: Long): Long {
    if (seed < 0 || seed > MAX_SEED) throw PocketdiffError("seed must be an integer in [0, $MAX_SEED], got $seed")
    return seed
}

/** Plain MT19937 (Matsumoto & Nishimura). */
class MT19937(seed: Long) {
    private val mt = IntArray(624)
    private var index = 624

    init {
        mt[0] = seed.toInt()
        for (i in 1 until 624) {
            val prev = mt[i - 1]
            mt[i] = 1812433253 * (prev xor (prev ushr 30)) + i  // mod 2^32 by Int overflow
        }
    }

    private fun twist() {
        for (i in 0 until 624) {
            val y = (mt[i] and 0x80000000.toInt()) or (mt[(i + 1) % 624] and 0x7FFFFFFF)
            mt[i] = mt[(i + 397) % 624] xor (y ushr 1) xor (if (y and 1 != 0) 0x9908B0DF.toInt() else 0)
        }
        index = 0
    }

    /** The next 32-bit output, as an unsigned value in a Long. */
    fun nextU32(): Long {
        if (index >= 624) twist()
        var y = mt[index++]
        y = y xor (y ushr 11)
        y = y xor ((y shl 7) and 0x9D2C5680.toInt())
        y = y xor ((y shl 15) and 0xEFC60000.toInt())
        y = y xor (y ushr 18)
        return y.toLong() and 0xFFFFFFFFL
    }

    fun nextDouble(): Double {
        val a = nextU32() ushr 5
        val b = nextU32() ushr 6
        return (a * 67108864.0 + b) / 9007199254740992.0
    }
}

/** NumPy's legacy standard-normal stream (polar method with the cached second value). */
class NormalStream(seed: Long) {
    private val gen = MT19937(checkSeed(seed))
    private var cached = 0.0
    private var hasCached = false

    fun next(): Double {
        if (hasCached) { hasCached = false; return cached }
        var x1: Double
        var x2: Double
        var r2: Double
        while (true) {
            x1 = 2.0 * gen.nextDouble() - 1.0
            x2 = 2.0 * gen.nextDouble() - 1.0
            r2 = x1 * x1 + x2 * x2
            if (r2 > 0.0 && r2 < 1.0) break
        }
        val f = Math.sqrt(-2.0 * StrictMath.log(r2) / r2)
        cached = f * x1; hasCached = true
        return f * x2
    }
}

/** The first ``count`` float64 normals for ``seed``. */
fun referenceNormals(seed: Long, count: Int): DoubleArray {
    val s = NormalStream(seed)
    return DoubleArray(count) { s.next() }
}

/** Standard-normal float32 latents of ``shape`` for ``seed``, row-major. */
fun initialLatents(seed: Long, shape: IntArray): Tensor {
    val s = NormalStream(seed)
    val n = shape.fold(1) { a, b -> a * b }
    return Tensor(shape.copyOf(), FloatArray(n) { s.next().toFloat() })
}
