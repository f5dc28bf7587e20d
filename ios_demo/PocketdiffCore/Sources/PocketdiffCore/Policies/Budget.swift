// Mirrors pocketdiff/runtime/policies/budget.py: BudgetFusion, the step count picked per prompt before the loop
// (steps "auto"). Not a step policy: the role step_budget maps the prompt's last_hidden_state [1, 77, D] to quality
// [1, K, M], the predicted quality at each of the K step counts (M metrics; a distance where higher_is_better is
// false). The rule: the smallest step count whose predicted quality reaches every target (>= a similarity,
// <= a distance); when none does, the largest. Targets: "auto" (the default preset), "auto:NAME" (a preset),
// "auto:METRIC=VALUE[,...]".
import Foundation

public let STEP_BUDGET = "step_budget"
let HIDDEN_IN = "encoder_hidden_states"
let QUALITY = "quality"
let AUTO = "auto"

/// A step request: a count, or "auto[:PRESET|METRIC=VALUE,...]".
public enum StepsRequest: Equatable {
    case count(Int)
    case auto(String)
    public var isAuto: Bool { if case .auto(let s) = self { return isAutoRequest(s) } else { return false } }
}

public func isAutoRequest(_ steps: String) -> Bool { steps == AUTO || steps.hasPrefix(AUTO + ":") }

/// The manifest's step_budget entry.
public struct BudgetSpec {
    public let stepCounts: [Int]
    public let metrics: [String]
    public let higherIsBetter: [Bool]
    public let presets: [String: [String: Double]]
    public let defaultPreset: String?

    public init(json d: JSON) throws {
        func bad(_ why: String) -> PocketdiffError { PocketdiffError("bad step_budget entry \(d.repr): \(why)") }
        guard let o = d.objectValue else { throw bad("not an object") }
        guard let counts = o["step_counts"]?.arrayValue else { throw bad("'step_counts'") }
        guard let metrics = o["metrics"]?.arrayValue?.map({ $0.stringValue ?? $0.repr }) else { throw bad("'metrics'") }
        guard let hib = o["higher_is_better"]?.arrayValue else { throw bad("'higher_is_better'") }
        stepCounts = try counts.map { v in
            if let n = v.numberValue, n.isFinite { return Int(n) }  // Python int(): truncates a float
            if let s = v.stringValue, let n = Int(s.trimmingCharacters(in: .whitespaces)) { return n }
            throw bad("invalid literal for int(): \(v.repr)")
        }
        self.metrics = metrics
        higherIsBetter = hib.map { v in v.boolValue ?? ((v.numberValue ?? 0) != 0 || !(v.stringValue ?? "").isEmpty) }  // bool()
        var presets: [String: [String: Double]] = [:]
        for (name, t) in o["presets"]?.objectValue ?? [:] {
            guard let targets = t.objectValue else { throw bad("preset \(pyString(name)) is not an object") }
            presets[name] = try targets.mapValues { v in
                guard let x = v.numberValue ?? v.stringValue.flatMap({ Double($0.trimmingCharacters(in: .whitespaces)) }) else {
                    throw bad("could not convert to float: \(v.repr)")
                }
                return x
            }
        }
        self.presets = presets
        defaultPreset = o["default_preset"]?.stringValue
        try validate()
    }

    func validate() throws {
        if stepCounts.isEmpty || stepCounts != Array(Set(stepCounts)).sorted() || stepCounts[0] < 1 {
            throw PocketdiffError("step_budget step_counts must be increasing integers >= 1, got "
                                  + JSON.array(stepCounts.map(JSON.int)).repr)
        }
        if metrics.count != higherIsBetter.count || metrics.isEmpty {
            throw PocketdiffError("step_budget: \(metrics.count) metrics, \(higherIsBetter.count) directions")
        }
        for name in presets.keys.sorted() { try checkTargets(presets[name]!, "preset \(pyString(name))") }
        if let p = defaultPreset, presets[p] == nil {
            throw choiceError("step_budget default preset", p, presets.keys.sorted())
        }
    }

    func checkTargets(_ targets: [String: Double], _ what: String) throws {
        if targets.isEmpty { throw PocketdiffError("step budget \(what): no targets") }
        for (m, v) in targets.sorted(by: { $0.key < $1.key }) {
            if !metrics.contains(m) { throw choiceError("step budget metric in \(what)", m, metrics) }
            if !v.isFinite { throw PocketdiffError("step budget \(what): target \(m)=\(pyFloat(v)) is not a finite number") }
        }
    }

    /// The targets `request` names; one error line for a bad one.
    public func targets(_ request: String) throws -> [String: Double] {
        if !isAutoRequest(request) {
            throw PocketdiffError("steps must be an integer >= 1 or 'auto[:PRESET|METRIC=VALUE,...]', got \(pyString(request))")
        }
        let rest = request == AUTO ? "" : String(request.dropFirst(AUTO.count + 1))
        if rest.isEmpty {
            guard let p = defaultPreset else {
                let names = presets.keys.sorted().joined(separator: ", ")
                throw PocketdiffError("this bundle's step budget has no default preset; name one: auto:NAME "
                                      + "(\(names.isEmpty ? "none" : names)) or auto:METRIC=VALUE")
            }
            return presets[p]!
        }
        if !rest.contains("=") {
            guard let p = presets[rest] else { throw choiceError("step budget preset", rest, presets.keys.sorted()) }
            return p
        }
        var targets: [String: Double] = [:]
        for item in rest.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let value = parts.count > 1 ? String(parts[1]).trimmingCharacters(in: .whitespaces) : ""
            guard let v = Double(value) else {
                throw PocketdiffError("step budget target \(pyString(String(item))) is not METRIC=NUMBER")
            }
            targets[String(parts[0]).trimmingCharacters(in: .whitespaces)] = v
        }
        try checkTargets(targets, "request \(pyString(request))")
        return targets
    }

    /// The smallest step count whose predicted quality [K][M] reaches every target, else the largest.
    public func choose(_ quality: [[Double]], _ targets: [String: Double]) -> Int {
        for (k, row) in quality.enumerated() {
            let ok = targets.allSatisfy { name, tau in
                let j = metrics.firstIndex(of: name)!
                return higherIsBetter[j] ? row[j] >= tau : row[j] <= tau
            }
            if ok { return stepCounts[k] }
        }
        return stepCounts[stepCounts.count - 1]
    }
}

/// Run step_budget (through the loop's traced call) on the prompt's states [1, 77, D] and apply the rule:
/// (steps, the record the result keeps: request, targets, predicted curve, steps).
public func predictSteps(_ call: (String, [String: Tensor]) throws -> [String: Tensor], _ spec: BudgetSpec,
                         _ promptHidden: Tensor, _ request: String) throws -> (Int, BudgetRecord) {
    let targets = try spec.targets(request)
    let q = try call(STEP_BUDGET, [HIDDEN_IN: promptHidden])[QUALITY]!  // [1, K, M]
    let (k, m) = (q.shape[1], q.shape[2])
    let quality = (0..<k).map { i in (0..<m).map { Double(q.data[i * m + $0]) } }
    let steps = spec.choose(quality, targets)
    return (steps, BudgetRecord(request: request, targets: targets, predicted: quality, steps: steps))
}

public struct BudgetRecord {
    public let request: String
    public let targets: [String: Double]
    public let predicted: [[Double]]
    public let steps: Int
}
