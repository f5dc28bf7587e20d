// Mirrors pocketdiff/runtime/sampler.py: the one loop. tokenize -> text encoder -> initial latents -> N steps of a
// step policy -> VAE decode -> uint8.
//
// 1. ids = tokenizer(text) for each text the policy names (the prompt; for two-pass CFG first the negative prompt).
// 2. Text encoder, one batch-1 call per text -> last_hidden_state, stacked in order. With steps "auto[...]" the
//    step_budget role then predicts the quality curve and the rule picks the steps (Policies/Budget.swift).
// 3. x = initialLatents(seed, [1, C, h, w]) * scheduler.initNoiseSigma (RNG.swift).
// 4. For each step i at timestep t: out = policy.step(i, t, scheduler.scaleModelInput(x, i));
//    x = scheduler.step(out, i, x).
// 5. img = vae_decoder(x / scaling_factor); uint8 = round(clip(img / 2 + 0.5, 0, 1) * 255), HWC.
//
// Every session call is timed and recorded in the trace (step, role, batch, ms). The progress handler
// (done, total) -> Bool may return false to cancel: the loop stops at once and throws Cancelled.
//
// Why not apple's StableDiffusionPipeline, although our coreml/ folder has its resource names (TextEncoder,
// Unet, VAEDecoder .mlpackage, vocab.json, merges.txt)? Its loop feeds the UNet a batch-2 CFG call with an Int
// timestep and no timestep_cond (our guidance-embedded students run batch 1 with the w embedding), its schedulers
// do not take our configs (v_prediction, trailing spacing), it has no step policies (DDSM widths, Clockwork
// caches, AdaDiff exits, BudgetFusion), and the conformance vectors pin our tokenizer, RNG and loop. The same
// .mlpackage files still load in apple's pipeline for an epsilon, CFG bundle.
import CoreGraphics
import CoreML
import CryptoKit
import Foundation

public let TEXT_ENCODER = "text_encoder", VAE_DECODER = "vae_decoder"

/// The progress handler returned false; the generation was abandoned and nothing was returned.
public struct Cancelled: Error, LocalizedError {
    public let message: String
    public var errorDescription: String? { message }
}

/// The user-facing limits shared by every generation path.
public func checkGenerationArgs(steps: Int, guidance: Double) throws {
    if steps < 1 { throw PocketdiffError("steps must be an integer >= 1, got \(steps)") }
    if !guidance.isFinite || guidance < 0 { throw PocketdiffError("guidance must be a finite number >= 0, got \(pyFloat(guidance))") }
}

/// VAE output [1, 3, H, W] in [-1, 1] -> [H, W, 3] uint8, exactly as diffusers post-processes.
public func toUInt8(_ decoded: Tensor) -> (pixels: [UInt8], height: Int, width: Int) {
    let (h, w) = (decoded.shape[2], decoded.shape[3])
    var out = [UInt8](repeating: 0, count: h * w * 3)
    for c in 0..<3 { for y in 0..<h { for x in 0..<w {
        let v = min(max(decoded.data[(c * h + y) * w + x] / 2 + 0.5, 0), 1)
        out[(y * w + x) * 3 + c] = UInt8((v * 255).rounded(.toNearestOrEven))
    } } }
    return (out, h, w)
}

public struct GenerationResult {
    public let pixels: [UInt8]  // [H, W, 3] uint8
    public let height: Int, width: Int
    public let timings: [(String, Double)]  // seconds per stage, in order
    public let trace: [Call]  // every session call, in order
    public let steps: Int
    public let tokens: TokenizerOutput
    public let budget: BudgetRecord?

    /// role -> number of calls.
    public func callCounts() -> [String: Int] { trace.reduce(into: [:]) { $0[$1.role, default: 0] += 1 } }

    /// The image as a CGImage (RGB, padded to RGBX for Core Graphics).
    public var cgImage: CGImage? {
        var rgbx = [UInt8](repeating: 255, count: width * height * 4)
        for p in 0..<(width * height) { for c in 0..<3 { rgbx[p * 4 + c] = pixels[p * 3 + c] } }
        guard let provider = CGDataProvider(data: Data(rgbx) as CFData) else { return nil }
        return CGImage(width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: width * 4,
                       space: CGColorSpaceCreateDeviceRGB(),
                       bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}

/// A manifest's sampler entry as a policy; without one, the policy its UNet implies.
public func policyFor(_ sampler: JSON?, unetInputNames: [String]) throws -> StepPolicy {
    guard let sampler, !sampler.isNull else { return try makePolicy(defaultPolicyName(unetInputNames)) }
    return try makePolicy(sampler["policy"]!.stringValue!, sampler["params"])
}

private func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// Text-to-image over sessions (one per role) and a step policy.
public final class RuntimePipeline {
    public let tokenizer: CLIPBPETokenizer
    public let sessions: [String: Session]
    public let schedulerConfig: JSON
    public let latentShape: [Int]
    public let scalingFactor: Float
    public let policy: StepPolicy
    public let budget: BudgetSpec?

    public init(tokenizer: CLIPBPETokenizer, sessions: [String: Session], schedulerConfig: JSON, latentShape: [Int],
                scalingFactor: Double, policy: StepPolicy, budget: BudgetSpec? = nil) throws {
        let missing = ([TEXT_ENCODER] + policy.roles() + [VAE_DECODER]).filter { sessions[$0] == nil }
        if !missing.isEmpty {
            throw PocketdiffError("sampler policy \(pyString(policy.name)) needs roles \(missing.joined(separator: ", ")); "
                                  + "the sessions given are: \(sessions.keys.sorted().joined(separator: ", "))")
        }
        self.tokenizer = tokenizer
        self.sessions = sessions
        self.schedulerConfig = schedulerConfig
        self.latentShape = latentShape
        self.scalingFactor = Float(scalingFactor)
        self.policy = policy
        self.budget = sessions[STEP_BUDGET] != nil ? budget : nil
    }

    /// Load a bundle's coreml components; the manifest (its signature, with a trusted key) and every file's
    /// checksum are verified before any model is compiled. `policy` replaces the manifest's.
    public static func fromBundle(_ url: URL, trustedKey: Curve25519.Signing.PublicKey? = nil, policy: StepPolicy? = nil,
                                  configuration: MLModelConfiguration = MLModelConfiguration()) async throws
        -> (RuntimePipeline, PocketdiffBundle) {
        let backend = "coreml"
        let bundle = try PocketdiffBundle.load(url, verify: true, trustedKey: trustedKey)
        let m = bundle.manifest
        _ = try schedulerFromConfig(m["scheduler"]!["config"]!)  // a bad scheduler config fails before any model loads
        let unet = try bundle.component(role: UNET, target: backend)
        let unetNames = CoreMLSession.logicalSpecs(role: UNET, inputs: unet.inputs, outputs: unet.outputs).inputs.map(\.name)
        let policy = try policy ?? policyFor(m["sampler"], unetInputNames: unetNames)
        let budget = try m["step_budget"].map { try BudgetSpec(json: $0) }
        let extra = budget != nil && bundle.components.contains { $0.role == STEP_BUDGET && $0.target == backend }
            ? [STEP_BUDGET] : []
        let factor = m["model"]!["latent_scale_factor"]!.numberValue!
        var sessions: [String: Session] = [:]
        for role in [TEXT_ENCODER] + policy.roles() + extra + [VAE_DECODER] {
            let c = try bundle.component(role: role, target: backend)
            sessions[role] = try await CoreMLSession.load(role: role, url: bundle.file(c.path), inputs: c.inputs,
                                                          outputs: c.outputs, scalingFactor: Float(factor),
                                                          configuration: configuration)
        }
        let pipeline = try RuntimePipeline(tokenizer: bundle.tokenizer(), sessions: sessions,
                                           schedulerConfig: m["scheduler"]!["config"]!,
                                           latentShape: m["model"]!["latent_shape"]!.arrayValue!.map { $0.intValue! },
                                           scalingFactor: factor, policy: policy, budget: budget)
        return (pipeline, bundle)
    }

    /// Refuse a step request this pipeline cannot serve before any model runs.
    public func checkSteps(_ steps: StepsRequest) throws {
        switch steps {
        case .count(let n): try checkGenerationArgs(steps: n, guidance: 0)
        case .auto(let request):
            guard isAutoRequest(request) else {
                throw PocketdiffError("steps must be an integer >= 1, got \(pyString(request))")
            }
            guard let budget else {
                throw PocketdiffError("steps \(pyString(request)) needs a bundle with a step-budget predictor (role "
                                      + "\(STEP_BUDGET), from pocketdiff budget-train); this one has none: give --steps N")
            }
            if let fixed = policy.fixedSteps() {
                throw PocketdiffError("sampler policy \(pyString(policy.name)) runs \(fixed) steps only; steps "
                                      + "\(pyString(request)) cannot change them")
            }
            _ = try budget.targets(request)
        }
    }

    /// One image. `onStep(i, x)` sees the latent after each step; `progress(done, total)` returning false cancels.
    public func generate(_ prompt: String, steps: StepsRequest, guidance: Double, seed: Int, negativePrompt: String = "",
                         scheduler: String? = nil, truncate: Bool = false,
                         progress: ((Int, Int) -> Bool)? = nil,
                         onStep: ((Int, Tensor) -> Void)? = nil) throws -> GenerationResult {
        try checkSteps(steps)
        try checkGenerationArgs(steps: 1, guidance: guidance)
        let sched = try schedulerFromConfig(schedulerConfig, name: scheduler)
        try policy.check(sessions, guidance)
        var trace: [Call] = []
        var at: Int? = nil  // the step the next call belongs to

        let call: (String, [String: Tensor]) throws -> [String: Tensor] = { role, feeds in
            let session = self.sessions[role]!
            let batch = feeds[session.inputs[0].name]?.batch ?? 1
            let t = now()
            let out = try session.run(feeds)
            trace.append(Call(step: at, role: role, batch: batch, ms: (now() - t) * 1000))
            return out
        }

        let t0 = now()
        let tokens = try tokenizer(prompt, truncate: truncate)
        let texts = policy.texts(guidance)
        let ids: [[Int]] = try texts.map { text in
            if text == "prompt" { return tokens.inputIds }
            return try tokenizer(negativePrompt, truncate: true).inputIds
        }
        let t1 = now()
        let hidden = try Tensor.concat(ids.map { row in
            try call(TEXT_ENCODER, ["input_ids": Tensor(shape: [1, row.count], data: row.map(Float.init))])["last_hidden_state"]!
        })
        let t2 = now()
        var n: Int
        var budgetRecord: BudgetRecord? = nil
        switch steps {
        case .count(let c): n = c
        case .auto(let request):  // the prompt's own states, whatever else the policy encoded
            let row = texts.firstIndex(of: "prompt")!
            let predicted = try predictSteps(call, budget!, hidden.rows(row, row + 1), request)
            n = predicted.0
            budgetRecord = predicted.1
        }
        let tBudget = now()
        try sched.setTimesteps(n)
        let sigma = sched.initNoiseSigma
        var x = try initialLatents(seed: seed, shape: [1] + latentShape).map { $0 * sigma }
        let run = Denoise(hidden: hidden, guidance: guidance, timesteps: sched.timesteps, sessions: sessions, call: call)
        let state = try policy.begin(run)
        let total = sched.timesteps.count
        for (i, t) in sched.timesteps.enumerated() {
            at = i
            let out = try policy.step(run, i, t, sched.scaleModelInput(x, i), state)
            x = sched.step(out, i, x)
            onStep?(i, x)
            if let progress, !progress(i + 1, total) {
                throw Cancelled(message: "generation cancelled after step \(i + 1) of \(total)")
            }
        }
        at = nil
        let t3 = now()
        let factor = scalingFactor
        let decoded = try call(VAE_DECODER, ["latent_sample": x.map { $0 / factor }])["sample"]!
        let image = toUInt8(decoded)
        let t4 = now()
        var timings = [("tokenize_s", t1 - t0), ("text_encoder_s", t2 - t1)]
        if budgetRecord != nil { timings.append(("step_budget_s", tBudget - t2)) }
        timings += [("unet_s", t3 - tBudget), ("decoder_s", t4 - t3), ("total_s", t4 - t0)]
        return GenerationResult(pixels: image.pixels, height: image.height, width: image.width, timings: timings,
                                trace: trace, steps: total, tokens: tokens, budget: budgetRecord)
    }
}
