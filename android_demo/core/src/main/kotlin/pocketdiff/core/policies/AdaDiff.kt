// Port of pocketdiff/runtime/policies/adadiff.py: run the UNet segment by segment and stop at the first exit head
// confident enough (AdaDiff). unet_seg_in, then unet_seg_l{L} for L = n-2 .. 0 (the last ending in out_sample), and
// exit heads unet_exit_l{L} (out_sample, uncertainty [B]); between them hidden / hidden_out, temb, skips_l{L}.
// Under two-pass CFG the step exits when the larger of the two halves' uncertainties is below the threshold.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Tensor
import pocketdiff.core.pyFloat
import pocketdiff.core.pyRepr

const val MAX_LEVELS = 5  // resolution levels of the UNets the segment roles are registered for (SD1.5 has 4)
const val SEG_IN = "unet_seg_in"
const val HIDDEN = "hidden"
const val HIDDEN_OUT = "hidden_out"
const val TEMB = "temb"
const val UNCERTAINTY = "uncertainty"

fun segRole(level: Int) = "unet_seg_l$level"
fun exitRole(level: Int) = "unet_exit_l$level"
fun skipsName(level: Int) = "skips_l$level"

val SEG_ROLES: List<String> = (0 until MAX_LEVELS - 1).map { segRole(it) }
val EXIT_ROLES: List<String> = (1 until MAX_LEVELS).map { exitRole(it) }

/** Per step, the level it stopped at (0: the full UNet ran), read from a generation's call trace. */
fun exitLevels(trace: List<Call>, steps: Int): List<Int> = (0 until steps).map { i ->
    val roles = trace.filter { it.step == i }.map { it.role }
    if (segRole(0) in roles || roles.isEmpty()) 0
    else roles.filter { it.startsWith("unet_exit_l") }.last().removePrefix("unet_exit_l").toInt()
}

class AdaDiffPolicy(params: Map<String, Any?>? = null) : GuidedPolicy(params, NAME, listOf(
    "levels" to Param("int", 3L), "exits" to Param("list", listOf<Any?>(1L)), "threshold" to Param("float", 0.0),
    "calibration" to Param("dict", mapOf<String, Any?>()))) {
    companion object {
        const val NAME = "adadiff"
        val ROLES = listOf(SEG_IN) + SEG_ROLES + EXIT_ROLES
    }

    override val dataDependent: Boolean get() = true

    override fun validate() {
        val n = params["levels"] as Long
        val exits = params["exits"] as List<*>
        val tau = params["threshold"] as Double
        if (n < 2 || n > MAX_LEVELS) throw PocketdiffError("sampler policy 'adadiff': levels must be in [2, $MAX_LEVELS], got $n")
        if (exits.isEmpty() || exits.any { it !is Long || it < 1 || it >= n } || exits.toSet().size < exits.size)
            throw PocketdiffError("sampler policy 'adadiff': exits must be distinct levels in [1, ${n - 1}], got ${pyRepr(exits)}")
        if (!(tau >= 0.0 && tau <= 1.0)) throw PocketdiffError("sampler policy 'adadiff': threshold must be in [0, 1], got ${pyFloat(tau)}")
        params["exits"] = exits.map { it as Long }.sortedDescending()
    }

    private val levels: Int get() = (params["levels"] as Long).toInt()
    @Suppress("UNCHECKED_CAST")
    private val exits: List<Int> get() = (params["exits"] as List<Long>).map { it.toInt() }

    override fun roles(): List<String> =
        listOf(SEG_IN) + (levels - 2 downTo 0).map { segRole(it) } + exits.map { exitRole(it) }

    override fun begin(run: Denoise): MutableMap<String, Any?> = guidanceState(run)

    override fun step(run: Denoise, i: Int, t: Double, sample: Tensor, state: MutableMap<String, Any?>): Tensor {
        val n = levels; val exits = exits.toSet(); val tau = (params["threshold"] as Double).toFloat()
        val carried = run.call(SEG_IN, guidedFeeds(run, t, sample, state))  // hidden, temb, skips_l0 .. l(n-2)
        var hidden = carried.getValue(HIDDEN)
        for (level in n - 1 downTo 0) {
            if (level < n - 1) {
                val out = run.call(segRole(level), linkedMapOf(HIDDEN to hidden,
                    skipsName(level) to carried.getValue(skipsName(level)), TEMB to carried.getValue(TEMB),
                    "encoder_hidden_states" to run.hidden))
                if (level == 0) return combine(run, out.getValue("out_sample"), state)
                hidden = out.getValue(HIDDEN_OUT)
            }
            if (level in exits) {
                val head = run.call(exitRole(level), linkedMapOf(HIDDEN to hidden,
                    skipsName(0) to carried.getValue(skipsName(0)), TEMB to carried.getValue(TEMB)))
                val u = head.getValue(UNCERTAINTY).f()
                if (u.fold(Float.NEGATIVE_INFINITY) { a, b -> Math.max(a, b) }.toDouble() < tau.toDouble()) return combine(run, head.getValue("out_sample"), state)
            }
        }
        throw PocketdiffError("sampler policy 'adadiff': the segments ended without an output")
    }
}
