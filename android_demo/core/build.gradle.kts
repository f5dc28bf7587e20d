// :core — the pure-Kotlin port of pocketdiff/runtime (no Android imports): tokenizer, RNG, schedulers, bundle
// checks, signing, step policies and the sampler loop, plus the conformance runner (docs/ports.md).
// Built and tested on the JVM; in the pocketdiff repository (no Gradle there) by jvm_test.sh with kotlinc.
plugins {
    kotlin("jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    api("com.google.code.gson:gson:2.10")  // Bundle.manifest is a JsonObject
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The bundle ConformanceTest checks; default: the shipped student bundle of the pocketdiff repository.
    systemProperty(
        "pocketdiff.bundle",
        (findProperty("pocketdiff.bundle") as String?) ?: "../../pocketdiff/toyworld/assets/student",
    )
}

// `gradle :core:conformance --args="conformance BUNDLE"` runs the ports' runner (docs/ports.md).
tasks.register<JavaExec>("conformance") {
    classpath = sourceSets["main"].runtimeClasspath
    mainClass.set("pocketdiff.core.tools.ConformanceKt")
}
