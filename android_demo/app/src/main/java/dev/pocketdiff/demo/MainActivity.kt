package dev.pocketdiff.demo

import android.graphics.Bitmap
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.Image
import androidx.compose.foundation.isSystemInDarkTheme
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.aspectRatio
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.text.KeyboardOptions
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.RadioButton
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.material3.darkColorScheme
import androidx.compose.material3.lightColorScheme
import androidx.compose.runtime.Composable
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import androidx.compose.runtime.remember
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.FilterQuality
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.text.font.FontFamily
import androidx.compose.ui.text.input.KeyboardType
import androidx.compose.ui.unit.dp
import androidx.lifecycle.viewmodel.compose.viewModel
import java.util.Locale

/** One screen: prompt, steps, guidance, seed, Generate / Cancel, progress, the image, per-stage timings. */
class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme(colorScheme = if (isSystemInDarkTheme()) darkColorScheme() else lightColorScheme()) {
                Surface(Modifier.fillMaxSize()) { DemoScreen(viewModel()) }
            }
        }
    }
}

@Composable
fun DemoScreen(vm: GenerateViewModel) {
    val s by vm.state.collectAsState()
    val idle = !s.busy && !s.generating
    val picker = rememberLauncherForActivityResult(ActivityResultContracts.OpenDocumentTree()) { uri ->
        if (uri != null) vm.installFromTree(uri)
    }
    Column(
        Modifier.fillMaxSize().verticalScroll(rememberScrollState()).padding(16.dp),
        verticalArrangement = Arrangement.spacedBy(8.dp),
    ) {
        Text("pocketdiff", style = MaterialTheme.typography.headlineSmall)
        if (s.bundleInfo.isNotEmpty()) Text(s.bundleInfo, style = MaterialTheme.typography.bodySmall)

        OutlinedTextField(
            value = s.prompt, onValueChange = vm::onPrompt, label = { Text("Prompt") },
            enabled = !s.generating, modifier = Modifier.fillMaxWidth(),
        )
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            // steps is text: a count, or "auto" / "auto:PRESET" for a bundle with a step-budget predictor
            OutlinedTextField(
                value = s.steps, onValueChange = vm::onSteps, label = { Text("Steps") }, singleLine = true,
                enabled = !s.generating, modifier = Modifier.weight(1f),
            )
            OutlinedTextField(
                value = s.guidance, onValueChange = vm::onGuidance, label = { Text("Guidance") }, singleLine = true,
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Decimal),
                enabled = !s.generating, modifier = Modifier.weight(1f),
            )
            OutlinedTextField(
                value = s.seed, onValueChange = vm::onSeed, label = { Text("Seed") }, singleLine = true,
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Number),
                enabled = !s.generating, modifier = Modifier.weight(1f),
            )
        }
        if (s.targets.size > 1) {
            Row(verticalAlignment = Alignment.CenterVertically) {
                Text("Backend")
                s.targets.forEach { t ->
                    RadioButton(selected = t == s.target, onClick = { vm.selectTarget(t) }, enabled = idle)
                    Text(t)
                }
            }
        }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp), verticalAlignment = Alignment.CenterVertically) {
            Button(onClick = vm::generate, enabled = s.ready && idle) { Text("Generate") }
            OutlinedButton(onClick = vm::cancel, enabled = s.generating) { Text("Cancel") }
            TextButton(onClick = { picker.launch(null) }, enabled = idle) { Text("Pick bundle…") }
        }
        when {
            s.generating -> LinearProgressIndicator(progress = { s.progress }, modifier = Modifier.fillMaxWidth())
            s.busy -> LinearProgressIndicator(modifier = Modifier.fillMaxWidth())
        }
        Text(s.status, style = MaterialTheme.typography.bodyMedium)
        s.error?.let { Text(it, color = MaterialTheme.colorScheme.error, style = MaterialTheme.typography.bodyMedium) }

        s.image?.let { GeneratedImage(it) }
        if (s.timings.isNotEmpty()) Timings(s.timings, s.calls)
    }
}

/** The image at the screen's width, nearest-neighbour: a 32×32 toy bundle's pixels stay pixels. */
@Composable
private fun GeneratedImage(bitmap: Bitmap) {
    val image = remember(bitmap) { bitmap.asImageBitmap() }
    Image(
        bitmap = image,
        contentDescription = "generated image",
        contentScale = ContentScale.Fit,
        filterQuality = FilterQuality.None,
        modifier = Modifier.fillMaxWidth().aspectRatio(bitmap.width.toFloat() / bitmap.height),
    )
}

@Composable
private fun Timings(timings: List<Pair<String, Double>>, calls: Int) {
    Column {
        Text("Timings ($calls model calls)", style = MaterialTheme.typography.titleSmall)
        timings.forEach { (stage, seconds) ->
            Row(Modifier.fillMaxWidth()) {
                Text(stage.removeSuffix("_s"), modifier = Modifier.weight(1f), fontFamily = FontFamily.Monospace)
                Text(String.format(Locale.ROOT, "%.1f ms", seconds * 1000), fontFamily = FontFamily.Monospace)
            }
        }
    }
}
