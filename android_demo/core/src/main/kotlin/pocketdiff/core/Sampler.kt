// Port of pocketdiff/runtime/sampler.py: the one loop. tokenize -> text encoder (one batch-1 call per text the policy
// names) -> [steps "auto": the step_budget predictor picks the steps] -> initial latents * init_noise_sigma -> for
// each step i at timestep t: x = scheduler.step(policy.step(i, t, scheduler.scaleModelInput(x, i)), i, x) -> VAE
// decode -> uint8 HWC. Every session call is timed and traced (step, role, batch, ms). The progress callback
// (done, total) may return false to cancel: the loop stops at once and throws Cancelled; nothing is decoded.
package pocketdiff.core

import pocketdiff.core.policies.BudgetRecord
import pocketdiff.core.policies.BudgetSpec
import pocketdiff.core.policies.Call
import pocketdiff.core.policies.Denoise
import pocketdiff.core.policies.STEP_BUDGET
import pocketdiff.core.policies.StepPolicy
import pocketdiff.core.policies.defaultPolicyName
import pocketdiff.core.policies.isAuto
import pocketdiff.core.policies.makePolicy
import pocketdiff.core.policies.predictSteps
import java.io.File

const val TEXT_ENCODER = "text_encoder"
const val VAE_DECODER = "vae_decoder"

/** The progress callback returned false; the generation was abandoned and nothing was returned. */
class Cancelled(message: String) : Exception(message)

class GenerationResult(
    val image: ByteArray,  // [height, width, 3] uint8, row-major
    val height: Int,
    val width: Int,
    val timings: Map<String, Double>,  // seconds per stage
    val trace: List<Call>,  // every session call, in order
    val steps: Int,  // denoising steps run
    val tokens: TokenizerOutput? = null,
    val budget: BudgetRecord? = null  // steps "auto": the request, targets, predicted curve and the steps chosen
) {
    /** role -> number of calls. */
    fun callCounts(): Map<String, Int> = trace.groupingBy { it.role }.eachCount()
}

/** The user-facing limits shared by every generation path. */
fun checkGenerationArgs(steps: Int, guidance: Double) {
    if (steps < 1) throw PocketdiffError("steps must be an integer >= 1, got $steps")
    if (guidance.isNaN() || guidance.isInfinite() || guidance < 0)
        throw PocketdiffError("guidance must be a finite number >= 0, got ${pyFloat(guidance)}")
}

/** VAE output [1, 3, H, W] in [-1, 1] -> [H, W, 3] uint8, exactly as diffusers post-processes. */
fun toUint8(decoded: Tensor): ByteArray {
    val c = decoded.shape[1]; val h = decoded.shape[2]; val w = decoded.shape[3]
    val v = decoded.f()
    val out = ByteArray(h * w * c)
    for (ch in 0 until c) for (y in 0 until h) for (x in 0 until w) {
        val p = Math.min(Math.max(v[(ch * h + y) * w + x] / 2f + 0.5f, 0f), 1f)
        out[(y * w + x) * c + ch] = if (p.isNaN()) 0 else Math.rint((p * 255f).toDouble()).toInt().toByte()
    }
    return out
}

/** A manifest's sampler entry as a policy; without one, the policy its UNet implies (defaultPolicyName). */
fun policyFor(sampler: Map<*, *>?, unetInputNames: List<String>): StepPolicy =
    if (sampler == null) makePolicy(defaultPolicyName(unetInputNames)) else makePolicy(sampler["policy"], sampler["params"])

/** Text-to-image over sessions (one per role) and a step policy. */
class RuntimePipeline(
    val tokenizer: CLIPBPETokenizer,
    sessions: Map<String, Session>,
    val schedulerConfig: Map<String, Any?>,
    latentShape: IntArray,
    scalingFactor: Double,
    val policy: StepPolicy,
    budget: BudgetSpec? = null
) {
    val sessions: Map<String, Session> = LinkedHashMap(sessions)
    val latentShape: IntArray = latentShape.copyOf()
    val scalingFactor: Float = scalingFactor.toFloat()
    val budget: BudgetSpec? = if (budget != null && STEP_BUDGET in sessions) budget else null

    init {
        val missing = (listOf(TEXT_ENCODER) + policy.roles() + VAE_DECODER).filter { it !in sessions }
        if (missing.isNotEmpty())
            throw PocketdiffError("sampler policy ${pyRepr(policy.name)} needs roles ${missing.joinToString(", ")}; the " +
                "sessions given are: ${sessions.keys.joinToString(", ")}")
    }

    companion object {
        /** The bundle's components for ``target``, each opened by ``open`` (the app's backend). The bundle was loaded
         * (and verified) by Bundle.load; ``policy`` replaces the manifest's. */
        fun fromBundle(bundle: Bundle, target: String, open: (Component, File) -> Session,
                       policy: StepPolicy? = null): RuntimePipeline {
            val m = bundle.m
            val sched = m["scheduler"] as Map<*, *>
            schedulerFromConfig(sched["config"])  // a bad scheduler config fails before any session opens
            val unet = bundle.component("unet", target)
            val pol = policy ?: policyFor(m["sampler"] as Map<*, *>?, unet.inputs.map { it.name })
            val budget = (m["step_budget"] as Map<*, *>?)?.let { BudgetSpec.fromDict(it) }
            val extra = if (budget != null && bundle.components.any { it.role == STEP_BUDGET && it.target == target })
                listOf(STEP_BUDGET) else listOf()
            val sessions = LinkedHashMap<String, Session>()
            for (role in listOf(TEXT_ENCODER) + pol.roles() + extra + VAE_DECODER) {
                val c = bundle.component(role, target)
                sessions[role] = open(c, bundle.file(c.path))
            }
            val model = m["model"] as Map<*, *>
            @Suppress("UNCHECKED_CAST")
            return RuntimePipeline(bundle.tokenizer(), sessions, sched["config"] as Map<String, Any?>,
                (model["latent_shape"] as List<*>).map { (it as Long).toInt() }.toIntArray(),
                num(model["latent_scale_factor"]), pol, budget)
        }
    }

    /** The same pipeline on other sessions (e.g. ShapeSessions for a dry run). */
    fun withSessions(sessions: Map<String, Session>, policy: StepPolicy? = null) = RuntimePipeline(tokenizer, sessions,
        schedulerConfig, latentShape, scalingFactor.toDouble(), policy ?: this.policy, budget)

    /** Refuse a step request this pipeline cannot serve before any model runs; returns the count, or null: auto. */
    fun checkSteps(steps: String): Int? {
        if (!isAuto(steps)) {
            val n = steps.trim().toIntOrNull() ?: throw PocketdiffError(
                "steps must be an integer >= 1 or 'auto[:PRESET|METRIC=VALUE,...]', got ${pyRepr(steps)}")
            checkGenerationArgs(n, 0.0)
            return n
        }
        val b = budget ?: throw PocketdiffError("steps ${pyRepr(steps)} needs a bundle with a step-budget predictor (role " +
            "$STEP_BUDGET, from pocketdiff budget-train); this one has none: give --steps N")
        if (policy.fixedSteps() != null)
            throw PocketdiffError("sampler policy ${pyRepr(policy.name)} runs ${policy.fixedSteps()} steps only; steps " +
                "${pyRepr(steps)} cannot change them")
        b.targets(steps)
        return null
    }

    /** One image. ``steps``: a count ("4") or "auto[:PRESET|METRIC=VALUE,...]". ``onStep(i, x)`` sees the latent
     * after each step; ``callback(done, total)`` returning false cancels (throws Cancelled). */
    fun generate(prompt: String, steps: String, guidance: Float, seed: Long, negativePrompt: String = "",
                 callback: ((Int, Int) -> Boolean)? = null, onStep: ((Int, Tensor) -> Unit)? = null): GenerationResult =
        generate(prompt, steps, guidance.toDouble(), seed, negativePrompt, callback, onStep)

    fun generate(prompt: String, steps: String, guidance: Double, seed: Long, negativePrompt: String = "",
                 callback: ((Int, Int) -> Boolean)? = null, onStep: ((Int, Tensor) -> Unit)? = null,
                 scheduler: String? = null, truncate: Boolean = false): GenerationResult {
        var count = checkSteps(steps)
        checkGenerationArgs(1, guidance)
        checkSeed(seed)
        val sched = schedulerFromConfig(schedulerConfig, scheduler)
        policy.check(sessions, guidance)
        val trace = ArrayList<Call>()
        var at: Int? = null  // the step the next call belongs to
        val call = { role: String, feeds: Map<String, Tensor> ->
            val session = sessions.getValue(role)
            val first = session.inputs.firstOrNull()?.let { feeds[it.name] }
            val batch = if (first != null && first.rank > 0) first.shape[0] else 1
            val t = System.nanoTime()
            val out = session.run(feeds)
            trace.add(Call(at, role, batch, (System.nanoTime() - t) / 1e6))
            out
        }
        val t0 = System.nanoTime()
        val tokens = tokenizer(prompt, truncate = truncate)
        val texts = policy.texts(guidance)
        val ids = texts.map { if (it == "prompt") tokens.inputIds else tokenizer(negativePrompt, truncate = true).inputIds }
        val t1 = System.nanoTime()
        val hidden = Tensor.concat(ids.map { row ->
            call(TEXT_ENCODER, mapOf("input_ids" to Tensor(intArrayOf(1, row.size), longs = LongArray(row.size) { row[it].toLong() })))
                .getValue("last_hidden_state")
        })
        val t2 = System.nanoTime()
        var budget: BudgetRecord? = null
        if (count == null) {  // the prompt's own states, whatever else the policy encoded
            val row = texts.indexOf("prompt")
            budget = predictSteps(call, this.budget!!, hidden.rows(row, row + 1), steps)
            count = budget.steps
        }
        val tBudget = System.nanoTime()
        sched.setTimesteps(count)
        val sigma = sched.initNoiseSigma
        var x = initialLatents(seed, intArrayOf(1) + latentShape).map { it * sigma }
        val run = Denoise(hidden, guidance, sched.timesteps, sessions, call)
        val state = policy.begin(run)
        val n = sched.timesteps.size
        for (i in 0 until n) {
            at = i
            x = sched.step(policy.step(run, i, sched.timesteps[i], sched.scaleModelInput(x, i), state), i, x)
            onStep?.invoke(i, x)
            if (callback != null && !callback(i + 1, n)) throw Cancelled("generation cancelled after step ${i + 1} of $n")
        }
        at = null
        val t3 = System.nanoTime()
        val sf = scalingFactor
        val decoded = call(VAE_DECODER, mapOf("latent_sample" to x.map { it / sf })).getValue("sample")
        val image = toUint8(decoded)
        val t4 = System.nanoTime()
        val timings = linkedMapOf("tokenize_s" to (t1 - t0) / 1e9, "text_encoder_s" to (t2 - t1) / 1e9)
        if (budget != null) timings["step_budget_s"] = (tBudget - t2) / 1e9
        timings["unet_s"] = (t3 - tBudget) / 1e9
        timings["decoder_s"] = (t4 - t3) / 1e9
        timings["total_s"] = (t4 - t0) / 1e9
        return GenerationResult(image, decoded.shape[2], decoded.shape[3], timings, trace, n, tokens, budget)
    }
}
