// The Android library module: the hand-written SDK (src/main/kotlin; src/main/kotlin-android
// for what needs android.jar, such as AndroidDeviceMonitor), the UniFFI bindings
// generated from the native library (src/main/kotlin-generated, by scripts/build-kotlin-jvm.sh
// or scripts/build-android.sh), and libedgecascade_ffi.so per ABI (src/main/jniLibs, by
// scripts/build-android.sh). Not built on our CI: no Android SDK or NDK there (README).
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

android {
    namespace = "dev.edgecascade"
    compileSdk = 35
    defaultConfig {
        minSdk = 26 // keep equal to scripts/build-android.sh's --platform
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].java.srcDirs("src/main/kotlin", "src/main/kotlin-android", "src/main/kotlin-generated")
    sourceSets["main"].jniLibs.srcDirs("src/main/jniLibs")
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    packaging { jniLibs { useLegacyPackaging = false } } // 16 KB-aligned, uncompressed .so
}

dependencies {
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.8.1")
}
