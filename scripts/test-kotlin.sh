#!/usr/bin/env bash
# The Kotlin SDK's tests on the JVM (JUnit 4) against the host library and SmolLM2. Prints a
# cargo-style "test result:" line so scripts/test.sh counts them in its closing total.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jar=$(scripts/build-kotlin-jvm.sh | tail -n 1)
. scripts/kotlin-env.sh
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/kotlin
tests=$out/edgecascade-jvm-tests.jar
lib="$KOTLIN_HOME/lib"
cp="$jar:$JNA_JAR:$COROUTINES_JAR:$lib/kotlin-stdlib.jar:$lib/kotlin-test.jar:$lib/kotlin-test-junit.jar:$JUNIT_JARS"
"$KOTLINC" -nowarn -jvm-target 17 -cp "$cp" -d "$tests" $(find android/src/test/kotlin -name '*.kt' | sort) 2>&1
log=$(mktemp)
set +e
java -Djna.library.path="$target/release" -cp "$tests:$cp" org.junit.runner.JUnitCore \
  dev.edgecascade.EdgeCascadeTest 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
run=$(sed -n 's/^OK (\([0-9]*\) tests\{0,1\})$/\1/p; s/^Tests run: \([0-9]*\),.*$/\1/p' "$log" | tail -n 1)
failed=$(sed -n 's/^Tests run: [0-9]*,  Failures: \([0-9]*\)$/\1/p' "$log" | tail -n 1)
run=${run:-0}; failed=${failed:-0}
[ "$status" = 0 ] || [ "$failed" != 0 ] || failed=1
echo "test result: kotlin. $((run - failed)) passed; $failed failed; (Kotlin SDK on the JVM)"
rm -f "$log"
exit "$status"
