// Root build: the plugins each module applies, declared once here with their versions (gradle/libs.versions.toml).
// A module applies them without a version: `id("com.android.application")`, `kotlin("jvm")` or `alias(libs.plugins...)`.
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.kotlin.android) apply false
    alias(libs.plugins.kotlin.jvm) apply false
}
