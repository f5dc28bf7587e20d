// The Android app: Compose UI, onnxruntime-android sessions, bundle install and verification. The sampler,
// tokenizer, schedulers, policies and bundle checks are all in :core (pure Kotlin, tested on the JVM).
plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

// -Ppocketdiff.executorch=true (or gradle.properties) adds the ExecuTorch backend: UNVERIFIED, see README.md.
val withExecuTorch = (findProperty("pocketdiff.executorch") as String?)?.toBoolean() ?: false

android {
    namespace = "dev.pocketdiff.demo"
    compileSdk = 34

    defaultConfig {
        applicationId = "dev.pocketdiff.demo"
        minSdk = 26
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        buildConfigField("boolean", "EXECUTORCH", withExecuTorch.toString())
        // The model files are large: only arm64 (phones) and x86_64 (the emulator) native libraries.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug")  // a demo: installable without a release key
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }

    buildFeatures {
        compose = true
        buildConfig = true
    }
    composeOptions { kotlinCompilerExtensionVersion = libs.versions.composeCompiler.get() }

    // A bundle shipped as assets (app/src/main/assets/bundle/) is copied to filesDir on first start; stored
    // uncompressed so the copy streams without inflating.
    androidResources { noCompress += listOf("onnx", "pte", "data", "bin", "safetensors") }

    packaging { resources { excludes += "/META-INF/{AL2.0,LGPL2.1}" } }

    sourceSets {
        getByName("main").java.srcDir(if (withExecuTorch) "src/executorch/java" else "src/noExecutorch/java")
    }
}

dependencies {
    implementation(project(":core"))
    implementation(libs.gson)  // Bundle.manifest is a Gson JsonObject
    implementation(libs.onnxruntime.android)
    if (withExecuTorch) implementation(libs.executorch.android)

    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.activity.compose)
    implementation(libs.androidx.lifecycle.viewmodel.ktx)
    implementation(libs.androidx.lifecycle.viewmodel.compose)
    implementation(libs.androidx.documentfile)
    implementation(libs.kotlinx.coroutines.android)
    implementation(platform(libs.compose.bom))
    implementation(libs.compose.ui)
    implementation(libs.compose.ui.graphics)
    implementation(libs.compose.foundation)
    implementation(libs.compose.material3)
    implementation(libs.compose.ui.tooling.preview)
    debugImplementation(libs.compose.ui.tooling)
}
