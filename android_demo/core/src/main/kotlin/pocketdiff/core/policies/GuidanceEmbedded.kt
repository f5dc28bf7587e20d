// Port of pocketdiff/runtime/policies/guidance_embedded.py: one batch-1 UNet pass per step on the prompt alone, the
// guidance scale fed as timestep_cond = guidance_scale_embedding(w - 1). No negative prompt, no CFG combination.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Session
import pocketdiff.core.Tensor
import pocketdiff.core.pyRepr

const val W_INPUT = "timestep_cond"

/** [1, dim] float32: diffusers' get_guidance_scale_embedding of one ``w`` (the policy passes guidance - 1). */
fun guidanceScaleEmbedding(w: Double, dim: Int): Tensor {
    val half = dim / 2
    val c = (-(Math.log(10000.0) / (half - 1))).toFloat()
    val freq = FloatArray(half) { Math.exp((it.toFloat() * c).toDouble()).toFloat() }
    val scale = (w * 1000.0).toFloat()
    val out = FloatArray(dim)
    for (k in 0 until half) {
        val e = scale * freq[k]
        out[k] = Math.sin(e.toDouble()).toFloat()
        out[half + k] = Math.cos(e.toDouble()).toFloat()
    }
    return Tensor(intArrayOf(1, dim), out)  // an odd dim keeps its last column 0 (np.pad)
}

/** The width of a UNet session's ``timestep_cond`` input. */
fun embedDim(session: Session): Int {
    val spec = session.inputs.firstOrNull { it.name == W_INPUT }
    val last = spec?.shape?.lastOrNull()
    if (spec == null || last !is Int)
        throw PocketdiffError("sampler policy 'guidance_embedded' needs a UNet with a $W_INPUT input of fixed width; " +
            "${session.path} has inputs ${pyRepr(session.inputs.map { it.name })}")
    return last
}

class GuidanceEmbeddedPolicy(params: Map<String, Any?>? = null) : StepPolicy(params, NAME) {
    companion object {
        const val NAME = "guidance_embedded"
        val ROLES = listOf(UNET)
    }

    override fun roles() = ROLES

    override fun check(sessions: Map<String, Session>, guidance: Double) {
        embedDim(sessions.getValue(UNET))
        val fixed = sessions.getValue(UNET).fixedBatch
        if (fixed != null && fixed != 1)
            throw PocketdiffError("a guidance-embedded UNet runs at batch 1; this one was exported at fixed batch $fixed")
    }

    override fun begin(run: Denoise): MutableMap<String, Any?> =
        linkedMapOf("w" to guidanceScaleEmbedding(run.guidance - 1, embedDim(run.sessions.getValue(UNET))))

    override fun step(run: Denoise, i: Int, t: Double, sample: Tensor, state: MutableMap<String, Any?>): Tensor =
        run.call(UNET, unetFeeds(sample, t, run.hidden, mapOf(W_INPUT to state["w"] as Tensor))).getValue("out_sample")
}
