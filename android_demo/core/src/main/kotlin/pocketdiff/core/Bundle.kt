// Port of pocketdiff/runtime/bundle.py: read an app bundle, everything checked first. Bundle.load fails closed,
// in this order, before any model loads: (1) manifest.json read as bytes (a symlinked manifest is refused);
// (2) with a trusted Ed25519 key, its signature over those exact bytes (Signing.kt); (3) its structure
// (Manifest.kt); (4) every path it names stays inside the bundle, symlinks included; (5) every component is
// covered by the checksums and every listed file has its size and sha256. Every failure is one PocketdiffError.
package pocketdiff.core

import com.google.gson.JsonObject
import pocketdiff.core.policies.runtimeRoles
import java.io.File
import java.nio.ByteBuffer
import java.nio.file.Files
import java.security.MessageDigest

const val MANIFEST = "manifest.json"

class Component(val name: String, val role: String, val target: String, val path: String, val precision: String,
                val inputs: List<TensorSpec>, val outputs: List<TensorSpec>, val quantization: String? = null,
                val meta: Map<*, *>? = null)

fun sha256File(f: File): String {
    val h = MessageDigest.getInstance("SHA-256")
    f.inputStream().use { s ->
        val buf = ByteArray(1 shl 20)
        while (true) { val n = s.read(buf); if (n < 0) break; h.update(buf, 0, n) }
    }
    return toHex(h.digest())
}

/** Every listed file: a regular file inside the bundle, of its size and sha256. */
fun verifyFiles(root: File, files: List<*>) {
    files.forEachIndexed { i, e ->
        val entry = e as Map<*, *>
        val rel = entry["path"] as String
        val f = resolveInside(root, rel, "manifest.files[$i].path")
        if (!f.isFile) throw PocketdiffError("bundle file $rel is missing from $root")
        if (f.length() != entry["bytes"] as Long)
            throw PocketdiffError("bundle file $rel is truncated or altered: ${f.length()} bytes, manifest says ${entry["bytes"]}")
        if (sha256File(f) != entry["sha256"])
            throw PocketdiffError("bundle file $rel fails its sha256 check (tampered or corrupt)")
    }
}

class Bundle private constructor(
    val path: File,
    /** The manifest as parsed JSON (checked by checkManifest). */
    val manifest: JsonObject,
    /** The same manifest as Python values (Long/Double/String/Boolean/List/Map), as the runtime reads it. */
    val m: Map<*, *>,
    val components: List<Component>,
    /** The trusted public key (hex) the manifest verified with, if any. */
    val signedBy: String?
) {
    companion object {
        /** Read and check a bundle (file comment); ``verify`` also hashes every file. ``trustedKey``: a raw 32-byte
         * Ed25519 public key ([loadPublicKey]); with one, an unsigned or foreign-signed bundle is refused. */
        fun load(dir: File, trustedKey: ByteArray? = null, verify: Boolean = true): Bundle {
            val manifestFile = File(dir, MANIFEST)
            if (Files.isSymbolicLink(manifestFile.toPath()) || !manifestFile.isFile)
                throw PocketdiffError(if (dir.isDirectory) "bundle $dir has no $MANIFEST" else "bundle $dir does not exist")
            val raw = manifestFile.readBytes()
            if (trustedKey != null) verifySignature(raw, File(dir, SIGNATURE_FILE), trustedKey, dir)  // before parsing
            val json = try {
                parseJson(Charsets.UTF_8.newDecoder().decode(ByteBuffer.wrap(raw)).toString())
            } catch (e: Exception) {
                throw PocketdiffError("bundle manifest $manifestFile is not valid JSON: ${e.message}")
            }
            val m = checkManifest(json, runtimeRoles())
            val files = m["files"] as List<*>
            val comps = m["components"] as List<*>
            val tok = m["tokenizer"] as Map<*, *>
            val named = ArrayList<Pair<String, String>>()
            files.forEachIndexed { i, e -> named.add("manifest.files[$i].path" to ((e as Map<*, *>)["path"] as String)) }
            comps.forEachIndexed { i, c -> named.add("manifest.components[$i].path" to ((c as Map<*, *>)["path"] as String)) }
            for (k in listOf("vocab", "merges")) named.add("manifest.tokenizer.$k" to (tok[k] as String))
            (m["test_vectors"] as? String)?.takeIf { it.isNotEmpty() }?.let { named.add("manifest.test_vectors" to it) }
            for ((where, rel) in named) resolveInside(dir, rel, where)
            val listed = files.map { (it as Map<*, *>)["path"] as String }.toSet()
            val components = comps.map { c ->
                c as Map<*, *>
                Component(c["name"] as String, c["role"] as String, c["target"] as String, c["path"] as String,
                    c["precision"] as String, (c["inputs"] as List<*>).map { TensorSpec.fromPy(it as Map<*, *>) },
                    (c["outputs"] as List<*>).map { TensorSpec.fromPy(it as Map<*, *>) }, c["quantization"] as String?,
                    c["meta"] as Map<*, *>?)
            }
            for (c in components) {
                if (c.path !in listed && listed.none { it.startsWith(c.path.trimEnd('/') + "/") })
                    throw PocketdiffError("bundle component ${c.name} (${c.path}) is not covered by the manifest's checksums")
            }
            if (verify) verifyFiles(dir, files)
            return Bundle(dir, toJson(m).asJsonObject, m, components, trustedKey?.let { toHex(it) })
        }
    }

    fun component(role: String, target: String): Component {
        components.firstOrNull { it.role == role && it.target == target }?.let { return it }
        val have = components.map { "${it.role}/${it.target}" }.toSortedSet()
        throw PocketdiffError("bundle $path has no $role for target ${pyRepr(target)}; it has: ${have.joinToString(", ")}")
    }

    val targets: List<String> get() = components.map { it.target }.toSortedSet().toList()

    /** A path the manifest names, resolved inside the bundle (the manifest's paths were all checked). */
    fun file(rel: String): File = resolveInside(path, rel, rel)

    /** The tokenizer from the files the manifest names (and the special-tokens map beside the vocab, if listed). */
    fun tokenizer(): CLIPBPETokenizer {
        val t = m["tokenizer"] as Map<*, *>
        val vocab = t["vocab"] as String
        val special = (vocab.split("/").filter { it.isNotEmpty() && it != "." }.dropLast(1) + "special_tokens_map.json")
            .joinToString("/")
        val listed = (m["files"] as List<*>).map { (it as Map<*, *>)["path"] }.toSet()
        return CLIPBPETokenizer.fromFiles(file(vocab), file(t["merges"] as String), if (special in listed) file(special) else null)
    }
}
