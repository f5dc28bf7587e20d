// The Kotlin port's runner of docs/ports.md (the same checks as pocketdiff/runtime/conformance.py):
//   conformance BUNDLE [--trusted-key FILE]  one JSON report on stdout; exit 0 when nothing failed, else 1
//   verify BUNDLE [--trusted-key FILE]       the load-time checks only: "ok" (exit 0) or "error: MESSAGE" (exit 2)
// The replay check runs RuntimePipeline.generate itself on ReplaySessions, which answer each call with the outputs
// the vectors recorded and check the feeds they are given: the loop under test is the loop the app runs.
package pocketdiff.core.tools

import com.google.gson.GsonBuilder
import pocketdiff.core.Bundle
import pocketdiff.core.PocketdiffError
import pocketdiff.core.RuntimePipeline
import pocketdiff.core.Session
import pocketdiff.core.Tensor
import pocketdiff.core.TensorSpec
import pocketdiff.core.formatG
import pocketdiff.core.initialLatents
import pocketdiff.core.loadPublicKey
import pocketdiff.core.num
import pocketdiff.core.parseJson
import pocketdiff.core.pyRepr
import pocketdiff.core.policies.BudgetSpec
import pocketdiff.core.policies.makePolicy
import pocketdiff.core.schedulerFromConfig
import pocketdiff.core.toJson
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.Base64
import kotlin.system.exitProcess

const val PASSED = "passed"
const val FAILED = "failed"
const val NOT_RUN = "not run"
const val ATOL = 1e-3  // replay feeds: recorded first values and mean |x|
const val RTOL = 1e-3
const val SCHEDULER_ATOL = 1e-4

/** A port's number differs from the vectors' (the check fails with this message). */
class Mismatch(message: String) : Exception(message)

/** A record without its whole tensor (too large to store): the check that needs it is not run. */
class NoData : Exception("a recorded output is too large to be stored whole")

private fun rec(v: Any?) = v as Map<*, *>
private fun list(v: Any?) = v as List<*>

/** A tensor record's whole tensor (base64 little-endian float32, row-major). */
fun decode(record: Map<*, *>): Tensor {
    val data = record["data"] as? String ?: throw NoData()
    val buf = ByteBuffer.wrap(Base64.getDecoder().decode(data)).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
    val out = FloatArray(buf.remaining()).also { buf.get(it) }
    return Tensor(list(record["shape"]).map { (it as Long).toInt() }.toIntArray(), out)
}

/** ``x`` against a record's shape (when it has one), first values and mean |x|. */
fun closeTo(x: Tensor, record: Map<*, *>, what: String, atol: Double = ATOL, rtol: Double = RTOL) {
    if (record.containsKey("shape")) {
        val want = list(record["shape"]).map { (it as Long).toInt() }
        if (x.shape.toList() != want) throw Mismatch("$what: shape ${x.shape.toList()}, vectors ${pyRepr(record["shape"])}")
    }
    val first = list(record["first_values"]).map { num(it) }
    var worst = 0.0
    var bad = first.size > x.size
    for (i in 0 until Math.min(first.size, x.size)) {
        val d = Math.abs(x.at(i) - first[i])
        worst = Math.max(worst, d)
        if (!(d <= atol + rtol * Math.abs(first[i]))) bad = true
    }
    if (bad) throw Mismatch("$what: first values differ by up to ${formatG(worst, 3)}")
    var sum = 0.0
    for (i in 0 until x.size) sum += Math.abs(x.at(i))
    val mean = if (x.size == 0) 0.0 else sum / x.size
    val want = num(record["mean_abs"])
    if (!(Math.abs(mean - want) <= atol + rtol * Math.abs(want)))
        throw Mismatch("$what: mean |x| ${formatG(mean)}, vectors ${formatG(want)}")
}

/** One role's session answering with the recorded outputs of the next recorded call (shared ``cursor``). */
class ReplaySession(val role: String, override val inputs: List<TensorSpec>, override val outputs: List<TensorSpec>,
                    private val calls: List<*>, private val cursor: IntArray) : Session {
    override val fixedBatch: Int? get() = null
    override val path: String get() = "replay:$role"

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        val i = cursor[0]
        if (i >= calls.size) throw Mismatch("call $i ($role): the vectors recorded only ${calls.size} calls")
        val r = rec(calls[i])
        if (r["role"] != role) throw Mismatch("call $i: the loop called $role, the vectors ${r["role"]}")
        val recorded = rec(r["inputs"])
        if (feeds.keys != recorded.keys)
            throw Mismatch("call $i ($role): feeds ${pyRepr(feeds.keys.sorted())}, vectors ${pyRepr(recorded.keys.map { it as String }.sorted())}")
        val first = inputs.firstOrNull()?.let { feeds[it.name] }
        val batch = if (first != null && first.rank > 0) first.shape[0].toLong() else 1L
        if (r["batch"] != null && r["batch"] != batch) throw Mismatch("call $i ($role): batch $batch, vectors ${r["batch"]}")
        for ((name, value) in feeds) closeTo(value, rec(recorded[name]), "call $i ($role) input $name")
        cursor[0]++
        return rec(r["outputs"]).entries.associate { (k, v) -> (k as String) to decode(rec(v)) }
    }
}

private fun checkTokenizer(bundle: Bundle, vectors: Map<*, *>): String {
    val tok = bundle.tokenizer()
    val tokens = list(vectors["tokens"])
    for (t in tokens.map { rec(it) }) {
        val got = tok(t["prompt"] as String, truncate = true).inputIds.map { it.toLong() }
        val want = list(t["input_ids"])
        if (got != want) throw Mismatch("${pyRepr(t["prompt"])}: ids ${pyRepr(got.take(12))}..., vectors ${pyRepr(want.take(12))}...")
    }
    return "${tokens.size} prompts"
}

private fun checkRng(vectors: Map<*, *>): String {
    val seeds = ArrayList<Long>()
    for (r in list(vectors["initial_latents"]).map { rec(it) }) {
        val seed = r["seed"] as Long
        val got = initialLatents(seed, list(r["shape"]).map { (it as Long).toInt() }.toIntArray()).f()
        val first = list(r["first_values"]).map { num(it) }
        val worst = first.indices.map { Math.abs(got[it] - first[it]) }.fold(0.0) { a, b -> Math.max(a, b) }
        if (!(worst <= 1e-6)) throw Mismatch("seed $seed: draws differ by ${formatG(worst, 3)}")
        seeds.add(seed)
    }
    return "seeds ${pyRepr(seeds)}"
}

private fun tsRepr(ts: DoubleArray): String =
    pyRepr(if (ts.all { it == Math.rint(it) }) ts.map { it.toLong() } else ts.toList())

private fun checkTimesteps(manifest: Map<*, *>, vectors: Map<*, *>): String {
    val sched = schedulerFromConfig(rec(manifest["scheduler"])["config"])
    val tv = rec(vectors["timesteps"])
    sched.setTimesteps((tv["steps"] as Long).toInt())
    val want = list(tv["values"]).map { num(it).toLong() }
    if (sched.timesteps.map { it.toLong() } != want) throw Mismatch("timesteps ${tsRepr(sched.timesteps)}, vectors ${pyRepr(tv["values"])}")
    return "${tv["steps"]} steps"
}

private fun checkScheduler(entry: Map<*, *>): String {
    val sched = schedulerFromConfig(entry["config"], entry["name"] as String)
    sched.setTimesteps((entry["steps"] as Long).toInt())
    val want = list(entry["timesteps"]).map { num(it) }
    if (want.size != sched.timesteps.size || want.indices.any { Math.abs(sched.timesteps[it] - want[it]) > 1e-8 + 1e-5 * Math.abs(want[it]) })
        throw Mismatch("timesteps ${tsRepr(sched.timesteps)}, vectors ${pyRepr(entry["timesteps"])}")
    val sigma = num(entry["init_noise_sigma"])
    if (Math.abs(sched.initNoiseSigma - sigma) > 1e-4 * Math.max(1.0, sigma))
        throw Mismatch("init_noise_sigma ${sched.initNoiseSigma}, vectors ${pyRepr(entry["init_noise_sigma"])}")
    val records = list(entry["records"]).map { rec(it) }
    for (r in records) {
        val index = (r["index"] as Long).toInt()
        val sample = decode(rec(r["sample"]))
        closeTo(sched.scaleModelInput(sample, index), rec(r["scaled_sample"]), "step $index scaled sample", SCHEDULER_ATOL, SCHEDULER_ATOL)
        val prev = sched.step(decode(rec(r["model_output"])), index, sample)
        closeTo(prev, rec(r["prev_sample"]), "step $index prev sample", SCHEDULER_ATOL, SCHEDULER_ATOL)
        val want2 = decode(rec(r["prev_sample"])).f(); val got = prev.f()
        val worst = got.indices.map { Math.abs(got[it] - want2[it]).toDouble() }.fold(0.0) { a, b -> Math.max(a, b) }
        if (got.size != want2.size || got.indices.any { Math.abs(got[it] - want2[it]) > SCHEDULER_ATOL + SCHEDULER_ATOL * Math.abs(want2[it]) })
            throw Mismatch("step $index: prev sample differs by ${formatG(worst, 3)}")
    }
    return "${records.size} steps"
}

private fun checkReplay(bundle: Bundle, vectors: Map<*, *>): String {
    val m = bundle.m
    val s = rec(vectors["sampler"]); val replay = rec(vectors["replay"])
    val calls = list(replay["calls"])
    if (calls.any { c -> rec(rec(c)["outputs"]).values.any { !rec(it).containsKey("data") } }) throw NoData()
    val target = if ("onnx" in bundle.targets) "onnx" else bundle.targets[0]  // the specs the app's sessions have
    val specs = LinkedHashMap<String, pocketdiff.core.Component>()
    for (c in bundle.components) if (c.target == target) specs[c.role] = c
    val cursor = intArrayOf(0)
    val sessions = specs.mapValues { (role, c) -> ReplaySession(role, c.inputs, c.outputs, calls, cursor) as Session }
    val policy = makePolicy(s["policy"], s["params"])
    val budget = (m["step_budget"] as Map<*, *>?)?.let { BudgetSpec.fromDict(it) }
    val model = rec(m["model"])
    @Suppress("UNCHECKED_CAST")
    val runtime = RuntimePipeline(bundle.tokenizer(), sessions, rec(m["scheduler"])["config"] as Map<String, Any?>,
        list(model["latent_shape"]).map { (it as Long).toInt() }.toIntArray(), num(model["latent_scale_factor"]), policy, budget)
    val latents = sortedMapOf<Int, Tensor>()
    val result = runtime.generate(s["prompt"] as String, s["steps"].toString(), num(s["guidance"]), s["seed"] as Long,
        onStep = { i, x -> latents[i] = x })
    val trace = result.trace.map { it.toMap(withTime = false) }
    if (trace != list(s["trace"]) || cursor[0] != calls.size) throw Mismatch("trace ${pyRepr(trace)}, vectors ${pyRepr(s["trace"])}")
    val tol = num(s["tolerance"])
    closeTo(latents.getValue(0), rec(s["latent_after_step_1"]), "latent after step 1", tol, 0.0)
    closeTo(latents.getValue(latents.lastKey()), rec(s["latent_after_last_step"]), "latent after the last step", tol, 0.0)
    val image = rec(replay["image"])
    val want = Base64.getDecoder().decode(image["data"] as String)
    val shape = list(image["shape"]).map { (it as Long).toInt() }
    if (shape != listOf(result.height, result.width, 3) || want.size != result.image.size)
        throw Mismatch("image shape ${listOf(result.height, result.width, 3)}, vectors $shape")
    val diff = want.indices.map { Math.abs((want[it].toInt() and 0xFF) - (result.image[it].toInt() and 0xFF)) }.fold(0) { a, b -> Math.max(a, b) }
    if (diff > 1) throw Mismatch("image differs by $diff/255")
    return "${trace.size} calls, image max diff $diff/255"
}

private fun round9(m: Map<*, *>) = m.entries.associate { (k, v) -> k to Math.round(num(v) * 1e9) / 1e9 }

private fun checkStepBudget(bundle: Bundle, vectors: Map<*, *>): String {
    val spec = BudgetSpec.fromDict(rec(bundle.m["step_budget"]))
    val entries = list(vectors["step_budget"]).map { rec(it) }
    for (v in entries) {
        val targets = spec.targets("auto")
        if (round9(targets) != round9(rec(v["targets"])))
            throw Mismatch("${pyRepr(v["prompt"])}: targets ${pyRepr(targets)}, vectors ${pyRepr(v["targets"])}")
        val quality = list(v["quality"]).map { row -> list(row).map { num(it) }.toDoubleArray() }
        val steps = spec.choose(quality, targets)
        if (steps.toLong() != v["steps"]) throw Mismatch("${pyRepr(v["prompt"])}: $steps steps, vectors ${v["steps"]}")
    }
    return "${entries.size} prompts"
}

private fun status(status: String, detail: String) = linkedMapOf("status" to status, "detail" to detail)

private fun check(checks: MutableMap<String, Any?>, name: String, fn: () -> String) {
    checks[name] = try {
        status(PASSED, fn())
    } catch (e: NoData) {
        status(NOT_RUN, e.message!!)
    } catch (e: Mismatch) {
        status(FAILED, e.message ?: "")
    } catch (e: PocketdiffError) {
        status(FAILED, e.message ?: "")
    } catch (e: Exception) {  // a crash of the port is a failure too, named
        status(FAILED, "${e.javaClass.simpleName}: ${e.message}")
    }
}

/** Every check of docs/ports.md on the bundle at ``path``: {"port": "kotlin", "bundle", "checks"}. */
fun runChecks(path: String, trustedKey: String? = null): Map<String, Any?> {
    val checks = LinkedHashMap<String, Any?>()
    val report = linkedMapOf<String, Any?>("port" to "kotlin", "bundle" to path, "checks" to checks)
    val key = trustedKey?.let { loadPublicKey(File(it)) }
    val bundle = try {
        Bundle.load(File(path), key)
    } catch (e: PocketdiffError) {
        checks["manifest"] = status(FAILED, e.message ?: "")
        return report
    }
    checks["manifest"] = status(PASSED, "${list(bundle.m["files"]).size} files verified")
    checks["signature"] = if (key != null) status(PASSED, "Ed25519 over manifest.json") else status(NOT_RUN, "no trusted key given")
    val rel = bundle.m["test_vectors"] as? String ?: "test_vectors.json"
    val vectors = rec(parseJson(bundle.file(rel).readText()))
    check(checks, "tokenizer") { checkTokenizer(bundle, vectors) }
    check(checks, "rng") { checkRng(vectors) }
    check(checks, "timesteps") { checkTimesteps(bundle.m, vectors) }
    for (entry in (vectors["schedulers"] as List<*>? ?: listOf<Any?>()).map { rec(it) })
        check(checks, "scheduler:${entry["name"]}") { checkScheduler(entry) }
    val name = "policy:${rec(vectors["sampler"])["policy"]}"
    if (!vectors.containsKey("replay")) checks[name] = status(NOT_RUN, "the vectors have no replay (written before the format had one)")
    else check(checks, name) { checkReplay(bundle, vectors) }
    if (vectors.containsKey("step_budget")) check(checks, "step_budget") { checkStepBudget(bundle, vectors) }
    else checks["step_budget"] = status(NOT_RUN, "the bundle has no step-budget predictor")
    return report
}

private const val USAGE = "usage: conformance|verify BUNDLE [--trusted-key FILE]"

fun main(args: Array<String>) {
    val rest = args.toMutableList()
    var keyFile: String? = null
    val k = rest.indexOf("--trusted-key")
    if (k >= 0) {
        if (k + 1 >= rest.size) { System.err.println(USAGE); exitProcess(2) }
        keyFile = rest[k + 1]; rest.removeAt(k + 1); rest.removeAt(k)
    }
    if (rest.size != 2 || rest[0] !in setOf("conformance", "verify")) { System.err.println(USAGE); exitProcess(2) }
    val (verb, bundle) = rest
    try {
        if (verb == "verify") {
            Bundle.load(File(bundle), keyFile?.let { loadPublicKey(File(it)) })
            println("ok")
            exitProcess(0)
        }
        val report = runChecks(bundle, keyFile)
        println(GsonBuilder().setPrettyPrinting().disableHtmlEscaping().serializeNulls().create().toJson(toJson(report)))
        @Suppress("UNCHECKED_CAST")
        val failed = (report["checks"] as Map<String, Map<String, String>>).values.any { it["status"] == FAILED }
        exitProcess(if (failed) 1 else 0)
    } catch (e: PocketdiffError) {
        System.err.println("error: ${e.message?.replace("\n", " ")}")
        exitProcess(2)
    }
}
