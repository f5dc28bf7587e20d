// Mirrors pocketdiff/runtime/rng.py: the portable RNG for initial latents.
//
// MT19937 seeded with init_genrand(seed); uniform double (a >> 5, b >> 6) / 2^53; Marsaglia's polar method
// (return f*x2, keep f*x1 for the next call); normals fill the tensor in row-major order and are cast from
// Double to Float. This is NumPy's legacy RandomState(seed).standard_normal, and the same algorithm as the
// NumPyRandomSource of apple/ml-stable-diffusion (which is internal to that package, so we carry our own).
import Foundation

public let MAX_SEED: UInt64 = 4_294_967_295

public func checkSeed(_ seed: Int) throws -> UInt32 {
    guard seed >= 0, UInt64(seed) <= MAX_SEED else {
        throw PocketdiffError("seed must be an integer in [0, \(MAX_SEED)], got \(seed)")
    }
    return UInt32(seed)
}

/// Plain MT19937 (Matsumoto & Nishimura).
public struct MT19937 {
    private var mt = [UInt32](repeating: 0, count: 624)
    private var index = 624

    public init(seed: UInt32) {
        mt[0] = seed
        for i in 1..<624 {
            let prev = mt[i - 1]
            mt[i] = 1_812_433_253 &* (prev ^ (prev >> 30)) &+ UInt32(i)
        }
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (mt[i] & 0x8000_0000) | (mt[(i + 1) % 624] & 0x7FFF_FFFF)
            mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908_B0DF : 0)
        }
        index = 0
    }

    public mutating func nextU32() -> UInt32 {
        if index >= 624 { twist() }
        var y = mt[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    public mutating func nextDouble() -> Double {
        let a = Double(nextU32() >> 5)
        let b = Double(nextU32() >> 6)
        return (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }
}

/// NumPy's legacy standard normal stream for one seed.
public struct NumPyNormal {
    private var gen: MT19937
    private var spare: Double? = nil

    public init(seed: UInt32) { gen = MT19937(seed: seed) }

    public mutating func next() -> Double {
        if let s = spare {
            spare = nil
            return s
        }
        var x1 = 0.0, x2 = 0.0, r2 = 0.0
        repeat {
            x1 = 2.0 * gen.nextDouble() - 1.0
            x2 = 2.0 * gen.nextDouble() - 1.0
            r2 = x1 * x1 + x2 * x2
        } while !(r2 > 0.0 && r2 < 1.0)
        let f = (-2.0 * log(r2) / r2).squareRoot()
        spare = f * x1
        return f * x2
    }
}

/// The first `count` Double normals for `seed` (rng.reference_normals).
public func referenceNormals(seed: Int, count: Int) throws -> [Double] {
    var normal = NumPyNormal(seed: try checkSeed(seed))
    return (0..<count).map { _ in normal.next() }
}

/// Standard-normal Float latents of `shape` for `seed` (rng.initial_latents).
public func initialLatents(seed: Int, shape: [Int]) throws -> Tensor {
    var normal = NumPyNormal(seed: try checkSeed(seed))
    let count = shape.reduce(1, *)
    return Tensor(shape: shape, data: (0..<count).map { _ in Float(normal.next()) })
}
