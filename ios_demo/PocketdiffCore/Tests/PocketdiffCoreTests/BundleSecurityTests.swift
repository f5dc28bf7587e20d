// Hostile manifests fail closed with one line, in the same words as tests/test_bundle_security.py, before anything
// outside the bundle is opened; the signature format against RFC 8032 §7.1 TEST 1 and docs/export.md's vector.
import CryptoKit
import XCTest
@testable import PocketdiffCore

final class BundleSecurityTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("pocketdiff-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    func manifest() throws -> [String: Any] {
        let data = try Data(contentsOf: bundleURL().appendingPathComponent(MANIFEST))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// The index of the first unet component (onnx if the bundle has one), as the Python test's `_unet(m)`.
    func unetIndex(_ m: [String: Any]) -> Int {
        let comps = m["components"] as! [[String: Any]]
        return comps.firstIndex { $0["role"] as? String == "unet" && $0["target"] as? String == "onnx" }
            ?? comps.firstIndex { $0["role"] as? String == "unet" }!
    }

    /// A bundle folder holding only `manifest` (the checks that fail here run before any other file is read).
    func write(_ manifest: Any, name: String = "b") throws -> URL {
        let b = tmp.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: b, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: manifest).write(to: b.appendingPathComponent(MANIFEST))
        return b
    }

    func assertRefused(_ bundle: URL, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try PocketdiffBundle.load(bundle), file: file, line: line) { error in
            let text = (error as? PocketdiffError)?.message ?? "\(error)"
            XCTAssertTrue(text.contains(message), "\(text) does not say \(message)", file: file, line: line)
            XCTAssertFalse(text.contains("\n"), file: file, line: line)
        }
    }

    /// The manifest with the unet component's `key` set to `value`, and that component's index.
    func withUnet(_ key: String, _ value: Any) throws -> ([String: Any], Int) {
        var m = try manifest()
        let i = unetIndex(m)
        var comps = m["components"] as! [[String: Any]]
        comps[i][key] = value
        m["components"] = comps
        return (m, i)
    }

    func testComponentPathWithDotDot() throws {
        let (m, i) = try withUnet("path", "onnx/../../outside/secret.onnx")
        assertRefused(try write(m), "manifest.components[\(i)].path must stay inside the bundle")
    }

    func testAbsolutePathInFiles() throws {
        var m = try manifest()
        var files = m["files"] as! [[String: Any]]
        files[0]["path"] = tmp.appendingPathComponent("outside/secret.onnx").path
        m["files"] = files
        assertRefused(try write(m), "manifest.files[0].path must be a relative POSIX path inside the bundle")
    }

    func testComponentWithAnUnknownKey() throws {
        let (m, i) = try withUnet("weights", "x")
        assertRefused(try write(m), "manifest.components[\(i)] has an unknown field 'weights'")
    }

    func testSymlinkedFilePointingOutside() throws {
        let m = try manifest()
        let b = try write(m)
        let secret = tmp.appendingPathComponent("outside/secret.onnx")
        try FileManager.default.createDirectory(at: secret.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("secret".utf8).write(to: secret)
        let first = b.appendingPathComponent((m["files"] as! [[String: Any]])[0]["path"] as! String)
        try FileManager.default.createDirectory(at: first.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: first.path, withDestinationPath: secret.path)
        assertRefused(b, "is a symlink that leaves the bundle")
    }

    func testValidJSONButNotAnObject() throws {
        let b = tmp.appendingPathComponent("list")
        try FileManager.default.createDirectory(at: b, withIntermediateDirectories: true)
        try Data("[1, 2, 3]".utf8).write(to: b.appendingPathComponent(MANIFEST))
        assertRefused(b, "bundle manifest: (the whole file) must be a JSON object, got list")
    }

    // MARK: signatures

    let rfcPublic = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    let rfcSignature = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0"
        + "595bbe24655141438e7a100b"

    func signed(_ message: Data, _ signatureHex: String?) throws -> URL {
        let b = tmp.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: b, withIntermediateDirectories: true)
        try message.write(to: b.appendingPathComponent(MANIFEST))
        if let signatureHex { try Data((signatureHex + "\n").utf8).write(to: b.appendingPathComponent(SIGNATURE_FILE)) }
        return b
    }

    func testSignatureAgainstRFC8032TestVector1() throws {
        let pubFile = tmp.appendingPathComponent("k.pub")
        try Data((rfcPublic + "\n").utf8).write(to: pubFile)
        let key = try loadPublicKey(pubFile)
        XCTAssertTrue(key.isValidSignature(hexBytes(rfcSignature)!, for: Data()))
        let b = try signed(Data(), rfcSignature)
        XCTAssertNoThrow(try verifySignature(Data(), signatureURL: b.appendingPathComponent(SIGNATURE_FILE), key: key, bundle: b))
        XCTAssertThrowsError(try verifySignature(Data("x".utf8), signatureURL: b.appendingPathComponent(SIGNATURE_FILE),
                                                 key: key, bundle: b)) {
            XCTAssertTrue(($0 as! PocketdiffError).message.contains("the manifest's signature does not verify with the trusted key"))
        }
    }

    func testTheSignedVectorInTheDocsAndTheLoadOrder() throws {
        let key = try publicKey(hex: rfcPublic)
        let message = Data("{\"format_version\": 1}\n".utf8)
        let sig = "3af43032353f1159147ac16798fc0d0a75b804a30cc39a31fbe5686b9aa672a59c381106cadd93842cd086f50066b6ccd138ef2b7db552ccf8853fc707766203"
        XCTAssertTrue(key.isValidSignature(hexBytes(sig)!, for: message))
        // the signature verifies before the bytes are parsed: the load then stops at the manifest's structure
        XCTAssertThrowsError(try PocketdiffBundle.load(try signed(message, sig), trustedKey: key)) {
            XCTAssertEqual(($0 as! PocketdiffError).message, "bundle manifest: manifest.model is missing")
        }
        XCTAssertThrowsError(try PocketdiffBundle.load(try signed(message, nil), trustedKey: key)) {
            XCTAssertTrue(($0 as! PocketdiffError).message.contains("is not signed (manifest.json.sig is missing) but a trusted key was given"))
        }
        var edited = message
        edited.append(contentsOf: Array(" ".utf8))
        XCTAssertThrowsError(try PocketdiffBundle.load(try signed(edited, sig), trustedKey: key)) {
            XCTAssertTrue(($0 as! PocketdiffError).message.contains("does not verify"))
        }
    }
}
