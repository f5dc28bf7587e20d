// pocketdiff Android demo: the app (:app, Android, Compose) over the pure-Kotlin runtime port (:core, plain JVM).
// Not built in the pocketdiff repository's CI (no Android SDK there); see README.md for what was verified.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "pocketdiff-android"
include(":app", ":core")
