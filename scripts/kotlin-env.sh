# Sourced by the Kotlin scripts: the Kotlin compiler (npm package kotlin-compiler, unpacked into
# the cache), JNA and JUnit 4 (Debian packages), installed when missing. Sets KOTLIN_HOME,
# KOTLINC, JNA_JAR, JUNIT_JARS, COROUTINES_JAR.
kotlin_version=2.4.20
cache=${EDGECASCADE_CACHE:-$HOME/.cache/edgecascade}
KOTLIN_HOME=$cache/kotlin/package
if [ ! -x "$KOTLIN_HOME/bin/kotlinc-jvm" ]; then
  command -v npm >/dev/null || { echo "kotlin: npm not found (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$cache/kotlin"
  (cd "$cache/kotlin" && npm pack --silent "kotlin-compiler@$kotlin_version" >/dev/null \
    && tar xzf "kotlin-compiler-$kotlin_version.tgz" && rm -f "kotlin-compiler-$kotlin_version.tgz")
fi
if [ ! -f /usr/share/java/jna.jar ] || [ ! -f /usr/share/java/junit4.jar ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjna-java junit4 >&2
  else
    echo "kotlin: install libjna-java and junit4 (sudo apt-get install libjna-java junit4)" >&2
    exit 1
  fi
fi
KOTLINC=$KOTLIN_HOME/bin/kotlinc-jvm
JNA_JAR=/usr/share/java/jna.jar
JUNIT_JARS=/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar
COROUTINES_JAR=$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar
export KOTLIN_HOME KOTLINC JNA_JAR JUNIT_JARS COROUTINES_JAR
