// Port of pocketdiff/runtime/policies/guided.py: the guidance half every multi-role UNet policy shares (ddsm,
// clockwork, adadiff). A UNet with a timestep_cond input: one batch-1 call with guidance_scale_embedding(w - 1);
// else two-pass CFG (texts [negative, prompt], one batch-2 call on [x, x], combined; guidance <= 1: batch 1).
// Which one is read from the sessions in check, which the loop calls before texts.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Session
import pocketdiff.core.Tensor
import pocketdiff.core.pyFloat

abstract class GuidedPolicy(params: Map<String, Any?>?, name: String, paramSpecs: List<Pair<String, Param>>) :
    StepPolicy(params, name, paramSpecs) {
    private var embedded = false

    override fun check(sessions: Map<String, Session>, guidance: Double) {
        val roles = roles()
        embedded = sessions.getValue(roles[0]).inputs.any { it.name == W_INPUT }
        val batch = if (embedded || guidance <= 1.0) 1 else 2
        for (role in roles) {
            val fixed = sessions.getValue(role).fixedBatch
            if (fixed != null && fixed != batch)
                throw PocketdiffError("the $role UNet was exported at fixed batch $fixed; guidance ${pyFloat(guidance)} " +
                    "needs batch $batch: use the onnx backend or re-export")
        }
    }

    override fun texts(guidance: Double) =
        if (guidance > 1.0 && !embedded) listOf("negative", "prompt") else listOf("prompt")

    /** ``{"w": embedding}`` for a guidance-embedded UNet, else nothing (merge into begin's state). */
    fun guidanceState(run: Denoise): MutableMap<String, Any?> {
        val state = LinkedHashMap<String, Any?>()
        if (embedded) state["w"] = guidanceScaleEmbedding(run.guidance - 1, embedDim(run.sessions.getValue(roles()[0])))
        return state
    }

    /** The UNet inputs of one guided call: the sample doubled under two-pass CFG, the w embedding if any. */
    fun guidedFeeds(run: Denoise, t: Double, sample: Tensor, state: Map<String, Any?>,
                    extra: Map<String, Tensor> = emptyMap()): Map<String, Tensor> {
        if ("w" in state) return unetFeeds(sample, t, run.hidden, mapOf(W_INPUT to state["w"] as Tensor) + extra)
        val cfg = run.guidance > 1.0
        return unetFeeds(if (cfg) doubled(sample) else sample, t, run.hidden, extra)
    }

    /** A guided call's output [B, C, h, w] -> the model output [1, C, h, w] (CFG-combined at batch 2). */
    fun combine(run: Denoise, out: Tensor, state: Map<String, Any?>): Tensor =
        if ("w" !in state && run.guidance > 1.0) cfgCombine(out, run.guidance) else out

    /** (the guided model output [1, C, h, w], the call's raw outputs); extra feeds go in unchanged. */
    fun guidedCall(run: Denoise, role: String, t: Double, sample: Tensor, state: Map<String, Any?>,
                   extra: Map<String, Tensor> = emptyMap()): Pair<Tensor, Map<String, Tensor>> {
        val out = run.call(role, guidedFeeds(run, t, sample, state, extra))
        return combine(run, out.getValue("out_sample"), state) to out
    }
}
