// Port of pocketdiff/runtime/manifest.py: a bundle manifest's structure and its paths, checked by hand before
// anything in it is used, with the same messages and field paths (manifest.components[2].role). The manifest is
// untrusted input: unknown keys are refused where the format is closed, and resolveInside confines a path to the
// bundle folder, following each symlink by reading the link (never stat'ing its target) before going on.
package pocketdiff.core

import pocketdiff.core.policies.BudgetSpec
import java.io.File
import java.nio.file.Files
import java.nio.file.Path

const val FORMAT_VERSION = 1L
val TARGETS = listOf("onnx", "coreml", "executorch")
val PRECISIONS = listOf("fp32", "fp16")
val QUANTIZATIONS = listOf(null, "int8", "palette6", "palette4")
private val TOP_KEYS = listOf("format_version" to true, "created_by" to false, "export" to false, "model" to true,
    "tokenizer" to true, "scheduler" to true, "defaults" to true, "sampler" to false, "step_budget" to false,
    "components" to true, "files" to true, "test_vectors" to false)  // key -> required
private val COMPONENT_KEYS = listOf("name" to true, "role" to true, "target" to true, "path" to true, "precision" to true,
    "quantization" to false, "inputs" to true, "outputs" to true, "parity" to false, "meta" to false)
private val FILE_KEYS = listOf("path" to true, "sha256" to true, "bytes" to true)
private val TENSOR_KEYS = listOf("name" to true, "shape" to true, "dtype" to true)
private val SHA256 = Regex("[0-9a-f]{64}")
const val MAX_SYMLINKS = 40

private fun fail(where: String, what: String) = PocketdiffError("bundle manifest: $where $what")

private fun keys(obj: Any?, spec: List<Pair<String, Boolean>>, where: String): Map<*, *> {
    if (obj !is Map<*, *>) throw fail(where, "must be an object, got ${typeName(obj)}")
    val unknown = obj.keys.map { it as String }.filter { k -> spec.none { it.first == k } }.sorted()
    if (unknown.isNotEmpty())
        throw fail(where, "has an unknown field ${pyRepr(unknown[0])}; allowed: ${spec.joinToString(", ") { it.first }}")
    val missing = spec.filter { (k, required) -> required && !obj.containsKey(k) }.map { it.first }
    if (missing.isNotEmpty()) throw fail("$where.${missing[0]}", "is missing")
    return obj
}

private fun checkInt(v: Any?, where: String, minimum: Long): Long {
    if (v !is Long || v < minimum) throw fail(where, "must be an integer >= $minimum, got ${pyRepr(v)}")
    return v
}

private fun checkStr(v: Any?, where: String): String {
    if (v !is String || v.isEmpty()) throw fail(where, "must be a non-empty string, got ${pyRepr(v)}")
    return v
}

private fun ints(v: Any?, where: String, n: Int) {
    if (v !is List<*> || v.size != n) throw fail(where, "must be a list of $n integers, got ${pyRepr(v)}")
    v.forEachIndexed { i, x -> checkInt(x, "$where[$i]", 1) }
}

private fun tensors(v: Any?, where: String) {
    if (v !is List<*>) throw fail(where, "must be a list, got ${typeName(v)}")
    v.forEachIndexed { i, t ->
        val w = "$where[$i]"
        val spec = keys(t, TENSOR_KEYS, w)
        checkStr(spec["name"], "$w.name")
        checkStr(spec["dtype"], "$w.dtype")
        val shape = spec["shape"]
        if (shape !is List<*> || !shape.all { d -> (d is Long && d >= 0) || d is String })
            throw fail("$w.shape", "must be a list of integers >= 0 or symbol strings, got ${pyRepr(shape)}")
    }
}

/** A path the manifest names: relative POSIX, inside the bundle by its letters alone. */
fun checkPath(rel: Any?, where: String): String {
    val r = checkStr(rel, where)
    if ('\\' in r || '\u0000' in r || r.startsWith("/") || Regex("[A-Za-z]:.*", RegexOption.DOT_MATCHES_ALL).matches(r))
        throw fail(where, "must be a relative POSIX path inside the bundle, got ${pyRepr(r)}")
    val parts = posixParts(r)
    if (r.split("/").any { it == ".." || it == "." } || "" in r.trimEnd('/').split("/") || parts.isEmpty())
        throw fail(where, "must stay inside the bundle (no '..', '.' or empty parts), got ${pyRepr(r)}")
    return r
}

/** ``PurePosixPath(p).parts`` of a relative path: empty and ``.`` parts dropped, ``..`` kept. */
private fun posixParts(p: String): List<String> = p.split("/").filter { it.isNotEmpty() && it != "." }

/** ``root / rel`` with every symlink on the way followed by reading the link and checked to stay inside ``root``
 * before anything is stat'ed there. ``rel`` has passed [checkPath]. */
fun resolveInside(root: File, rel: String, where: String): File {
    val base: Path = root.toPath().toAbsolutePath().normalize()
    val parts = ArrayList(posixParts(rel))
    val done = ArrayList<String>()
    var hops = 0
    while (parts.isNotEmpty()) {
        val part = parts.removeAt(0)
        if (part == "..") {
            if (done.isEmpty()) throw fail(where, "${pyRepr(rel)} leaves the bundle through a symlink")
            done.removeAt(done.size - 1)
            continue
        }
        var current = base
        for (d in done) current = current.resolve(d)
        current = current.resolve(part)
        if (Files.isSymbolicLink(current)) {  // lstat of a path already known to be inside the bundle
            hops++
            val target = Files.readSymbolicLink(current).toString()
            if (hops > MAX_SYMLINKS || target.startsWith("/"))
                throw fail(where, "${pyRepr(rel)} is a symlink that leaves the bundle (to ${pyRepr(target)})")
            parts.addAll(0, posixParts(target))  // relative to the link's folder
            continue
        }
        done.add(part)
    }
    var out = base
    for (d in done) out = out.resolve(d)
    return out.toFile()
}

/** Every field the runtime reads, with its type and range; returns ``m``. ``knownRoles``: the roles this runtime
 * can run (policies.runtimeRoles). ``m`` holds Python values ([py] of the parsed JSON). */
fun checkManifest(m: Any?, knownRoles: Set<String>): Map<*, *> {
    if (m !is Map<*, *>) throw fail("(the whole file)", "must be a JSON object, got ${typeName(m)}")
    keys(m, TOP_KEYS, "manifest")
    if (!pyEquals(m["format_version"], FORMAT_VERSION))
        throw PocketdiffError("bundle has manifest format_version ${pyRepr(m["format_version"])}; this pocketdiff reads " +
            "$FORMAT_VERSION")
    val model = keys(m["model"], listOf("image_size" to true, "latent_shape" to true, "latent_scale_factor" to true),
        "manifest.model")
    ints(model["image_size"], "manifest.model.image_size", 2)
    ints(model["latent_shape"], "manifest.model.latent_shape", 3)
    val lsf = model["latent_scale_factor"]
    if (!isFiniteNumber(lsf) || num(lsf) <= 0)
        throw fail("manifest.model.latent_scale_factor", "must be a number > 0, got ${pyRepr(lsf)}")
    val tok = keys(m["tokenizer"], listOf("vocab" to true, "merges" to true, "max_length" to true), "manifest.tokenizer")
    checkPath(tok["vocab"], "manifest.tokenizer.vocab")
    checkPath(tok["merges"], "manifest.tokenizer.merges")
    checkInt(tok["max_length"], "manifest.tokenizer.max_length", 2)
    val sched = keys(m["scheduler"], listOf("name" to true, "diffusers_class" to true, "config" to true, "timesteps" to true),
        "manifest.scheduler")
    checkStr(sched["name"], "manifest.scheduler.name")
    checkStr(sched["diffusers_class"], "manifest.scheduler.diffusers_class")
    if (sched["config"] !is Map<*, *>) throw fail("manifest.scheduler.config", "must be an object")
    val ts = sched["timesteps"]
    if (ts !is List<*> || !ts.all { isFiniteNumber(it) }) throw fail("manifest.scheduler.timesteps", "must be a list of numbers")
    val defaults = keys(m["defaults"], listOf("steps" to true, "guidance" to true), "manifest.defaults")
    checkInt(defaults["steps"], "manifest.defaults.steps", 1)
    val g = defaults["guidance"]
    if (!isFiniteNumber(g) || num(g) < 0) throw fail("manifest.defaults.guidance", "must be a number >= 0, got ${pyRepr(g)}")
    if (m.containsKey("sampler")) {
        val sampler = keys(m["sampler"], listOf("policy" to true, "params" to true), "manifest.sampler")
        checkStr(sampler["policy"], "manifest.sampler.policy")
        if (sampler["params"] !is Map<*, *>) throw fail("manifest.sampler.params", "must be an object")
    }
    if (m.containsKey("step_budget")) {  // BudgetFusion's step counts, metrics and presets (policies/Budget.kt)
        val sb = m["step_budget"] as? Map<*, *> ?: throw fail("manifest.step_budget", "must be an object")
        try {
            BudgetSpec.fromDict(sb)
        } catch (e: PocketdiffError) {
            throw fail("manifest.step_budget", "is invalid: ${e.message}")
        }
    }
    for (key in listOf("created_by", "export"))
        if (m.containsKey(key) && m[key] !is Map<*, *>) throw fail("manifest.$key", "must be an object")
    if (m["test_vectors"] != null) checkPath(m["test_vectors"], "manifest.test_vectors")
    val components = m["components"]
    if (components !is List<*> || components.isEmpty()) throw fail("manifest.components", "must be a non-empty list")
    components.forEachIndexed { i, comp ->
        val w = "manifest.components[$i]"
        val c = keys(comp, COMPONENT_KEYS, w)
        checkStr(c["name"], "$w.name")
        val role = c["role"]
        if (role !is String || role !in knownRoles)
            throw fail("$w.role", "is ${pyRepr(role)}, not a role this runtime knows; allowed: " +
                knownRoles.sorted().joinToString(", "))
        if (c["target"] !in TARGETS) throw fail("$w.target", "is ${pyRepr(c["target"])}; allowed: ${TARGETS.joinToString(", ")}")
        checkPath(c["path"], "$w.path")
        if (c["precision"] !in PRECISIONS)
            throw fail("$w.precision", "is ${pyRepr(c["precision"])}; allowed: ${PRECISIONS.joinToString(", ")}")
        if (c["quantization"] !in QUANTIZATIONS)
            throw fail("$w.quantization", "is ${pyRepr(c["quantization"])}; allowed: null, int8, palette6, palette4")
        tensors(c["inputs"], "$w.inputs")
        tensors(c["outputs"], "$w.outputs")
        for (key in listOf("parity", "meta"))
            if (c[key] != null && c[key] !is Map<*, *>) throw fail("$w.$key", "must be an object or null")
    }
    val files = m["files"] as? List<*> ?: throw fail("manifest.files", "must be a list")
    files.forEachIndexed { i, entry ->
        val w = "manifest.files[$i]"
        val f = keys(entry, FILE_KEYS, w)
        checkPath(f["path"], "$w.path")
        val sha = f["sha256"]
        if (sha !is String || !SHA256.matches(sha)) throw fail("$w.sha256", "must be 64 lowercase hex digits, got ${pyRepr(sha)}")
        checkInt(f["bytes"], "$w.bytes", 0)
    }
    return m
}
