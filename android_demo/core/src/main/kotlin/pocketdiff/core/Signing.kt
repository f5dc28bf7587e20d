// Port of pocketdiff/runtime/signing.py (the verifying half): Ed25519 over the exact bytes of manifest.json.
// The signature file manifest.json.sig holds 128 lowercase hex characters and a newline; a public key file the raw
// 32-byte key as 64 lowercase hex characters and a newline. Java's Signature "Ed25519" verifies, the raw key wrapped
// in its X.509 SubjectPublicKeyInfo (the fixed 12-byte prefix 302a300506032b6570032100).
package pocketdiff.core

import java.io.File
import java.security.KeyFactory
import java.security.Signature
import java.security.spec.X509EncodedKeySpec

const val SIGNATURE_FILE = "manifest.json.sig"
const val TRUSTED_KEY_ENV = "POCKETDIFF_TRUSTED_KEY"
private val HEX = Regex("[0-9a-f]+")
private val ED25519_SPKI_PREFIX = hexBytes("302a300506032b6570032100")

fun hexBytes(hex: String): ByteArray = ByteArray(hex.length / 2) { hex.substring(2 * it, 2 * it + 2).toInt(16).toByte() }
fun toHex(bytes: ByteArray): String = bytes.joinToString("") { "%02x".format(it.toInt() and 0xFF) }

private fun hexFile(path: File, nBytes: Int, what: String): ByteArray {
    val text: String
    try {
        val raw = path.readBytes()
        if (raw.any { it < 0 }) throw IllegalArgumentException("'ascii' codec can't decode the file")
        text = String(raw, Charsets.US_ASCII).trim()
    } catch (e: Exception) {
        throw PocketdiffError("cannot read $what $path: ${e.message}")
    }
    if (text.length != 2 * nBytes || !HEX.matches(text))
        throw PocketdiffError("$what $path must hold ${2 * nBytes} lowercase hex characters")
    return hexBytes(text)
}

/** The raw 32-byte Ed25519 public key of a public key file (64 lowercase hex characters). */
fun loadPublicKey(path: File): ByteArray = hexFile(path, 32, "public key")

/** Fail closed: a missing or malformed signature, or one that does not match these bytes under ``key``. */
fun verifySignature(manifestBytes: ByteArray, signaturePath: File, key: ByteArray, bundle: File) {
    if (!signaturePath.isFile || java.nio.file.Files.isSymbolicLink(signaturePath.toPath()))
        throw PocketdiffError("bundle $bundle is not signed ($SIGNATURE_FILE is missing) but a trusted key was given")
    val signature = hexFile(signaturePath, 64, "signature")
    if (key.size != 32) throw PocketdiffError("a trusted Ed25519 public key is 32 bytes, got ${key.size}")
    val ok = try {
        val pub = KeyFactory.getInstance("Ed25519").generatePublic(X509EncodedKeySpec(ED25519_SPKI_PREFIX + key))
        val verifier = Signature.getInstance("Ed25519")
        verifier.initVerify(pub)
        verifier.update(manifestBytes)
        verifier.verify(signature)
    } catch (e: java.security.GeneralSecurityException) {
        false  // a key or signature that is not a valid curve point does not verify
    }
    if (!ok)
        throw PocketdiffError("bundle $bundle: the manifest's signature does not verify with the trusted key (signed by " +
            "another key, or the manifest changed after signing)")
}

/** --trusted-key, else the POCKETDIFF_TRUSTED_KEY environment variable, else null. */
fun trustedKeyPath(given: String?): File? {
    val value = given?.takeIf { it.isNotEmpty() } ?: System.getenv(TRUSTED_KEY_ENV)?.takeIf { it.isNotEmpty() }
    return value?.let { File(it) }
}
