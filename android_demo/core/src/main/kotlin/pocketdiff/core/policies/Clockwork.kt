// Port of pocketdiff/runtime/policies/clockwork.py: reuse the UNet's low-resolution features across steps.
// A full step runs unet_cw_full (whole UNet, second output lowres_out kept in the state); a light step runs
// unet_cw_light fed the cache (lowres_cache). First and last steps are always full; between them step i is light
// when i % period != 0, or, when light_steps lists step indices, exactly those. Guidance as guided.py.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Tensor
import pocketdiff.core.pyRepr

const val CW_FULL = "unet_cw_full"
const val CW_LIGHT = "unet_cw_light"
const val CACHE_OUT = "lowres_out"
const val CACHE_IN = "lowres_cache"

/** One flag per step, true where the step is light. */
fun clockSchedule(steps: Int, period: Int = 1, lightSteps: List<Long> = listOf()): List<Boolean> {
    if (lightSteps.isNotEmpty()) {
        val bad = lightSteps.filter { !(0 < it && it < steps - 1) }
        if (bad.isNotEmpty())
            throw PocketdiffError("clockwork light_steps ${pyRepr(lightSteps)}: step ${bad[0]} is not between the first " +
                "(0) and the last (${steps - 1}) of $steps steps, which are always full")
        val set = lightSteps.toSet()
        return (0 until steps).map { it.toLong() in set }
    }
    return (0 until steps).map { 0 < it && it < steps - 1 && it % period != 0 }
}

class ClockworkPolicy(params: Map<String, Any?>? = null) : GuidedPolicy(params, NAME,
    listOf("period" to Param("int", 2L), "light_steps" to Param("list", listOf<Any?>()))) {
    companion object {
        const val NAME = "clockwork"
        val ROLES = listOf(CW_FULL, CW_LIGHT)
    }

    override fun validate() {
        val period = params["period"] as Long
        if (period < 1) throw PocketdiffError("sampler policy 'clockwork': period must be >= 1, got $period")
        val steps = params["light_steps"] as List<*>
        if (steps.any { it !is Long } || steps.toSet().size != steps.size)
            throw PocketdiffError("sampler policy 'clockwork': light_steps must be distinct step indices, got ${pyRepr(steps)}")
        params["light_steps"] = steps.map { it as Long }.sorted()
    }

    private val period: Int get() = (params["period"] as Long).toInt()
    @Suppress("UNCHECKED_CAST")
    private val lightSteps: List<Long> get() = params["light_steps"] as List<Long>

    override fun roles(): List<String> = if (lightSteps.isNotEmpty() || period > 1) ROLES else listOf(CW_FULL)

    fun schedule(steps: Int): List<Boolean> = clockSchedule(steps, period, lightSteps)

    override fun begin(run: Denoise): MutableMap<String, Any?> =
        guidanceState(run).also { it["light"] = schedule(run.timesteps.size); it["cache"] = null }

    override fun step(run: Denoise, i: Int, t: Double, sample: Tensor, state: MutableMap<String, Any?>): Tensor {
        @Suppress("UNCHECKED_CAST")
        if ((state["light"] as List<Boolean>)[i])
            return guidedCall(run, CW_LIGHT, t, sample, state, mapOf(CACHE_IN to state["cache"] as Tensor)).first
        val (out, raw) = guidedCall(run, CW_FULL, t, sample, state)
        state["cache"] = raw.getValue(CACHE_OUT)
        return out
    }
}
