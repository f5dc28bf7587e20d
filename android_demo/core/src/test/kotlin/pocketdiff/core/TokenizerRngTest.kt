// Golden values copied from the Python suite (tests/test_tokenizer.py, tests/test_rng.py), independent of the
// bundle's test_vectors.json.
package pocketdiff.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File

fun studentBundle(): File = File(System.getProperty("pocketdiff.bundle") ?: "../../pocketdiff/toyworld/assets/student")

class TokenizerTest {
    private val tok = CLIPBPETokenizer.fromDir(File(studentBundle(), "tokenizer"))

    @Test fun literalIds() {
        val out = tok("a small red circle in the top left on a grey background")
        assertArrayEquals(intArrayOf(1059, 320, 709, 707, 647, 538, 604, 717, 558, 519, 320, 667, 623, 1060, 1060),
            out.inputIds.copyOf(15))
        assertEquals(14, out.nTokens)
        assertEquals(77, out.inputIds.size)
        assertArrayEquals(intArrayOf(1059, 521, 75, 75, 334, 267, 86, 533, 723, 256, 272, 273, 274, 1060),
            tok("Hello, World! 123").inputIds.copyOf(14))
    }

    @Test fun overflowErrorAndTruncate() {
        val long = List(80) { "circle" }.joinToString(" ")
        try {
            tok(long); fail("no error")
        } catch (e: PocketdiffError) {
            assertTrue(e.message, e.message!!.contains("82 tokens") && e.message!!.contains("limit of 77"))
        }
        val out = tok(long, truncate = true)
        assertTrue(out.truncated)
        assertEquals(77, out.inputIds.size)
        assertEquals(tok.eosId, out.inputIds[76])
    }

    @Test fun cleaningAndPreTokenising() {
        assertEquals("it's a cat", cleanText("  It's\ta\u0000 CAT\n"))
        assertEquals(listOf("it", "'s", "a", "cat", "'", "s", "toy", ";", "1", "2"), preTokenize("it's a cat' s toy; 12"))
        assertEquals(listOf("a", "<|endoftext|>", "b"), preTokenize("a<|endoftext|>b"))
    }
}

class RngTest {
    private val vectors = mapOf(
        0L to floatArrayOf(1.764052391052246f, 0.40015721321105957f, 0.978738009929657f, 2.2408931255340576f,
            1.8675580024719238f, -0.9772778749465942f),
        42L to floatArrayOf(0.49671414494514465f, -0.13826429843902588f, 0.6476885676383972f, 1.5230298042297363f,
            -0.2341533750295639f, -0.23413695394992828f),
        4294967295L to floatArrayOf(0.6484086513519287f, 0.6693235039710999f, -1.0805437564849854f,
            0.2845010459423065f, 0.1138877347111702f, 0.867621898651123f))

    @Test fun literalVectors() {
        for ((seed, want) in vectors) {
            val got = initialLatents(seed, intArrayOf(1, 4, 8, 8))
            assertArrayEquals("seed $seed", want, got.f().copyOf(6), 0f)
        }
    }

    @Test fun badSeed() {
        for (bad in listOf(-1L, 4294967296L)) {
            try {
                initialLatents(bad, intArrayOf(1)); fail("seed $bad accepted")
            } catch (e: PocketdiffError) {
                assertTrue(e.message!!.startsWith("seed must be an integer in [0, 4294967295]"))
            }
        }
    }
}
