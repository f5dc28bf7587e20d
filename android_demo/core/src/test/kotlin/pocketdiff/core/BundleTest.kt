// Bundles that cannot be subverted (the hostile cases of tests/test_bundle_security.py, same messages), the
// signed test vector of docs/export.md, the conformance checks on the shipped student bundle, and the loop's
// cancellation on shape-only sessions.
package pocketdiff.core

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import pocketdiff.core.tools.runChecks
import java.io.File
import java.nio.file.Files

class BundleTest {
    private val student = studentBundle()

    /** A bundle folder holding only the student's manifest, edited: the checks refuse it before any file is read. */
    private fun hostile(edit: (JsonObject) -> Unit): File {
        val dir = Files.createTempDirectory("hostile").toFile()
        val m = JsonParser.parseString(File(student, MANIFEST).readText()).asJsonObject
        edit(m)
        File(dir, MANIFEST).writeText(m.toString())
        return dir
    }

    private fun unet(m: JsonObject): JsonObject = m.getAsJsonArray("components").map { it.asJsonObject }
        .first { it["role"].asString == "unet" && it["target"].asString == "onnx" }

    private fun refused(dir: File, message: String, key: ByteArray? = null) {
        try {
            Bundle.load(dir, key); fail("accepted: $message")
        } catch (e: PocketdiffError) {
            assertTrue("${e.message} lacks $message", e.message!!.contains(message) && !e.message!!.contains("\n"))
        }
    }

    @Test fun hostileManifestsFailClosed() {
        refused(hostile { unet(it).addProperty("path", "onnx/../../outside/secret.onnx") },
            "manifest.components[1].path must stay inside the bundle")
        refused(hostile { it.getAsJsonArray("files")[0].asJsonObject.addProperty("path", "/etc/passwd") },
            "manifest.files[0].path must be a relative POSIX path inside the bundle")
        refused(hostile { unet(it).addProperty("weights", "x") }, "manifest.components[1] has an unknown field 'weights'")
        refused(hostile { it.getAsJsonArray("files")[0].asJsonObject.remove("sha256") }, "manifest.files[0].sha256 is missing")
        refused(hostile { it.getAsJsonArray("files")[0].asJsonObject.addProperty("sha256", "z".repeat(64)) },
            "manifest.files[0].sha256 must be 64 lowercase hex digits")
        refused(hostile { unet(it).addProperty("role", "unet2") },
            "manifest.components[1].role is 'unet2', not a role this runtime knows")
        refused(hostile { unet(it).addProperty("target", "tflite") },
            "manifest.components[1].target is 'tflite'; allowed: onnx, coreml, executorch")
        val list = hostile {}
        File(list, MANIFEST).writeText("[1, 2, 3]")
        refused(list, "bundle manifest: (the whole file) must be a JSON object, got list")
    }

    @Test fun symlinkOutOfTheBundleIsRefusedBeforeItIsFollowed() {
        val dir = hostile {}
        val outside = Files.createTempFile("secret", ".onnx")
        File(dir, "onnx/unet").mkdirs()
        Files.createSymbolicLink(File(dir, "onnx/unet/model.onnx").toPath(), outside)
        refused(dir, "'onnx/unet/model.onnx' is a symlink that leaves the bundle")
        Files.delete(File(dir, "onnx/unet/model.onnx").toPath())
        Files.createSymbolicLink(File(dir, "onnx/unet/model.onnx").toPath(), File("../../../x").toPath())
        refused(dir, "'onnx/unet/model.onnx' leaves the bundle through a symlink")
    }

    @Test fun signedTestVectorOfTheDocs() {
        val dir = Files.createTempDirectory("signed").toFile()
        val manifest = "{\"format_version\": 1}\n".toByteArray()
        val sig = File(dir, SIGNATURE_FILE)
        sig.writeText("3af43032353f1159147ac16798fc0d0a75b804a30cc39a31fbe5686b9aa672a59c381106cadd93842cd086f50066b6ccd138ef2b7" +
            "db552ccf8853fc707766203\n")
        val keyFile = File(dir, "KEY.pub").also { it.writeText("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n") }
        val key = loadPublicKey(keyFile)
        verifySignature(manifest, sig, key, dir)  // no throw
        try {
            verifySignature("{\"format_version\": 2}\n".toByteArray(), sig, key, dir); fail("edited manifest verified")
        } catch (e: PocketdiffError) {
            assertTrue(e.message!!.contains("does not verify"))
        }
        refused(Files.createTempDirectory("unsigned").toFile().also { File(it, MANIFEST).writeBytes(manifest) },
            "is not signed", key)
    }

    @Test fun conformanceOfTheShippedBundle() {
        @Suppress("UNCHECKED_CAST")
        val checks = runChecks(student.path)["checks"] as Map<String, Map<String, String>>
        val failed = checks.filterValues { it["status"] == "failed" }
        assertTrue("failed: $failed", failed.isEmpty())
        for (name in listOf("manifest", "tokenizer", "rng", "timesteps")) assertEquals(name, "passed", checks.getValue(name)["status"])
    }

    @Test fun cancelStopsTheLoopAndTracesEveryCall() {
        val bundle = Bundle.load(student)
        assertNotEquals(null, bundle.manifest.get("sampler"))
        val rt = RuntimePipeline.fromBundle(bundle, "onnx", { c, _ -> ShapeSession(c.inputs, c.outputs, c.path) })
        val result = rt.generate("a red circle", "4", 2f, 0L)
        assertEquals(listOf("text_encoder", "unet", "unet", "unet", "unet", "vae_decoder"), result.trace.map { it.role })
        assertEquals(listOf(null, 0, 1, 2, 3, null), result.trace.map { it.step })
        assertEquals(32 * 32 * 3, result.image.size)
        try {
            rt.generate("a red circle", "4", 2f, 0L, callback = { done, _ -> done < 2 }); fail("not cancelled")
        } catch (e: Cancelled) {
            assertEquals("generation cancelled after step 2 of 4", e.message)
        }
        try {
            rt.generate("a red circle", "auto", 2f, 0L); fail("auto without a predictor")
        } catch (e: PocketdiffError) {
            assertTrue(e.message!!.contains("needs a bundle with a step-budget predictor"))
        }
    }
}
