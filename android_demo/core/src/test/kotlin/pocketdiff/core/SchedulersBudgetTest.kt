// Scheduler grids and config refusals, and the step-budget rule, against values printed by the Python runtime.
package pocketdiff.core

import org.junit.Assert.assertEquals
import org.junit.Assert.fail
import org.junit.Test
import pocketdiff.core.policies.BudgetSpec

class SchedulersTest {
    private val sd = mapOf<String, Any?>("_class_name" to "PNDMScheduler", "beta_start" to 0.00085, "beta_end" to 0.012,
        "beta_schedule" to "scaled_linear", "num_train_timesteps" to 1000L, "set_alpha_to_one" to false,
        "skip_prk_steps" to true, "steps_offset" to 1L, "trained_betas" to null, "clip_sample" to false)

    private fun ts(name: String): Pair<List<Double>, Float> {
        val s = schedulerFromConfig(sd, name)
        s.setTimesteps(4)
        return s.timesteps.toList() to s.initNoiseSigma
    }

    @Test fun timestepsOfEveryScheduler() {
        assertEquals(listOf(751.0, 501.0, 501.0, 251.0, 1.0), ts("pndm").first)
        assertEquals(listOf(751.0, 501.0, 251.0, 1.0), ts("ddim").first)
        assertEquals(listOf(999.0, 666.0, 333.0, 0.0), ts("euler").first)
        assertEquals(14.614646911621094f, ts("euler").second, 0f)
        assertEquals(listOf(999.0, 749.0, 500.0, 250.0), ts("dpm++2m").first)
        assertEquals("pndm", schedulerNameFor(sd))
    }

    private fun refused(config: Map<String, Any?>, name: String?, message: String) {
        try {
            schedulerFromConfig(config, name); fail("accepted")
        } catch (e: PocketdiffError) {
            assertEquals(message, e.message)
        }
    }

    @Test fun refusals() {
        refused(sd + ("use_karras_sigmas" to true), "euler",
            "scheduler option use_karras_sigmas=True is not supported by the pocketdiff runtime (EulerDiscrete); allowed: False")
        refused(sd + ("beta_schedule" to "cosine"), "euler", "unknown beta_schedule 'cosine'; allowed: linear, scaled_linear")
        refused(sd + ("num_train_timesteps" to 1.5), "euler", "scheduler option num_train_timesteps must be int, got 1.5")
        refused(sd, "lms", "unknown scheduler 'lms'; allowed: ddim, euler, dpm++2m, pndm")
    }
}

class BudgetTest {
    private val spec = BudgetSpec.fromDict(mapOf("step_counts" to listOf(2L, 4L, 8L), "metrics" to listOf("lpips", "clip"),
        "higher_is_better" to listOf(false, true), "presets" to mapOf("fast" to mapOf("lpips" to 0.3)), "default_preset" to "fast"))
    private val curve = listOf(doubleArrayOf(0.5, 0.8), doubleArrayOf(0.25, 0.85), doubleArrayOf(0.1, 0.95))

    @Test fun targetsAndRule() {
        assertEquals(mapOf("lpips" to 0.3), spec.targets("auto"))
        assertEquals(mapOf("clip" to 0.9, "lpips" to 0.2), spec.targets("auto:clip=0.9,lpips=0.2"))
        assertEquals(4, spec.choose(curve, spec.targets("auto")))
        assertEquals(8, spec.choose(curve, mapOf("lpips" to 0.2, "clip" to 0.99)))
    }

    @Test fun badRequests() {
        for ((request, message) in listOf(
            "auto:nope" to "unknown step budget preset 'nope'; allowed: fast",
            "auto:x=1" to "unknown step budget metric in request 'auto:x=1' 'x'; allowed: lpips, clip",
            "auto:lpips=abc" to "step budget target 'lpips=abc' is not METRIC=NUMBER",
            "four" to "steps must be an integer >= 1 or 'auto[:PRESET|METRIC=VALUE,...]', got 'four'")) {
            try {
                spec.targets(request); fail(request)
            } catch (e: PocketdiffError) {
                assertEquals(message, e.message)
            }
        }
    }
}

class JsonAndReprTest {
    @Test fun jsonAsPythonReadsIt() {
        val v = parseJson("{\"a\": [1, 1.0, 1e3, -Infinity, NaN, null, true], \"a\": \"x\\u00e9\"}") as Map<*, *>
        assertEquals(mapOf("a" to "x\u00e9"), v)  // duplicate keys: the last wins
        val list = parseJson("[1, 1.0, 1e3, -Infinity, null, true]") as List<*>
        assertEquals(listOf(1L, 1.0, 1000.0, Double.NEGATIVE_INFINITY, null, true), list)
        for (bad in listOf("{'a': 1}", "[1,]", "{\"a\": 1} x", "[01]", "\"a\tb\"")) {
            try {
                parseJson(bad); fail(bad)
            } catch (e: JsonDecodeError) {
            }
        }
    }

    @Test fun pythonRepr() {
        assertEquals("[1, 2.5, 'ab', None, True, {'k': 1e-05}]", pyRepr(listOf(1L, 2.5, "ab", null, true, mapOf("k" to 0.00001))))
        assertEquals("\"it's\"", pyRepr("it's"))
        assertEquals("1e+16", pyFloat(1e16))
        assertEquals("0.0001", pyFloat(0.0001))
        assertEquals("1.23e-05", formatG(0.0000123, 3))
        assertEquals("1e+06", formatG(1e6))
        assertEquals("0.000123", formatG(0.000123, 3))
    }
}
