// Mirrors pocketdiff/runtime/schedulers.py: DDIM, Euler (discrete), DPM-Solver++(2M) and PNDM (PLMS), configured
// from a diffusers scheduler_config.json with from_config semantics, epsilon and v_prediction, expression by
// expression in Float32 (scalar coefficients first, then elementwise, as numpy evaluates them), so results agree
// with the Python reference to rounding.
//
//     let s = try makeScheduler("ddim", config: config)   // or schedulerFromConfig(config)
//     try s.setTimesteps(n)                               // s.timesteps: what to feed the UNet
//     var x = latents * s.initNoiseSigma
//     for i in s.timesteps.indices { x = s.step(modelOutput: unet(s.scaleModelInput(x, i), ...), i, x) }
//
// Like apple's `Scheduler` protocol (timeSteps, step(output:timeStep:sample:)), but indexed by step and with
// float timesteps (Euler's are fractional); apple's schedulers are not used: the loop needs our registry, our
// config checks and v_prediction in every one.
import Foundation

public protocol Scheduler: AnyObject {
    var config: [String: JSON] { get }
    /// What to feed the UNet, one per step (integers except Euler's).
    var timesteps: [Double] { get }
    var initNoiseSigma: Float { get }
    func setTimesteps(_ n: Int) throws
    func scaleModelInput(_ sample: Tensor, _ stepIndex: Int) -> Tensor
    func step(_ modelOutput: Tensor, _ stepIndex: Int, _ sample: Tensor) -> Tensor
}

public let MAX_TRAIN_TIMESTEPS = 100_000
public let MAX_SIGMA = 1e6

/// Bit-exact torch.linspace(start, end, n, dtype=float32) (fused multiply-add halves from both ends).
func linspaceF32(_ start: Double, _ end: Double, _ n: Int) -> [Float] {
    if n == 1 { return [Float(start)] }
    let st = Float(start), en = Float(end)
    let step = (en - st) / Float(n - 1)
    return (0..<n).map { i in
        i < n / 2 ? Float(Double(st) + Double(step) * Double(i)) : Float(Double(en) - Double(step) * Double(n - 1 - i))
    }
}

/// np.linspace(0, stop, n) in Double (the last value exactly stop).
func linspace(_ stop: Double, _ n: Int) -> [Double] {
    if n == 1 { return [0] }
    let step = stop / Double(n - 1)
    return (0..<n).map { $0 == n - 1 ? stop : Double($0) * step }
}

/// np.arange(start, 0, step) for a negative float step: ceil(-start / step) values start + i * delta.
func arangeDown(_ start: Double, _ step: Double) -> [Double] {
    let count = Int(((0 - start) / step).rounded(.up))
    let delta = (start + step) - start
    return (0..<max(count, 0)).map { start + Double($0) * delta }
}

/// np.interp(x, arange(len(fp)), fp) in Double.
func interp(_ x: Double, _ fp: [Float]) -> Double {
    let last = fp.count - 1
    if x <= 0 { return Double(fp[0]) }
    if x >= Double(last) { return Double(fp[last]) }
    let j = Int(x.rounded(.down))
    let slope = Double(fp[j + 1]) - Double(fp[j])
    return slope * (x - Double(j)) + Double(fp[j])
}

func roundHalfEven(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

/// Float32 cumulative alpha products, bit-exact with diffusers' torch computation.
func alphasCumprod(_ config: [String: JSON]) throws -> [Float] {
    let n = config["num_train_timesteps"]!.intValue!
    let schedule = config["beta_schedule"]!
    let betas: [Float]
    if let trained = config["trained_betas"]?.arrayValue {
        betas = trained.map { Float($0.numberValue!) }
    } else if schedule == .string("linear") {
        betas = linspaceF32(config["beta_start"]!.numberValue!, config["beta_end"]!.numberValue!, n)
    } else if schedule == .string("scaled_linear") {
        betas = linspaceF32(pow(config["beta_start"]!.numberValue!, 0.5), pow(config["beta_end"]!.numberValue!, 0.5), n).map { $0 * $0 }
    } else {
        throw choiceError("beta_schedule", schedule, ["linear", "scaled_linear"])
    }
    var acc = 1.0  // torch.cumprod accumulates float32 in double on CPU
    return betas.map { b in acc *= Double(Float(1) - b); return Float(acc) }
}

func checkChoice(_ value: JSON, _ allowed: [JSON], _ what: String) throws {
    if !allowed.contains(where: { $0.pyEquals(value) }) { throw choiceError(what, value, allowed.map { $0.stringValue ?? $0.repr }) }
}

/// Each value of the kind its default is; the schedule's numbers in range; else one error naming the key.
private func checkTypes(_ cfg: [String: JSON], _ defaults: [(String, JSON)]) throws {
    for (key, def) in defaults {
        let v = cfg[key]!
        var kind = "", ok = true
        switch def {
        case .bool: kind = "bool"; ok = v.boolValue != nil
        case .int: kind = "int"; ok = v.intValue != nil
        case .double(let d): kind = "float"; ok = v.numberValue.map { $0.isFinite || $0 == d } ?? false
        case .string: kind = "str"; ok = v.stringValue != nil
        default: break
        }
        if !ok { throw PocketdiffError("scheduler option \(key) must be \(kind), got \(v.repr)") }
    }
    let n = cfg["num_train_timesteps"]!.intValue!
    if !(2...MAX_TRAIN_TIMESTEPS).contains(n) {
        throw PocketdiffError("scheduler option num_train_timesteps must be in [2, \(MAX_TRAIN_TIMESTEPS)], got \(n)")
    }
    let (b0, b1) = (cfg["beta_start"]!.numberValue!, cfg["beta_end"]!.numberValue!)
    if !(0 < b0 && b0 < 1) || !(0 < b1 && b1 < 1) {
        throw PocketdiffError("scheduler options beta_start and beta_end must be in (0, 1), got \(cfg["beta_start"]!.repr), "
                              + "\(cfg["beta_end"]!.repr)")
    }
    let offset = cfg["steps_offset"]!.intValue!
    if offset < 0 || offset >= n { throw PocketdiffError("scheduler option steps_offset must be in [0, \(n)), got \(offset)") }
    let betas = cfg["trained_betas"]!
    if !betas.isNull {
        let ok = betas.arrayValue.map { $0.count == n && $0.allSatisfy { b in b.numberValue.map { 0 < $0 && $0 < 1 } ?? false } } ?? false
        if !ok { throw PocketdiffError("scheduler option trained_betas must be null or \(n) numbers in (0, 1)") }
    }
}

let BASE_DEFAULTS: [(String, JSON)] = [
    ("num_train_timesteps", .int(1000)), ("beta_start", .double(0.0001)), ("beta_end", .double(0.02)),
    ("beta_schedule", .string("linear")), ("trained_betas", .null), ("prediction_type", .string("epsilon")),
    ("steps_offset", .int(0)),
]

/// Base: shared config handling (schedulers.Scheduler).
public class SchedulerBase {
    public let config: [String: JSON]
    let alphasCumprod: [Float]
    public internal(set) var timesteps: [Double] = []
    var numInferenceSteps = 0
    var T: Int { config["num_train_timesteps"]!.intValue! }
    var vPrediction: Bool { config["prediction_type"] == .string("v_prediction") }

    init(_ config: [String: JSON], name: String, defaults: [(String, JSON)], unsupported: [(String, JSON)],
         spacings: [String] = ["leading", "trailing", "linspace"]) throws {
        var cfg: [String: JSON] = [:]
        for (k, v) in defaults { cfg[k] = config[k] ?? v }
        try checkTypes(cfg, defaults)
        for (key, neutral) in unsupported {
            if let v = config[key], !v.isNull, !v.pyEquals(neutral) {
                throw PocketdiffError("scheduler option \(key)=\(v.repr) is not supported by the pocketdiff runtime "
                                      + "(\(name)); allowed: \(neutral.repr)")
            }
        }
        try checkChoice(cfg["prediction_type"]!, [.string("epsilon"), .string("v_prediction")], "prediction_type")
        try checkChoice(cfg["timestep_spacing"]!, spacings.map(JSON.string), "timestep_spacing")
        self.config = cfg
        alphasCumprod = try PocketdiffCore.alphasCumprod(cfg)
        let a = Double(alphasCumprod.last!)  // sigma = sqrt((1 - a) / a): past MAX_SIGMA float32 steps overflow
        if !(a > 1 / (1 + MAX_SIGMA * MAX_SIGMA)) {
            throw PocketdiffError("scheduler config leaves no signal: alphas_cumprod falls to \(String(format: "%.3g", a)) "
                                  + "by timestep \(cfg["num_train_timesteps"]!.intValue! - 1) (sigma over 1e+06); shorten "
                                  + "num_train_timesteps or lower beta_end")
        }
    }

    public var initNoiseSigma: Float { 1 }
    public func scaleModelInput(_ sample: Tensor, _ stepIndex: Int) -> Tensor { sample }

    func checkSteps(_ n: Int) throws {
        if !(1...T).contains(n) { throw PocketdiffError("steps must be an integer in [1, \(T)], got \(n)") }
    }

    /// The leading/trailing/linspace grids shared by DDIM and Euler; `float32` for Euler's float timesteps.
    func spaced(_ n: Int, float32: Bool = false) -> [Double] {
        let spacing = config["timestep_spacing"]!.stringValue!
        let offset = config["steps_offset"]!.intValue!
        if spacing == "linspace" {
            let v = linspace(Double(T - 1), n).reversed()
            return float32 ? v.map { Double(Float($0)) } : v.map(roundHalfEven)
        }
        if spacing == "leading" {
            let v = (0..<n).reversed().map { Double($0 * (T / n)) }
            return float32 ? v.map { Double(Float($0) + Float(offset)) } : v.map { $0 + Double(offset) }
        }
        let v = arangeDown(Double(T), -Double(T) / Double(n)).map(roundHalfEven)
        return float32 ? v.map { Double(Float($0) - 1) } : v.map { $0 - 1 }
    }
}

/// Mirrors diffusers.DDIMScheduler (eta = 0).
public final class DDIM: SchedulerBase, Scheduler {
    var finalAlphaCumprod: Float = 1  // (set after super.init, which checks the config)

    public init(_ config: [String: JSON]) throws {
        try super.init(config, name: "DDIM", defaults: BASE_DEFAULTS + [
            ("clip_sample", .bool(true)), ("set_alpha_to_one", .bool(true)), ("clip_sample_range", .double(1.0)),
            ("timestep_spacing", .string("leading"))],
                       unsupported: [("thresholding", .bool(false)), ("rescale_betas_zero_snr", .bool(false))])
        finalAlphaCumprod = self.config["set_alpha_to_one"]!.boolValue! ? 1 : alphasCumprod[0]
    }

    public func setTimesteps(_ n: Int) throws {
        try checkSteps(n)
        numInferenceSteps = n
        timesteps = spaced(n)
    }

    public func step(_ modelOutput: Tensor, _ stepIndex: Int, _ sample: Tensor) -> Tensor {
        let t = Int(timesteps[stepIndex])
        let prevT = t - T / numInferenceSteps
        let aT = alphasCumprod[t]
        let aPrev = prevT >= 0 ? alphasCumprod[prevT] : finalAlphaCumprod
        let bT = 1 - aT
        let (sa, sb) = (aT.squareRoot(), bT.squareRoot())
        var x0: Tensor, eps: Tensor
        if !vPrediction {
            x0 = sample.zip(modelOutput) { ($0 - sb * $1) / sa }
            eps = modelOutput
        } else {
            x0 = sample.zip(modelOutput) { sa * $0 - sb * $1 }
            eps = modelOutput.zip(sample) { sa * $0 + sb * $1 }
        }
        if config["clip_sample"]!.boolValue! {
            let r = Float(config["clip_sample_range"]!.numberValue!)
            x0 = x0.map { min(max($0, -r), r) }
        }
        let (cDir, cX0) = ((1 - aPrev).squareRoot(), aPrev.squareRoot())
        return x0.zip(eps) { cX0 * $0 + cDir * $1 }
    }
}

/// Mirrors diffusers.EulerDiscreteScheduler (s_churn = 0, linear sigma interpolation).
public final class EulerDiscrete: SchedulerBase, Scheduler {
    var trainSigmas: [Float] = []
    var sigmas: [Float] = []

    public init(_ config: [String: JSON]) throws {
        try super.init(config, name: "EulerDiscrete", defaults: BASE_DEFAULTS + [
            ("timestep_spacing", .string("linspace")), ("final_sigmas_type", .string("zero")),
            ("interpolation_type", .string("linear"))],
                       unsupported: [("use_karras_sigmas", .bool(false)), ("use_exponential_sigmas", .bool(false)),
                                     ("use_beta_sigmas", .bool(false)), ("rescale_betas_zero_snr", .bool(false)),
                                     ("timestep_type", .string("discrete")), ("sigma_min", .null), ("sigma_max", .null)])
        let cfg = self.config
        try checkChoice(cfg["interpolation_type"]!, [.string("linear")], "interpolation_type")
        try checkChoice(cfg["final_sigmas_type"]!, [.string("zero"), .string("sigma_min")], "final_sigmas_type")
        let ac = alphasCumprod
        trainSigmas = ac.map { ((1 - $0) / $0).squareRoot() }
        sigmas = Array(trainSigmas.reversed()) + [0]
    }

    public func setTimesteps(_ n: Int) throws {
        try checkSteps(n)
        numInferenceSteps = n
        let ts = spaced(n, float32: true)
        let last: Float = config["final_sigmas_type"] == .string("sigma_min")
            ? ((1 - alphasCumprod[0]) / alphasCumprod[0]).squareRoot() : 0
        sigmas = ts.map { Float(interp($0, trainSigmas)) } + [last]
        timesteps = ts
    }

    public override var initNoiseSigma: Float {
        let maxSigma = sigmas.max()!
        let spacing = config["timestep_spacing"]!.stringValue!
        return spacing == "linspace" || spacing == "trailing" ? maxSigma : (maxSigma * maxSigma + 1).squareRoot()
    }

    public override func scaleModelInput(_ sample: Tensor, _ stepIndex: Int) -> Tensor {
        let sigma = sigmas[stepIndex]
        let d = (sigma * sigma + 1).squareRoot()
        return sample.map { $0 / d }
    }

    public func step(_ modelOutput: Tensor, _ stepIndex: Int, _ sample: Tensor) -> Tensor {
        let sigma = sigmas[stepIndex]
        let sigmaHat = sigma * 1.0
        let x0: Tensor
        if !vPrediction {
            x0 = sample.zip(modelOutput) { $0 - sigmaHat * $1 }
        } else {
            let (c, d) = (-sigma / (sigma * sigma + 1).squareRoot(), sigma * sigma + 1)
            x0 = modelOutput.zip(sample) { $0 * c + $1 / d }
        }
        let dt = sigmas[stepIndex + 1] - sigmaHat
        return sample.zip(x0) { s, x in s + ((s - x) / sigmaHat) * dt }
    }
}

/// One sampler name: the runtime class, the diffusers class it mirrors, and forced config values.
public struct SchedulerEntry {
    public let make: ([String: JSON]) throws -> Scheduler
    public let diffusersClass: String
    public let overrides: [String: JSON]

    /// `config` (any diffusers scheduler's) as this scheduler's: overrides applied, `_class_name` set.
    public func configFor(_ config: [String: JSON]) -> [String: JSON] {
        config.merging(overrides) { $1 }.merging(["_class_name": .string(diffusersClass)]) { $1 }
    }

    public func create(_ config: [String: JSON]) throws -> Scheduler { try make(configFor(config)) }
}

/// The one registry of sampler names, in order.
public let SCHEDULERS: [(name: String, entry: SchedulerEntry)] = [
    ("ddim", SchedulerEntry(make: { try DDIM($0) }, diffusersClass: "DDIMScheduler", overrides: [:])),
    ("euler", SchedulerEntry(make: { try EulerDiscrete($0) }, diffusersClass: "EulerDiscreteScheduler", overrides: [:])),
    ("dpm++2m", SchedulerEntry(make: { try DPMSolverPP2M($0) }, diffusersClass: "DPMSolverMultistepScheduler",
                               overrides: ["algorithm_type": .string("dpmsolver++"), "solver_order": .int(2)])),
    ("pndm", SchedulerEntry(make: { try PNDM($0) }, diffusersClass: "PNDMScheduler", overrides: ["skip_prk_steps": .bool(true)])),
]

/// Registry name of a saved scheduler config (its `_class_name`); error if we do not mirror it.
public func schedulerNameFor(_ config: JSON) throws -> String {
    guard let object = config.objectValue else {
        throw PocketdiffError("scheduler config must be an object, got \(config.typeName)")
    }
    let cls = object["_class_name"] ?? .null
    if let hit = SCHEDULERS.first(where: { cls == .string($0.entry.diffusersClass) }) { return hit.name }
    throw choiceError("scheduler class", cls, SCHEDULERS.map { $0.entry.diffusersClass })
}

public func getSchedulerEntry(_ name: String) throws -> SchedulerEntry {
    guard let hit = SCHEDULERS.first(where: { $0.name == name }) else {
        throw choiceError("scheduler", name, SCHEDULERS.map { $0.name })
    }
    return hit.entry
}

/// Runtime scheduler for `name` (default: the config's own class) built from a diffusers config.
public func schedulerFromConfig(_ config: JSON, name: String? = nil) throws -> Scheduler {
    guard let object = config.objectValue else {
        throw PocketdiffError("scheduler config must be an object, got \(config.typeName)")
    }
    return try getSchedulerEntry(name ?? schedulerNameFor(config)).create(object)
}
