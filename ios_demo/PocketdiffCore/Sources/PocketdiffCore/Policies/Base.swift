// Mirrors pocketdiff/runtime/policies/base.py: what the one sampler loop (Sampler.swift) asks a policy.
//
// Per generation the loop encodes the texts the policy names (texts), calls begin once, then at every step i hands
// the policy the scheduler-scaled latent and takes back the scheduler's model output (step). The policy decides
// which roles to call with which inputs through Denoise.call (which times and traces each call) and keeps what
// carries to the next step in the state begin returned. A policy knows nothing of scheduler maths, RNG or
// tokenizer; the loop knows nothing method-specific.
import Foundation

public let UNET = "unet"

/// One session call of a generation: the step it belongs to (nil: before or after the loop), the role, the batch
/// it ran at and its wall time.
public struct Call: Equatable {
    public let step: Int?
    public let role: String
    public let batch: Int
    public let ms: Double
}

/// What a policy sees of the generation in progress.
public struct Denoise {
    public let hidden: Tensor  // [len(texts), 77, D]: the texts policy.texts() named, encoded in that order
    public let guidance: Double
    public let timesteps: [Double]  // the scheduler's, for this generation
    public let sessions: [String: Session]
    public let call: (String, [String: Tensor]) throws -> [String: Tensor]  // timed and traced by the loop
}

/// The state carried from step to step (Python's dict; the keys the policies use).
public final class PolicyState {
    public var w: Tensor?  // the guidance embedding of a w-embedded UNet ("w")
    public var light: [Bool] = []  // clockwork's schedule
    public var cache: Tensor?  // clockwork's low-resolution cache
    public init() {}
}

/// The UNet's inputs (export/roles.py): sample [B,C,h,w], timestep [] float32, states [B,77,D].
public func unetFeeds(_ sample: Tensor, _ t: Double, _ hidden: Tensor, extra: [String: Tensor] = [:]) -> [String: Tensor] {
    ["sample": sample, "timestep": .scalar(Float(t)), "encoder_hidden_states": hidden].merging(extra) { $1 }
}

/// [2, ...] outputs on [negative, prompt] -> out_u + w (out_c - out_u) [1, ...] (Float32 w).
public func cfgCombine(_ out: Tensor, _ guidance: Double) -> Tensor {
    let (u, c) = (out.rows(0, 1), out.rows(1, 2)), w = Float(guidance)
    return u.zip(c) { $0 + w * ($1 - $0) }
}

/// The type of a param, as Python's isinstance checks it (a float param takes no int, as in Python).
public enum ParamKind: String {
    case int, float, list, dict
    func accepts(_ v: JSON) -> Bool {
        switch self {
        case .int: return v.intValue != nil
        case .float: if case .double = v { return true } else { return false }
        case .list: return v.arrayValue != nil
        case .dict: return v.objectValue != nil
        }
    }
}

/// Base of every step policy. Subclasses override `policyName`, `ROLES`, `PARAMS` and `step`.
public class StepPolicy {
    public class var policyName: String { "" }
    public class var ROLES: [String] { [UNET] }  // the roles it calls in the loop (besides text encoder, decoder)
    public class var PARAMS: [(String, ParamKind, JSON)] { [] }
    public class var dataDependent: Bool { false }
    public var name: String { Self.policyName }
    public var params: [String: JSON] = [:]

    public required init(_ params: [String: JSON]?) throws {
        let given = params ?? [:]
        let allowed = Self.PARAMS.map { $0.0 }
        if let unknown = given.keys.filter({ !allowed.contains($0) }).sorted().first {
            throw PocketdiffError("sampler policy \(pyString(name)) has no param \(pyString(unknown)); allowed: "
                                  + (allowed.isEmpty ? "none" : allowed.joined(separator: ", ")))
        }
        for (key, kind, def) in Self.PARAMS {
            let value = given[key] ?? def
            if !kind.accepts(value) {
                throw PocketdiffError("sampler policy \(pyString(name)): param \(key) must be \(kind.rawValue), got \(value.repr)")
            }
            self.params[key] = value
        }
        try validate()
    }

    /// Check the params beyond their types.
    public func validate() throws {}
    /// The roles this instance calls in the loop (the loop adds the text encoder and the decoder).
    public func roles() -> [String] { Self.ROLES }
    /// The one step count this policy runs, or nil: any.
    public func fixedSteps() -> Int? { nil }
    /// Which texts to encode, in batch order: "negative" and/or "prompt".
    public func texts(_ guidance: Double) -> [String] { ["prompt"] }
    /// Refuse, before any model runs, a generation these sessions cannot serve.
    public func check(_ sessions: [String: Session], _ guidance: Double) throws {}
    public func begin(_ run: Denoise) throws -> PolicyState { PolicyState() }

    /// The scheduler's model output [1,C,h,w] for step i at timestep t, from the scaled latent [1,C,h,w].
    public func step(_ run: Denoise, _ i: Int, _ t: Double, _ sample: Tensor, _ state: PolicyState) throws -> Tensor {
        throw PocketdiffError("sampler policy \(String(describing: type(of: self))) does not implement step()")
    }
}
