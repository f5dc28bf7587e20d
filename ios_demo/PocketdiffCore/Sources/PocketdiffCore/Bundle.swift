// Mirrors pocketdiff/runtime/bundle.py: read an app bundle, everything checked before any model loads (named
// PocketdiffBundle so it does not shadow Foundation.Bundle). Fails closed, in this order:
//
// 1. manifest.json is read as bytes (a symlinked manifest is refused);
// 2. with a trusted Ed25519 key, its signature over those exact bytes must verify (Signing.swift);
// 3. its structure: every field the runtime reads, known roles and targets (Manifest.swift);
// 4. every path it names (files, components, tokenizer, test vectors) stays inside the bundle, symlinks included;
// 5. every component is covered by the checksums, and (verify) every listed file has its size and sha256
//    (CryptoKit's SHA256, streamed in 1 MiB blocks).
import CryptoKit
import Foundation

public let MANIFEST = "manifest.json"

public func sha256File(_ url: URL, chunk: Int = 1 << 20) throws -> String {
    let handle = try FileHandle(forReadingFrom: url)
    defer { try? handle.close() }
    var hasher = SHA256()
    while let block = try handle.read(upToCount: chunk), !block.isEmpty { hasher.update(data: block) }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
}

public struct BundleComponent {
    public let name: String
    public let role: String
    public let target: String
    public let path: String
    public let precision: String
    public let quantization: String?
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    public let meta: [String: JSON]

    init(_ c: [String: JSON]) {
        name = c["name"]!.stringValue!
        role = c["role"]!.stringValue!
        target = c["target"]!.stringValue!
        path = c["path"]!.stringValue!
        precision = c["precision"]!.stringValue!
        quantization = c["quantization"]?.stringValue
        inputs = c["inputs"]!.arrayValue!.map(TensorSpec.init(json:))
        outputs = c["outputs"]!.arrayValue!.map(TensorSpec.init(json:))
        meta = c["meta"]?.objectValue ?? [:]
    }
}

public struct PocketdiffBundle {
    public let path: URL
    public let manifest: JSON
    public let components: [BundleComponent]
    public let signedBy: String?  // the trusted public key (hex) the manifest verified with, if any

    public func component(role: String, target: String) throws -> BundleComponent {
        if let c = components.first(where: { $0.role == role && $0.target == target }) { return c }
        let have = Set(components.map { "\($0.role)/\($0.target)" }).sorted()
        throw PocketdiffError("bundle \(path.path) has no \(role) for target \(pyString(target)); it has: "
                              + have.joined(separator: ", "))
    }

    public var targets: [String] { Set(components.map(\.target)).sorted() }

    /// A path the manifest names, resolved inside the bundle (the manifest's paths were all checked).
    public func file(_ rel: String) throws -> URL { try resolveInside(path, rel, rel) }

    /// The tokenizer from the files the manifest names (and the special-tokens map beside the vocab, if listed).
    public func tokenizer() throws -> CLIPBPETokenizer {
        let t = manifest["tokenizer"]!
        let vocab = t["vocab"]!.stringValue!, merges = t["merges"]!.stringValue!
        let folder = (vocab as NSString).deletingLastPathComponent
        let special = folder.isEmpty ? "special_tokens_map.json" : folder + "/special_tokens_map.json"
        let listed = Set(manifest["files"]!.arrayValue!.compactMap { $0["path"]?.stringValue })
        return try CLIPBPETokenizer.fromFiles(vocab: file(vocab), merges: file(merges),
                                              special: listed.contains(special) ? file(special) : nil)
    }

    /// Read and check a bundle (file header); `verify` also hashes every file.
    public static func load(_ path: URL, verify: Bool = true, trustedKey: Curve25519.Signing.PublicKey? = nil) throws
        -> PocketdiffBundle {
        let manifestFile = path.appendingPathComponent(MANIFEST)
        let attrs = try? FileManager.default.attributesOfItem(atPath: manifestFile.path)  // lstat
        if attrs?[.type] as? FileAttributeType != .typeRegular {
            var isDir: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: path.path, isDirectory: &isDir)
            throw PocketdiffError(exists && isDir.boolValue ? "bundle \(path.path) has no \(MANIFEST)"
                                  : "bundle \(path.path) does not exist")
        }
        let raw = try Data(contentsOf: manifestFile)
        if let trustedKey {  // before the bytes are even parsed
            try verifySignature(raw, signatureURL: path.appendingPathComponent(SIGNATURE_FILE), key: trustedKey, bundle: path)
        }
        let manifest: JSON
        do {
            guard String(data: raw, encoding: .utf8) != nil else { throw PocketdiffError("not UTF-8") }
            manifest = try JSON.parse(raw)
        } catch {
            throw PocketdiffError("bundle manifest \(manifestFile.path) is not valid JSON: \(error.localizedDescription)")
        }
        try checkManifest(manifest, knownRoles: runtimeRoles())
        let files = manifest["files"]!.arrayValue!, comps = manifest["components"]!.arrayValue!
        var named = files.enumerated().map { ("manifest.files[\($0.offset)].path", $0.element["path"]!.stringValue!) }
        named += comps.enumerated().map { ("manifest.components[\($0.offset)].path", $0.element["path"]!.stringValue!) }
        named += ["vocab", "merges"].map { ("manifest.tokenizer.\($0)", manifest["tokenizer"]![$0]!.stringValue!) }
        if let tv = manifest["test_vectors"]?.stringValue, !tv.isEmpty { named.append(("manifest.test_vectors", tv)) }
        for (where_, rel) in named { _ = try resolveInside(path, rel, where_) }
        let listed = Set(files.map { $0["path"]!.stringValue! })
        let components = comps.map { BundleComponent($0.objectValue!) }
        for c in components {
            let prefix = String(c.path.reversed().drop(while: { $0 == "/" }).reversed()) + "/"
            if !listed.contains(c.path) && !listed.contains(where: { $0.hasPrefix(prefix) }) {
                throw PocketdiffError("bundle component \(c.name) (\(c.path)) is not covered by the manifest's checksums")
            }
        }
        if verify { try verifyFiles(path, files) }
        return PocketdiffBundle(path: path, manifest: manifest, components: components,
                                signedBy: trustedKey.map(publicKeyHex))
    }
}

/// Every listed file: a regular file inside the bundle, of its size and sha256.
public func verifyFiles(_ root: URL, _ files: [JSON]) throws {
    for (i, entry) in files.enumerated() {
        let rel = entry["path"]!.stringValue!
        let f = try resolveInside(root, rel, "manifest.files[\(i)].path")
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: f.path, isDirectory: &isDir), !isDir.boolValue else {
            throw PocketdiffError("bundle file \(rel) is missing from \(root.path)")
        }
        let size = (try FileManager.default.attributesOfItem(atPath: f.path)[.size] as? NSNumber)?.intValue ?? -1
        if size != entry["bytes"]!.intValue! {
            throw PocketdiffError("bundle file \(rel) is truncated or altered: \(size) bytes, manifest says \(entry["bytes"]!.intValue!)")
        }
        if try sha256File(f) != entry["sha256"]!.stringValue! {
            throw PocketdiffError("bundle file \(rel) fails its sha256 check (tampered or corrupt)")
        }
    }
}
