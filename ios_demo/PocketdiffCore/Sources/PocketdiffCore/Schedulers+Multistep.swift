// Mirrors pocketdiff/runtime/schedulers.py, continued (split for length): the two multistep schedulers,
// DPM-Solver++(2M) and PNDM (PLMS). Shared helpers, the base class and the registry are in Schedulers.swift.
import Foundation

/// Mirrors diffusers.DPMSolverMultistepScheduler with algorithm_type='dpmsolver++', order <= 2.
public final class DPMSolverPP2M: SchedulerBase, Scheduler {
    var trainSigmas: [Float] = []
    var lambdaT: [Float] = []
    var sigmas: [Float] = []
    var outputs: [Tensor?] = []
    var lowerOrderNums = 0

    public init(_ config: [String: JSON]) throws {
        try super.init(config, name: "DPMSolverPP2M", defaults: BASE_DEFAULTS + [
            ("solver_order", .int(2)), ("algorithm_type", .string("dpmsolver++")), ("solver_type", .string("midpoint")),
            ("lower_order_final", .bool(true)), ("euler_at_final", .bool(false)), ("final_sigmas_type", .string("zero")),
            ("lambda_min_clipped", .double(-.infinity)), ("timestep_spacing", .string("linspace"))],
                       unsupported: [("use_karras_sigmas", .bool(false)), ("use_exponential_sigmas", .bool(false)),
                                     ("use_beta_sigmas", .bool(false)), ("use_lu_lambdas", .bool(false)),
                                     ("use_flow_sigmas", .bool(false)), ("thresholding", .bool(false)),
                                     ("rescale_betas_zero_snr", .bool(false)), ("variance_type", .null),
                                     ("use_dynamic_shifting", .bool(false))])
        let cfg = self.config
        try checkChoice(cfg["algorithm_type"]!, [.string("dpmsolver++")], "algorithm_type")
        try checkChoice(cfg["solver_order"]!, [.int(1), .int(2)], "solver_order")
        try checkChoice(cfg["solver_type"]!, [.string("midpoint"), .string("heun")], "solver_type")
        try checkChoice(cfg["final_sigmas_type"]!, [.string("zero"), .string("sigma_min")], "final_sigmas_type")
        let ac = alphasCumprod
        trainSigmas = ac.map { ((1 - $0) / $0).squareRoot() }
        lambdaT = ac.map { log($0.squareRoot()) - log((1 - $0).squareRoot()) }
        sigmas = trainSigmas
    }

    var order: Int { config["solver_order"]!.intValue! }

    public func setTimesteps(_ n: Int) throws {
        try checkSteps(n)
        let clipped = config["lambda_min_clipped"]!.numberValue!
        let clippedIdx = Array(lambdaT.reversed()).firstIndex { Double($0) >= clipped } ?? lambdaT.count  // searchsorted
        let last = T - clippedIdx
        let offset = Double(config["steps_offset"]!.intValue!)
        let ts: [Double]
        switch config["timestep_spacing"]!.stringValue! {
        case "linspace": ts = Array(linspace(Double(last - 1), n + 1).map(roundHalfEven).reversed().dropLast())
        case "leading":
            let ratio = last / (n + 1)
            ts = (0...n).reversed().dropLast().map { Double($0 * ratio) + offset }
        default: ts = arangeDown(Double(last), -Double(T) / Double(n)).map { roundHalfEven($0) - 1 }
        }
        let finalSigma: Float = config["final_sigmas_type"] == .string("sigma_min")
            ? ((1 - alphasCumprod[0]) / alphasCumprod[0]).squareRoot() : 0
        sigmas = ts.map { Float(interp($0, trainSigmas)) } + [finalSigma]
        timesteps = ts
        numInferenceSteps = ts.count
        outputs = Array(repeating: nil, count: order)
        lowerOrderNums = 0
    }

    static func alphaSigma(_ sigma: Float) -> (Float, Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    public func step(_ modelOutput: Tensor, _ stepIndex: Int, _ sample: Tensor) -> Tensor {
        let n = timesteps.count
        let lowerFinal = stepIndex == n - 1 && (config["euler_at_final"]!.boolValue! || (config["lower_order_final"]!.boolValue! && n < 15)
                                                || config["final_sigmas_type"] == .string("zero"))
        // (diffusers' `lower_order_second` flag only matters for third-order solvers, which we refuse.)
        let (alphaS0, sigmaS0) = Self.alphaSigma(sigmas[stepIndex])
        let x0 = vPrediction ? sample.zip(modelOutput) { alphaS0 * $0 - sigmaS0 * $1 }
            : sample.zip(modelOutput) { ($0 - sigmaS0 * $1) / alphaS0 }
        outputs = Array(outputs.dropFirst()) + [x0]
        let (alphaT, sigmaT) = Self.alphaSigma(sigmas[stepIndex + 1])
        let lambdaT = log(alphaT) - log(sigmaT)  // sigma_t = 0 at the last step: +inf
        let lambdaS0 = log(alphaS0) - log(sigmaS0)
        let h = lambdaT - lambdaS0
        let c1 = sigmaT / sigmaS0
        let c2 = alphaT * (exp(-h) - 1)
        var out: Tensor
        if order == 1 || lowerOrderNums < 1 || lowerFinal {
            out = sample.zip(x0) { c1 * $0 - c2 * $1 }
        } else {
            let (alphaS1, sigmaS1) = Self.alphaSigma(sigmas[stepIndex - 1])
            let lambdaS1 = log(alphaS1) - log(sigmaS1)
            let m0 = outputs[outputs.count - 1]!, m1 = outputs[outputs.count - 2]!
            let r0 = (lambdaS0 - lambdaS1) / h
            let d1 = m0.zip(m1) { (1 / r0) * ($0 - $1) }
            let c3 = config["solver_type"] == .string("midpoint") ? -(Float(0.5) * c2) : alphaT * ((exp(-h) - 1) / h + 1)
            out = Tensor(shape: sample.shape, data: (0..<sample.count).map { k in
                (c1 * sample.data[k] - c2 * m0.data[k]) + c3 * d1.data[k]
            })
        }
        if lowerOrderNums < order { lowerOrderNums += 1 }
        return out
    }
}

/// Mirrors diffusers.PNDMScheduler with skip_prk_steps=True (PLMS), SD's default sampler.
public final class PNDM: SchedulerBase, Scheduler {
    var finalAlphaCumprod: Float = 1
    var ets: [Tensor] = []
    var counter = 0
    var curSample: Tensor? = nil

    public init(_ config: [String: JSON]) throws {
        try super.init(config, name: "PNDM", defaults: BASE_DEFAULTS + [
            ("skip_prk_steps", .bool(false)), ("set_alpha_to_one", .bool(false)), ("timestep_spacing", .string("leading"))],
                       unsupported: [])
        if !self.config["skip_prk_steps"]!.boolValue! {
            throw PocketdiffError("scheduler option skip_prk_steps=False (Runge-Kutta warm-up) is not supported by the "
                                  + "pocketdiff runtime; allowed: True (PLMS, as Stable Diffusion ships)")
        }
        finalAlphaCumprod = self.config["set_alpha_to_one"]!.boolValue! ? 1 : alphasCumprod[0]
    }

    public func setTimesteps(_ n: Int) throws {
        try checkSteps(n)
        numInferenceSteps = n
        let base: [Double]
        switch config["timestep_spacing"]!.stringValue! {
        case "linspace": base = linspace(Double(T - 1), n).map(roundHalfEven)
        case "leading": base = (0..<n).map { Double($0 * (T / n) + config["steps_offset"]!.intValue!) }
        default: base = arangeDown(Double(T), -Double(T) / Double(n)).map(roundHalfEven).reversed().map { $0 - 1 }
        }
        // PLMS runs one extra step: the second-to-last timestep appears twice (base[:-1], base[-2:-1], base[-1:]).
        let secondLast = base.count >= 2 ? [base[base.count - 2]] : []
        timesteps = Array((Array(base.dropLast()) + secondLast + [base.last!]).reversed())
        (ets, counter, curSample) = ([], 0, nil)
    }

    func prevSample(_ sample: Tensor, _ t: Int, _ prevT: Int, _ eps: Tensor) -> Tensor {
        let aT = alphasCumprod[t]
        let aPrev = prevT >= 0 ? alphasCumprod[prevT] : finalAlphaCumprod
        let (bT, bPrev) = (1 - aT, 1 - aPrev)
        var eps = eps
        if vPrediction {
            let (sa, sb) = (aT.squareRoot(), bT.squareRoot())
            eps = eps.zip(sample) { sa * $0 + sb * $1 }
        }
        let coeff = (aPrev / aT).squareRoot()
        let denom = aT * bPrev.squareRoot() + (aT * bT * aPrev).squareRoot()
        let diff = aPrev - aT
        return sample.zip(eps) { coeff * $0 - (diff * $1) / denom }
    }

    public func step(_ modelOutput: Tensor, _ stepIndex: Int, _ sample: Tensor) -> Tensor {
        var t = Int(timesteps[stepIndex])
        let stride = T / numInferenceSteps
        var prevT = t - stride
        if counter != 1 {
            ets = Array(ets.suffix(3)) + [modelOutput]
        } else {
            (prevT, t) = (t, t + stride)
        }
        var sample = sample
        let eps: Tensor
        let e = Array(ets.reversed())  // e[0] = ets[-1], e[1] = ets[-2], ...
        if ets.count == 1 && counter == 0 {
            eps = modelOutput
            curSample = sample
        } else if ets.count == 1 && counter == 1 {
            eps = modelOutput.zip(e[0]) { ($0 + $1) / 2 }
            sample = curSample!
            curSample = nil
        } else if ets.count == 2 {
            eps = e[0].zip(e[1]) { (3 * $0 - $1) / 2 }
        } else if ets.count == 3 {
            eps = Tensor(shape: sample.shape, data: (0..<sample.count).map { k in
                (23 * e[0].data[k] - 16 * e[1].data[k] + 5 * e[2].data[k]) / 12 })
        } else {
            eps = Tensor(shape: sample.shape, data: (0..<sample.count).map { k in
                Float(1.0 / 24.0) * (55 * e[0].data[k] - 59 * e[1].data[k] + 37 * e[2].data[k] - 9 * e[3].data[k]) })
        }
        counter += 1
        return prevSample(sample, t, prevT, eps)
    }
}
