#!/usr/bin/env bash
# Build and test the pure-Kotlin core on the JVM without Gradle (kotlinc + JUnit 4):
#   android_demo/core/jvm_test.sh OUT_DIR [--build-only | --test-only]
# builds OUT_DIR/core.jar (src/main) and OUT_DIR/core-tests.jar (src/test), runs every *Test class with JUnit and
# exits non-zero on a compile error or a failing test (--build-only: only build; --test-only: only run the tests
# on jars built before). The bundle tests read the shipped student bundle
# (../../pocketdiff/toyworld/assets/student from this folder) unless POCKETDIFF_BUNDLE names another.
# Jar locations (Debian's packages by default): GSON_JAR, JUNIT_JAR, HAMCREST_JAR, KOTLIN_STDLIB_JAR.
# The conformance runner, afterwards:
#   java -cp OUT_DIR/core.jar:$GSON_JAR:$KOTLIN_STDLIB_JAR pocketdiff.core.tools.ConformanceKt conformance BUNDLE
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:?usage: jvm_test.sh OUT_DIR [--build-only | --test-only]}"
MODE="${2:-all}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
GSON_JAR="${GSON_JAR:-/usr/share/java/gson.jar}"
JUNIT_JAR="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
HAMCREST_JAR="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"
KOTLIN_STDLIB_JAR="${KOTLIN_STDLIB_JAR:-/usr/share/java/kotlin-stdlib.jar}"
for jar in "$GSON_JAR" "$JUNIT_JAR" "$HAMCREST_JAR" "$KOTLIN_STDLIB_JAR"; do
    [ -f "$jar" ] || { echo "jvm_test.sh: $jar not found (set GSON_JAR/JUNIT_JAR/HAMCREST_JAR/KOTLIN_STDLIB_JAR)" >&2; exit 2; }
done
if [ "$MODE" != "--test-only" ]; then
    rm -f "$OUT/core.jar" "$OUT/core-tests.jar"
    kotlinc -nowarn "$HERE/src/main/kotlin" -cp "$GSON_JAR" -d "$OUT/core.jar"
    kotlinc -nowarn "$HERE/src/test/kotlin" -cp "$OUT/core.jar:$GSON_JAR:$JUNIT_JAR:$HAMCREST_JAR" -d "$OUT/core-tests.jar"
fi
[ -f "$OUT/core.jar" ] && [ -f "$OUT/core-tests.jar" ] || { echo "jvm_test.sh: compilation failed" >&2; exit 1; }
[ "$MODE" = "--build-only" ] && exit 0
CLASSES=$( (if command -v unzip >/dev/null; then unzip -Z1 "$OUT/core-tests.jar"; else jar tf "$OUT/core-tests.jar"; fi) | grep -E 'Test\.class$' | grep -v '\$' | sed 's/\.class$//; s#/#.#g' | sort)
[ -n "$CLASSES" ] || { echo "jvm_test.sh: no test classes in $OUT/core-tests.jar" >&2; exit 1; }
cd "$HERE"  # the default bundle path is relative to this folder
PROPS=()
[ -n "${POCKETDIFF_BUNDLE:-}" ] && PROPS+=("-Dpocketdiff.bundle=$POCKETDIFF_BUNDLE")
# shellcheck disable=SC2086
java ${PROPS[@]+"${PROPS[@]}"} -cp "$OUT/core-tests.jar:$OUT/core.jar:$GSON_JAR:$JUNIT_JAR:$HAMCREST_JAR:$KOTLIN_STDLIB_JAR" \
    org.junit.runner.JUnitCore $CLASSES
