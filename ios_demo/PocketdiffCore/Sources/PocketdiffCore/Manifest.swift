// Mirrors pocketdiff/runtime/manifest.py: a bundle manifest's structure and its paths, checked by hand before
// anything in it is used. Every violation is one PocketdiffError naming the field
// (`bundle manifest: manifest.components[2].role ...`), in the Python runtime's words. Unknown keys are refused
// where the format is closed (the top level, each component, each files entry, each tensor spec).
//
// resolveInside confines a path the manifest names to the bundle folder: a relative POSIX path with no `..`, no
// empty or `.` parts, no backslash or NUL, whose symlinks (followed one at a time by reading the link with
// FileManager.destinationOfSymbolicLink, never by stat'ing its target) all stay inside.
import Foundation

public let FORMAT_VERSION = 1
public let TARGETS = ["onnx", "coreml", "executorch"]
public let PRECISIONS = ["fp32", "fp16"]
public let QUANTIZATIONS: [String?] = [nil, "int8", "palette6", "palette4"]
let TOP_KEYS: [(String, Bool)] = [
    ("format_version", true), ("created_by", false), ("export", false), ("model", true), ("tokenizer", true),
    ("scheduler", true), ("defaults", true), ("sampler", false), ("step_budget", false), ("components", true),
    ("files", true), ("test_vectors", false),
]  // key -> required, in the Python order (the error lists them)
let COMPONENT_KEYS: [(String, Bool)] = [
    ("name", true), ("role", true), ("target", true), ("path", true), ("precision", true), ("quantization", false),
    ("inputs", true), ("outputs", true), ("parity", false), ("meta", false),
]
let FILE_KEYS: [(String, Bool)] = [("path", true), ("sha256", true), ("bytes", true)]
let TENSOR_KEYS: [(String, Bool)] = [("name", true), ("shape", true), ("dtype", true)]
let MAX_SYMLINKS = 40

func fail(_ where_: String, _ what: String) -> PocketdiffError { PocketdiffError("bundle manifest: \(where_) \(what)") }

@discardableResult
func keys(_ obj: JSON, _ spec: [(String, Bool)], _ where_: String) throws -> [String: JSON] {
    guard let o = obj.objectValue else { throw fail(where_, "must be an object, got \(obj.typeName)") }
    let allowed = Set(spec.map { $0.0 })
    if let unknown = o.keys.filter({ !allowed.contains($0) }).sorted().first {
        throw fail(where_, "has an unknown field \(pyString(unknown)); allowed: \(spec.map { $0.0 }.joined(separator: ", "))")
    }
    if let missing = spec.first(where: { $0.1 && o[$0.0] == nil }) { throw fail("\(where_).\(missing.0)", "is missing") }
    return o
}

private func isFiniteNumber(_ v: JSON) -> Bool { v.numberValue?.isFinite ?? false }

@discardableResult
private func int(_ v: JSON, _ where_: String, _ minimum: Int) throws -> Int {
    guard let i = v.intValue, i >= minimum else { throw fail(where_, "must be an integer >= \(minimum), got \(v.repr)") }
    return i
}

@discardableResult
private func str(_ v: JSON, _ where_: String) throws -> String {
    guard let s = v.stringValue, !s.isEmpty else { throw fail(where_, "must be a non-empty string, got \(v.repr)") }
    return s
}

private func ints(_ v: JSON, _ where_: String, _ n: Int) throws {
    guard let a = v.arrayValue, a.count == n else { throw fail(where_, "must be a list of \(n) integers, got \(v.repr)") }
    for (i, x) in a.enumerated() { try int(x, "\(where_)[\(i)]", 1) }
}

private func tensors(_ v: JSON, _ where_: String) throws {
    guard let list = v.arrayValue else { throw fail(where_, "must be a list, got \(v.typeName)") }
    for (i, t) in list.enumerated() {
        let w = "\(where_)[\(i)]"
        let o = try keys(t, TENSOR_KEYS, w)
        try str(o["name"]!, "\(w).name")
        try str(o["dtype"]!, "\(w).dtype")
        let ok = o["shape"]!.arrayValue?.allSatisfy { ($0.intValue.map { $0 >= 0 } ?? false) || $0.stringValue != nil } ?? false
        if !ok { throw fail("\(w).shape", "must be a list of integers >= 0 or symbol strings, got \(o["shape"]!.repr)") }
    }
}

/// A path the manifest names: relative POSIX, inside the bundle by its letters alone.
@discardableResult
public func checkPath(_ relValue: JSON, _ where_: String) throws -> String {
    let rel = try str(relValue, where_)
    let scalars = Array(rel.unicodeScalars)  // re.match(r"[A-Za-z]:", rel)
    let drive = scalars.count >= 2 && scalars[1] == ":" && (("a"..."z").contains(scalars[0]) || ("A"..."Z").contains(scalars[0]))
    if rel.contains("\\") || rel.contains("\0") || rel.hasPrefix("/") || drive {
        throw fail(where_, "must be a relative POSIX path inside the bundle, got \(pyString(rel))")
    }
    let parts = rel.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
    var stripped = Substring(rel)  // rel.rstrip("/")
    while stripped.hasSuffix("/") { stripped = stripped.dropLast() }
    if rel.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == ".." || $0 == "." })
        || stripped.split(separator: "/", omittingEmptySubsequences: false).contains("") || parts.isEmpty {
        throw fail(where_, "must stay inside the bundle (no '..', '.' or empty parts), got \(pyString(rel))")
    }
    return rel
}

private func isSymlink(_ path: String) -> Bool {
    // attributesOfItem does not follow a final symlink (lstat); a path that does not exist is no link
    (try? FileManager.default.attributesOfItem(atPath: path)[.type] as? FileAttributeType) == .typeSymbolicLink
}

/// `root/rel` with every symlink on the way followed by reading the link and checked to stay inside `root` before
/// anything is stat'ed there. `rel` has passed checkPath.
public func resolveInside(_ root: URL, _ rel: String, _ where_: String) throws -> URL {
    let root = root.standardizedFileURL
    var parts = rel.split(separator: "/").map(String.init).filter { $0 != "." }
    var done: [String] = []
    var hops = 0
    while !parts.isEmpty {
        let part = parts.removeFirst()
        if part == ".." {
            if done.isEmpty { throw fail(where_, "\(pyString(rel)) leaves the bundle through a symlink") }
            done.removeLast()
            continue
        }
        let current = (done + [part]).reduce(root) { $0.appendingPathComponent($1) }
        if isSymlink(current.path) {  // lstat of a path already known to be inside the bundle
            hops += 1
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: current.path) else {
                throw fail(where_, "\(pyString(rel)) is a symlink that cannot be read")
            }
            if hops > MAX_SYMLINKS || target.hasPrefix("/") {
                throw fail(where_, "\(pyString(rel)) is a symlink that leaves the bundle (to \(pyString(target)))")
            }
            parts = target.split(separator: "/").map(String.init).filter { $0 != "." } + parts  // relative to the link's folder
            continue
        }
        done.append(part)
    }
    return done.reduce(root) { $0.appendingPathComponent($1) }
}

/// Every field the runtime reads, with its type and range. `knownRoles`: the roles this runtime can run.
public func checkManifest(_ m: JSON, knownRoles: Set<String>) throws {
    guard m.objectValue != nil else { throw fail("(the whole file)", "must be a JSON object, got \(m.typeName)") }
    let top = try keys(m, TOP_KEYS, "manifest")
    if !top["format_version"]!.pyEquals(.int(FORMAT_VERSION)) {  // (Python: 1.0 == 1)
        throw PocketdiffError("bundle has manifest format_version \(top["format_version"]!.repr); this pocketdiff reads "
                              + "\(FORMAT_VERSION)")
    }
    let model = try keys(top["model"]!, [("image_size", true), ("latent_shape", true), ("latent_scale_factor", true)],
                         "manifest.model")
    try ints(model["image_size"]!, "manifest.model.image_size", 2)
    try ints(model["latent_shape"]!, "manifest.model.latent_shape", 3)
    if !isFiniteNumber(model["latent_scale_factor"]!) || model["latent_scale_factor"]!.numberValue! <= 0 {
        throw fail("manifest.model.latent_scale_factor", "must be a number > 0, got \(model["latent_scale_factor"]!.repr)")
    }
    let tok = try keys(top["tokenizer"]!, [("vocab", true), ("merges", true), ("max_length", true)], "manifest.tokenizer")
    try checkPath(tok["vocab"]!, "manifest.tokenizer.vocab")
    try checkPath(tok["merges"]!, "manifest.tokenizer.merges")
    try int(tok["max_length"]!, "manifest.tokenizer.max_length", 2)
    let sched = try keys(top["scheduler"]!, [("name", true), ("diffusers_class", true), ("config", true), ("timesteps", true)],
                         "manifest.scheduler")
    try str(sched["name"]!, "manifest.scheduler.name")
    try str(sched["diffusers_class"]!, "manifest.scheduler.diffusers_class")
    if sched["config"]!.objectValue == nil { throw fail("manifest.scheduler.config", "must be an object") }
    if !(sched["timesteps"]!.arrayValue?.allSatisfy(isFiniteNumber) ?? false) {
        throw fail("manifest.scheduler.timesteps", "must be a list of numbers")
    }
    let defaults = try keys(top["defaults"]!, [("steps", true), ("guidance", true)], "manifest.defaults")
    try int(defaults["steps"]!, "manifest.defaults.steps", 1)
    if !isFiniteNumber(defaults["guidance"]!) || defaults["guidance"]!.numberValue! < 0 {
        throw fail("manifest.defaults.guidance", "must be a number >= 0, got \(defaults["guidance"]!.repr)")
    }
    if let s = top["sampler"] {
        let sampler = try keys(s, [("policy", true), ("params", true)], "manifest.sampler")
        try str(sampler["policy"]!, "manifest.sampler.policy")
        if sampler["params"]!.objectValue == nil { throw fail("manifest.sampler.params", "must be an object") }
    }
    if let b = top["step_budget"] {  // BudgetFusion's step counts, metrics and presets (Policies/Budget.swift)
        guard b.objectValue != nil else { throw fail("manifest.step_budget", "must be an object") }
        do { _ = try BudgetSpec(json: b) } catch let e as PocketdiffError {
            throw fail("manifest.step_budget", "is invalid: \(e.message)")
        }
    }
    for key in ["created_by", "export"] where top[key] != nil && top[key]!.objectValue == nil {
        throw fail("manifest.\(key)", "must be an object")
    }
    if let tv = top["test_vectors"], !tv.isNull { try checkPath(tv, "manifest.test_vectors") }
    guard let components = top["components"]!.arrayValue, !components.isEmpty else {
        throw fail("manifest.components", "must be a non-empty list")
    }
    for (i, c) in components.enumerated() {
        let w = "manifest.components[\(i)]"
        let o = try keys(c, COMPONENT_KEYS, w)
        try str(o["name"]!, "\(w).name")
        guard let role = o["role"]!.stringValue, knownRoles.contains(role) else {
            throw fail("\(w).role", "is \(o["role"]!.repr), not a role this runtime knows; allowed: "
                                    + knownRoles.sorted().joined(separator: ", "))
        }
        guard let target = o["target"]!.stringValue, TARGETS.contains(target) else {
            throw fail("\(w).target", "is \(o["target"]!.repr); allowed: \(TARGETS.joined(separator: ", "))")
        }
        try checkPath(o["path"]!, "\(w).path")
        guard let precision = o["precision"]!.stringValue, PRECISIONS.contains(precision) else {
            throw fail("\(w).precision", "is \(o["precision"]!.repr); allowed: \(PRECISIONS.joined(separator: ", "))")
        }
        let q = o["quantization"] ?? .null
        if !(q.isNull || (q.stringValue.map { QUANTIZATIONS.contains($0) } ?? false)) {
            throw fail("\(w).quantization", "is \(q.repr); allowed: null, int8, palette6, palette4")
        }
        try tensors(o["inputs"]!, "\(w).inputs")
        try tensors(o["outputs"]!, "\(w).outputs")
        for key in ["parity", "meta"] where o[key] != nil && !o[key]!.isNull && o[key]!.objectValue == nil {
            throw fail("\(w).\(key)", "must be an object or null")
        }
    }
    guard let files = top["files"]!.arrayValue else { throw fail("manifest.files", "must be a list") }
    for (i, f) in files.enumerated() {
        let w = "manifest.files[\(i)]"
        let o = try keys(f, FILE_KEYS, w)
        try checkPath(o["path"]!, "\(w).path")
        let sha = o["sha256"]!.stringValue ?? ""
        if sha.count != 64 || !sha.allSatisfy({ "0123456789abcdef".contains($0) }) {
            throw fail("\(w).sha256", "must be 64 lowercase hex digits, got \(o["sha256"]!.repr)")
        }
        try int(o["bytes"]!, "\(w).bytes", 0)
    }
}
