// Port of pocketdiff/runtime/policies/cfg.py: classifier-free guidance as diffusers runs it, one UNet call per step.
// With guidance w > 1 the texts are [negative, prompt] and each step is one batch-2 call on [x, x], combined as
// out_u + w (out_c - out_u); with w <= 1, one batch-1 call on the prompt alone.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Session
import pocketdiff.core.Tensor

class CFGPolicy(params: Map<String, Any?>? = null) : StepPolicy(params, NAME) {
    companion object {
        const val NAME = "cfg"
        val ROLES = listOf(UNET)
    }

    override fun roles() = ROLES

    override fun texts(guidance: Double) = if (guidance > 1.0) listOf("negative", "prompt") else listOf("prompt")

    override fun check(sessions: Map<String, Session>, guidance: Double) {
        val fixed = sessions.getValue(UNET).fixedBatch
        val cfg = guidance > 1.0
        if (fixed != null && fixed != (if (cfg) 2 else 1))
            throw PocketdiffError("this UNet was exported at fixed batch $fixed (" +
                "${if (fixed == 2) "guidance > 1, CFG" else "no guidance"}); guidance ${pocketdiff.core.pyFloat(guidance)} " +
                "needs batch ${if (cfg) 2 else 1}: use guidance ${if (fixed == 2) "> 1" else "<= 1"}, re-export with a " +
                "matching --guidance, or the onnx backend")
    }

    override fun step(run: Denoise, i: Int, t: Double, sample: Tensor, state: MutableMap<String, Any?>): Tensor {
        val cfg = run.guidance > 1.0
        val out = run.call(UNET, unetFeeds(if (cfg) doubled(sample) else sample, t, run.hidden))
        return if (cfg) cfgCombine(out.getValue("out_sample"), run.guidance) else out.getValue("out_sample")
    }
}
