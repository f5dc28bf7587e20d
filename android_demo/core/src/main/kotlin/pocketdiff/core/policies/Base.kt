// Port of pocketdiff/runtime/policies/base.py: the step-policy interface the one sampler loop asks.
// Per generation the loop encodes the texts the policy names (texts), calls begin once, then at every step hands
// the policy the scheduler-scaled latent and takes back the scheduler's model output (step). The policy calls
// roles through Denoise.call (timed and traced by the loop) and keeps what carries over in its state.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Session
import pocketdiff.core.Tensor
import pocketdiff.core.pyRepr
import pocketdiff.core.zip

const val UNET = "unet"

/** One session call: the denoising step it belongs to (null: before or after the loop), role, batch, wall time. */
class Call(val step: Int?, val role: String, val batch: Int, val ms: Double) {
    fun toMap(withTime: Boolean = true): Map<String, Any?> {
        val d = linkedMapOf<String, Any?>("step" to step?.toLong(), "role" to role, "batch" to batch.toLong())
        if (withTime) d["ms"] = Math.round(ms * 10000.0) / 10000.0
        return d
    }

    override fun toString() = "Call(step=$step, role=$role, batch=$batch)"
}

/** What a policy sees of the generation in progress. */
class Denoise(
    val hidden: Tensor,  // [len(texts), 77, D]: the texts policy.texts() named, encoded in that order
    val guidance: Double,
    val timesteps: DoubleArray,  // the scheduler's, for this generation
    val sessions: Map<String, Session>,
    val call: (String, Map<String, Tensor>) -> Map<String, Tensor>  // (role, feeds) -> outputs, timed and traced
)

/** The UNet's inputs: sample [B,C,h,w], timestep [] float32, states [B,77,D], and any extra. */
fun unetFeeds(sample: Tensor, t: Double, hidden: Tensor, extra: Map<String, Tensor> = emptyMap()): Map<String, Tensor> {
    val feeds = linkedMapOf("sample" to sample, "timestep" to Tensor.scalar(t.toFloat()), "encoder_hidden_states" to hidden)
    feeds.putAll(extra)
    return feeds
}

/** [2, ...] outputs on ``[negative, prompt]`` -> ``out_u + w (out_c - out_u)`` [1, ...] (float32 w). */
fun cfgCombine(out: Tensor, guidance: Double): Tensor {
    val u = out.rows(0, 1); val c = out.rows(1, 2); val w = guidance.toFloat()
    return zip(u, c) { a, b -> a + w * (b - a) }
}

/** Sample doubled along the batch (np.concatenate([x, x])). */
fun doubled(sample: Tensor): Tensor = Tensor.concat(listOf(sample, sample))

/** A param's type (Python's isinstance on the JSON value) and default. */
class Param(val kind: String, val default: Any?) {
    fun accepts(v: Any?): Boolean = when (kind) {
        "int" -> v is Long; "float" -> v is Double; "bool" -> v is Boolean; "str" -> v is String
        "list" -> v is List<*>; "dict" -> v is Map<*, *>; else -> true
    }
}

/** Base of every step policy: ``name``, ``paramSpecs`` (param -> type and default), [step]. ``dataDependent``:
 * whether the calls it makes depend on the values. Params are JSON values as Python's json gives them. */
abstract class StepPolicy(params: Map<String, Any?>?, val name: String, paramSpecs: List<Pair<String, Param>> = listOf()) {
    val params = LinkedHashMap<String, Any?>()
    open val dataDependent: Boolean get() = false

    init {
        val given = params ?: emptyMap()
        val unknown = given.keys.filter { k -> paramSpecs.none { it.first == k } }.sorted()
        if (unknown.isNotEmpty()) {
            val allowed = paramSpecs.joinToString(", ") { it.first }.ifEmpty { "none" }
            throw PocketdiffError("sampler policy ${pyRepr(name)} has no param ${pyRepr(unknown[0])}; allowed: $allowed")
        }
        for ((key, spec) in paramSpecs) {
            val value = if (given.containsKey(key)) given[key] else spec.default
            if (!spec.accepts(value))
                throw PocketdiffError("sampler policy ${pyRepr(name)}: param $key must be ${spec.kind}, got ${pyRepr(value)}")
            this.params[key] = value
        }
        @Suppress("LeakingThis") validate()
    }

    /** Check the params beyond their types (throw PocketdiffError). Runs in the base constructor. */
    open fun validate() {}

    /** The roles this instance calls in the loop (the loop adds the text encoder and the decoder). */
    abstract fun roles(): List<String>

    /** The one step count this policy runs (a per-step schedule's length), or null: any. */
    open fun fixedSteps(): Int? = null

    /** Which texts to encode, in batch order: "negative" and/or "prompt". */
    open fun texts(guidance: Double): List<String> = listOf("prompt")

    /** Refuse, before any model runs, a generation these sessions cannot serve. */
    open fun check(sessions: Map<String, Session>, guidance: Double) {}

    /** The state carried from step to step (a map the policy owns). */
    open fun begin(run: Denoise): MutableMap<String, Any?> = LinkedHashMap()

    /** The scheduler's model output [1,C,h,w] for step i at timestep t, from the scaled latent [1,C,h,w]. */
    abstract fun step(run: Denoise, i: Int, t: Double, sample: Tensor, state: MutableMap<String, Any?>): Tensor

    /** The manifest's ``sampler`` entry. */
    fun toMap(): Map<String, Any?> = linkedMapOf("policy" to name, "params" to LinkedHashMap(params))
}
