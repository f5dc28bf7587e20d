// Mirrors pocketdiff/runtime/conformance.py: the port checked against a bundle's test_vectors.json (docs/ports.md).
// The replay check runs this port's own loop and policy (RuntimePipeline) on ReplaySessions, which answer each call
// with the recorded outputs and check the feeds they are given: the loop under test is the loop the app runs.
// `runChecks` returns check name -> (status, detail), with the names of docs/ports.md; the XCTests and the
// `pocketdiff-conformance` command both call it.
import CryptoKit
import Foundation

public let PASSED = "passed", FAILED = "failed", NOT_RUN = "not run"
let ATOL = 1e-3, RTOL = 1e-3  // replay feeds: recorded first values and mean |x|
let SCHEDULER_ATOL = 1e-4

/// A port's number differs from the vectors' (the check fails with this message).
public struct Mismatch: Error, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var errorDescription: String? { message }
}

/// A record has no whole tensor (left out above 2^20 elements): the check is "not run".
struct NoData: Error {}

/// A tensor record's whole tensor (base64 little-endian float32, row-major).
public func decodeRecord(_ record: JSON) throws -> Tensor {
    guard let b64 = record["data"]?.stringValue, let bytes = Data(base64Encoded: b64) else { throw NoData() }
    let data: [Float] = bytes.withUnsafeBytes { raw in
        (0..<(bytes.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
    }
    return Tensor(shape: record["shape"]!.arrayValue!.map { $0.intValue! }, data: data)
}

private func g(_ x: Double) -> String { String(format: "%.3g", x) }

/// `x` against a record's shape (when it has one), first values and mean |x|.
public func closeTo(_ x: Tensor, _ record: JSON, _ what: String, atol: Double = ATOL, rtol: Double = RTOL) throws {
    if let shape = record["shape"]?.arrayValue?.compactMap(\.intValue), shape != x.shape {
        throw Mismatch("\(what): shape \(x.shape), vectors \(shape)")
    }
    let first = record["first_values"]!.arrayValue!.map { $0.numberValue ?? .nan }
    var worst = 0.0
    var ok = true
    for (got, want) in zip(x.data.prefix(first.count).map(Double.init), first) {
        worst = max(worst, abs(got - want))
        if !(abs(got - want) <= atol + rtol * abs(want)) { ok = false }
    }
    if !ok { throw Mismatch("\(what): first values differ by up to \(g(worst))") }
    let want = record["mean_abs"]!.numberValue!
    if abs(x.meanAbs - want) > atol + rtol * abs(want) {
        throw Mismatch("\(what): mean |x| \(String(format: "%.6g", x.meanAbs)), vectors \(String(format: "%.6g", want))")
    }
}

/// One role's session answering with the recorded outputs of the next recorded call (shared cursor).
public final class ReplaySession: Session {
    public final class Log {
        let calls: [JSON]
        var cursor = 0
        init(_ calls: [JSON]) { self.calls = calls }
    }
    public let role: String
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    public var fixedBatch: Int? { nil }
    let log: Log

    init(role: String, inputs: [TensorSpec], outputs: [TensorSpec], log: Log) {
        self.role = role
        self.inputs = inputs
        self.outputs = outputs
        self.log = log
    }

    public func run(_ feeds: [String: Tensor]) throws -> [String: Tensor] {
        let i = log.cursor
        if i >= log.calls.count { throw Mismatch("call \(i) (\(role)): the vectors recorded only \(log.calls.count) calls") }
        let rec = log.calls[i]
        let recRole = rec["role"]!.stringValue!
        if recRole != role { throw Mismatch("call \(i): the loop called \(role), the vectors \(recRole)") }
        let recInputs = rec["inputs"]!.objectValue!
        if Set(feeds.keys) != Set(recInputs.keys) {
            throw Mismatch("call \(i) (\(role)): feeds \(feeds.keys.sorted()), vectors \(recInputs.keys.sorted())")
        }
        for (name, value) in feeds { try closeTo(value, recInputs[name]!, "call \(i) (\(role)) input \(name)") }
        log.cursor += 1
        return try rec["outputs"]!.objectValue!.mapValues(decodeRecord)
    }
}

func checkTokenizer(_ bundle: PocketdiffBundle, _ v: JSON) throws -> String {
    let tok = try bundle.tokenizer()
    let tokens = v["tokens"]!.arrayValue!
    for t in tokens {
        let got = try tok(t["prompt"]!.stringValue!, truncate: true).inputIds
        let want = t["input_ids"]!.arrayValue!.map { $0.intValue! }
        if got != want { throw Mismatch("\(pyString(t["prompt"]!.stringValue!)): ids \(got.prefix(12))..., vectors \(want.prefix(12))...") }
    }
    return "\(tokens.count) prompts"
}

func checkRNG(_ v: JSON) throws -> String {
    let records = v["initial_latents"]!.arrayValue!
    for r in records {
        let first = r["first_values"]!.arrayValue!.map { $0.numberValue! }
        let got = try initialLatents(seed: r["seed"]!.intValue!, shape: r["shape"]!.arrayValue!.map { $0.intValue! }).data.prefix(first.count)
        let worst = zip(got, first).map { abs(Double($0) - $1) }.max() ?? 0
        if worst > 1e-6 { throw Mismatch("seed \(r["seed"]!.intValue!): draws differ by \(g(worst))") }
    }
    return "seeds \(records.map { $0["seed"]!.intValue! })"
}

func checkTimesteps(_ m: JSON, _ v: JSON) throws -> String {
    let sched = try schedulerFromConfig(m["scheduler"]!["config"]!)
    let steps = v["timesteps"]!["steps"]!.intValue!
    try sched.setTimesteps(steps)
    let want = v["timesteps"]!["values"]!.arrayValue!.map { Int($0.numberValue!) }
    if sched.timesteps.map({ Int($0) }) != want { throw Mismatch("timesteps \(sched.timesteps), vectors \(want)") }
    return "\(steps) steps"
}

func checkScheduler(_ entry: JSON) throws -> String {
    let sched = try schedulerFromConfig(entry["config"]!, name: entry["name"]!.stringValue!)
    try sched.setTimesteps(entry["steps"]!.intValue!)
    let want = entry["timesteps"]!.arrayValue!.map { $0.numberValue! }
    if sched.timesteps.count != want.count || zip(sched.timesteps, want).contains(where: { abs($0 - $1) > 1e-8 + 1e-5 * abs($1) }) {
        throw Mismatch("timesteps \(sched.timesteps), vectors \(want)")
    }
    let sigma = entry["init_noise_sigma"]!.numberValue!
    if abs(Double(sched.initNoiseSigma) - sigma) > 1e-4 * max(1.0, sigma) {
        throw Mismatch("init_noise_sigma \(sched.initNoiseSigma), vectors \(sigma)")
    }
    let records = entry["records"]!.arrayValue!
    for r in records {
        let i = r["index"]!.intValue!
        let sample = try decodeRecord(r["sample"]!)
        try closeTo(sched.scaleModelInput(sample, i), r["scaled_sample"]!, "step \(i) scaled sample", atol: SCHEDULER_ATOL, rtol: SCHEDULER_ATOL)
        let prev = sched.step(try decodeRecord(r["model_output"]!), i, sample)
        try closeTo(prev, r["prev_sample"]!, "step \(i) prev sample", atol: SCHEDULER_ATOL, rtol: SCHEDULER_ATOL)
        let want = try decodeRecord(r["prev_sample"]!)
        let worst = zip(prev.data, want.data).map { abs(Double($0) - Double($1)) }.max() ?? 0
        if zip(prev.data, want.data).contains(where: { abs(Double($0) - Double($1)) > SCHEDULER_ATOL + SCHEDULER_ATOL * abs(Double($1)) }) {
            throw Mismatch("step \(i): prev sample differs by \(g(worst))")
        }
    }
    return "\(records.count) steps"
}

func checkReplay(_ bundle: PocketdiffBundle, _ v: JSON) throws -> String {
    let (m, s, replay) = (bundle.manifest, v["sampler"]!, v["replay"]!)
    let calls = replay["calls"]!.arrayValue!
    if calls.contains(where: { $0["outputs"]!.objectValue!.values.contains { $0["data"] == nil } }) { throw NoData() }
    let target = bundle.targets.contains("onnx") ? "onnx" : bundle.targets[0]  // the specs the app's sessions have
    let log = ReplaySession.Log(calls)
    var sessions: [String: Session] = [:]
    for c in bundle.components where c.target == target && sessions[c.role] == nil {
        let specs = target == "coreml" ? CoreMLSession.logicalSpecs(role: c.role, inputs: c.inputs, outputs: c.outputs)
            : (c.inputs, c.outputs)
        sessions[c.role] = ReplaySession(role: c.role, inputs: specs.0, outputs: specs.1, log: log)
    }
    let policy = try makePolicy(s["policy"]!.stringValue!, s["params"])
    let budget = try m["step_budget"].map { try BudgetSpec(json: $0) }
    let runtime = try RuntimePipeline(tokenizer: bundle.tokenizer(), sessions: sessions, schedulerConfig: m["scheduler"]!["config"]!,
                                      latentShape: m["model"]!["latent_shape"]!.arrayValue!.map { $0.intValue! },
                                      scalingFactor: m["model"]!["latent_scale_factor"]!.numberValue!, policy: policy, budget: budget)
    var latents: [Int: Tensor] = [:]
    let result = try runtime.generate(s["prompt"]!.stringValue!, steps: .count(s["steps"]!.intValue!), guidance: s["guidance"]!.numberValue!,
                                      seed: s["seed"]!.intValue!, onStep: { latents[$0] = $1 })
    let trace = result.trace.map { JSON.object(["step": $0.step.map(JSON.int) ?? .null, "role": .string($0.role), "batch": .int($0.batch)]) }
    if trace != s["trace"]!.arrayValue! || log.cursor != calls.count {
        throw Mismatch("trace \(JSON.array(trace).repr), vectors \(s["trace"]!.repr)")
    }
    let tol = s["tolerance"]!.numberValue!
    try closeTo(latents[0]!, s["latent_after_step_1"]!, "latent after step 1", atol: tol, rtol: 0)
    try closeTo(latents[latents.keys.max()!]!, s["latent_after_last_step"]!, "latent after the last step", atol: tol, rtol: 0)
    let want = [UInt8](Data(base64Encoded: replay["image"]!["data"]!.stringValue!) ?? Data())
    let shape = replay["image"]!["shape"]!.arrayValue!.map { $0.intValue! }
    if shape != [result.height, result.width, 3] || want.count != result.pixels.count {
        throw Mismatch("image shape \([result.height, result.width, 3]), vectors \(shape)")
    }
    let diff = zip(result.pixels, want).map { abs(Int($0) - Int($1)) }.max() ?? 0
    if diff > 1 { throw Mismatch("image differs by \(diff)/255") }
    return "\(trace.count) calls, image max diff \(diff)/255"
}

func checkStepBudget(_ bundle: PocketdiffBundle, _ v: JSON) throws -> String {
    let spec = try BudgetSpec(json: bundle.manifest["step_budget"]!)
    let entries = v["step_budget"]!.arrayValue!
    for e in entries {
        let prompt = pyString(e["prompt"]?.stringValue ?? "")
        let targets = try spec.targets("auto")
        let want = e["targets"]!.objectValue!.mapValues { $0.numberValue! }
        func r9(_ d: [String: Double]) -> [String: Double] { d.mapValues { ($0 * 1e9).rounded() / 1e9 } }
        if r9(targets) != r9(want) { throw Mismatch("\(prompt): targets \(targets), vectors \(want)") }
        let quality = e["quality"]!.arrayValue!.map { $0.arrayValue!.map { $0.numberValue! } }
        let steps = spec.choose(quality, targets)
        if steps != e["steps"]!.intValue! { throw Mismatch("\(prompt): \(steps) steps, vectors \(e["steps"]!.intValue!)") }
    }
    return "\(entries.count) prompts"
}

public struct CheckResult {
    public let name: String
    public let status: String  // PASSED, FAILED or NOT_RUN
    public let detail: String
}

/// Every check of docs/ports.md on the bundle at `path`, in order.
public func runChecks(_ path: URL, trustedKey: Curve25519.Signing.PublicKey? = nil) -> [CheckResult] {
    var checks: [CheckResult] = []
    func add(_ name: String, _ status: String, _ detail: String) { checks.append(CheckResult(name: name, status: status, detail: detail)) }
    func check(_ name: String, _ fn: () throws -> String) {
        do { let detail = try fn(); add(name, PASSED, detail) }
        catch is NoData { add(name, NOT_RUN, "a recorded output is too large to be stored whole") }
        catch { add(name, FAILED, error.localizedDescription) }
    }
    let bundle: PocketdiffBundle
    do { bundle = try PocketdiffBundle.load(path, verify: true, trustedKey: trustedKey) } catch {
        add("manifest", FAILED, error.localizedDescription)
        return checks
    }
    add("manifest", PASSED, "\(bundle.manifest["files"]!.arrayValue!.count) files verified")
    if trustedKey != nil { add("signature", PASSED, "Ed25519 over manifest.json") } else { add("signature", NOT_RUN, "no trusted key given") }
    let v: JSON
    do { v = try JSON.parse(Data(contentsOf: bundle.file(bundle.manifest["test_vectors"]!.stringValue!))) } catch {
        add("tokenizer", FAILED, "cannot read the test vectors: \(error.localizedDescription)")
        return checks
    }
    check("tokenizer") { try checkTokenizer(bundle, v) }
    check("rng") { try checkRNG(v) }
    check("timesteps") { try checkTimesteps(bundle.manifest, v) }
    for entry in v["schedulers"]?.arrayValue ?? [] { check("scheduler:\(entry["name"]!.stringValue!)") { try checkScheduler(entry) } }
    let name = "policy:\(v["sampler"]!["policy"]!.stringValue!)"
    if v["replay"] == nil { add(name, NOT_RUN, "the vectors have no replay (written before the format had one)") }
    else { check(name) { try checkReplay(bundle, v) } }
    if v["step_budget"] != nil { check("step_budget") { try checkStepBudget(bundle, v) } }
    else { add("step_budget", NOT_RUN, "the bundle has no step-budget predictor") }
    return checks
}
