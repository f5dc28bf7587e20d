// Mirrors pocketdiff/runtime/signing.py (the verifying half; apps never sign): an Ed25519 signature over the exact
// bytes of manifest.json, stored beside it as manifest.json.sig (128 lowercase hex characters and a newline). A
// public key file holds the raw 32-byte key as 64 lowercase hex characters and a newline. CryptoKit's
// Curve25519.Signing.PublicKey verifies the same bytes Python's `cryptography` does.
import CryptoKit
import Foundation

public let SIGNATURE_FILE = "manifest.json.sig"

/// Lowercase hex -> bytes (nil unless every character is 0-9a-f and the length is even).
func hexBytes(_ text: String) -> Data? {
    let digits = Array(text.utf8)
    guard digits.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        default: return nil
        }
    }
    var out = Data(capacity: digits.count / 2)
    for i in stride(from: 0, to: digits.count, by: 2) {
        guard let hi = nibble(digits[i]), let lo = nibble(digits[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
    }
    return out
}

func hexFile(_ url: URL, _ nBytes: Int, _ what: String) throws -> Data {
    let text: String
    do {
        guard let t = String(data: try Data(contentsOf: url), encoding: .ascii) else {
            throw PocketdiffError("not ASCII")
        }
        text = t.trimmingCharacters(in: .whitespacesAndNewlines)
    } catch {
        throw PocketdiffError("cannot read \(what) \(url.path): \(error.localizedDescription)")
    }
    guard text.utf8.count == 2 * nBytes, !text.isEmpty, let bytes = hexBytes(text) else {
        throw PocketdiffError("\(what) \(url.path) must hold \(2 * nBytes) lowercase hex characters")
    }
    return bytes
}

public func loadPublicKey(_ url: URL) throws -> Curve25519.Signing.PublicKey {
    let raw = try hexFile(url, 32, "public key")
    do {
        return try Curve25519.Signing.PublicKey(rawRepresentation: raw)
    } catch {
        throw PocketdiffError("public key \(url.path) is not a valid Ed25519 key: \(error.localizedDescription)")
    }
}

/// A raw Ed25519 public key from its 64 hex characters.
public func publicKey(hex: String) throws -> Curve25519.Signing.PublicKey {
    guard hex.utf8.count == 64, let raw = hexBytes(hex) else {
        throw PocketdiffError("public key must hold 64 lowercase hex characters")
    }
    do {
        return try Curve25519.Signing.PublicKey(rawRepresentation: raw)
    } catch {
        throw PocketdiffError("public key is not a valid Ed25519 key: \(error.localizedDescription)")
    }
}

public func publicKeyHex(_ key: Curve25519.Signing.PublicKey) -> String {
    key.rawRepresentation.map { String(format: "%02x", $0) }.joined()
}

private func isRegularFileNotLink(_ url: URL) -> Bool {
    guard let type = (try? FileManager.default.attributesOfItem(atPath: url.path))?[.type] as? FileAttributeType
    else { return false }
    return type == .typeRegular
}

/// Fail closed: a missing or malformed signature, or one that does not match these bytes under `key`.
public func verifySignature(_ manifestBytes: Data, signatureURL: URL, key: Curve25519.Signing.PublicKey, bundle: URL) throws {
    if !isRegularFileNotLink(signatureURL) {
        throw PocketdiffError("bundle \(bundle.path) is not signed (\(SIGNATURE_FILE) is missing) but a trusted key was given")
    }
    let signature = try hexFile(signatureURL, 64, "signature")
    if !key.isValidSignature(signature, for: manifestBytes) {
        throw PocketdiffError("bundle \(bundle.path): the manifest's signature does not verify with the trusted key "
                              + "(signed by another key, or the manifest changed after signing)")
    }
}
