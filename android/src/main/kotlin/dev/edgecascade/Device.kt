// The device state the router uses, with the platform mappings the Android monitor needs.
// Plain Kotlin (no android.jar), so it is compiled and tested on the JVM too.
package dev.edgecascade

/** How hot the device is: NOMINAL, FAIR, SERIOUS, CRITICAL. */
typealias Thermal = uniffi.edgecascade.Thermal
/** The network the device is on: UNMETERED, METERED, NONE. */
typealias Network = uniffi.edgecascade.Network

/**
 * What the app reports about the device, through [EdgeCascade.setDeviceState] or an
 * [AndroidDeviceMonitor]. Offline keeps everything local; in the background requests go to
 * the remote tier (private ones stay local, and are refused if the model runs on the GPU);
 * serious heat, low-power mode and a low battery escalate more readily; a metered network
 * less. The defaults change nothing.
 */
data class DeviceState(
    val thermal: Thermal = Thermal.NOMINAL,
    /** Battery charge, 0 to 1; null when unknown. */
    val battery: Double? = null,
    val charging: Boolean = false,
    /** Battery saver / low-power mode. */
    val lowPower: Boolean = false,
    val network: Network = Network.UNMETERED,
    val background: Boolean = false,
) {
    companion object {
        /**
         * Android's `PowerManager.THERMAL_STATUS_*` (0 none, 1 light, 2 moderate, 3 severe,
         * 4 critical, 5 emergency, 6 shutdown) in the four steps iOS and the router use.
         * Moderate already throttles the CPU, which slows local decoding: serious.
         */
        fun thermalFromAndroid(status: Int): Thermal = when {
            status <= 0 -> Thermal.NOMINAL
            status == 1 -> Thermal.FAIR
            status == 2 -> Thermal.SERIOUS
            else -> Thermal.CRITICAL
        }

        /** A network from what `NetworkCapabilities` says (or null for no default network). */
        fun network(connected: Boolean, metered: Boolean): Network = when {
            !connected -> Network.NONE
            metered -> Network.METERED
            else -> Network.UNMETERED
        }

        /** Battery charge from `BatteryManager.EXTRA_LEVEL` and `EXTRA_SCALE`; null if unknown. */
        fun batteryFraction(level: Int, scale: Int): Double? =
            if (level < 0 || scale <= 0) null else (level.toDouble() / scale).coerceIn(0.0, 1.0)
    }
}

internal fun DeviceState.toFfi() = uniffi.edgecascade.DeviceState(
    thermal = thermal,
    battery = battery,
    charging = charging,
    lowPower = lowPower,
    network = network,
    background = background,
)

internal fun uniffi.edgecascade.DeviceState.toSdk() = DeviceState(
    thermal = thermal,
    battery = battery,
    charging = charging,
    lowPower = lowPower,
    network = network,
    background = background,
)

/**
 * Whether the app is in the foreground, from its activities' start and stop events: the rule
 * [AndroidDeviceMonitor] applies, in plain Kotlin so it is tested on the JVM. Activities are
 * told apart by identity, not counted, so a tracker started while an activity is already
 * visible (`initiallyForeground`, from the process importance) still sees the app leave; an
 * activity stopped for a configuration change (a rotation) keeps the app in the foreground
 * until its new instance starts. [onChange] is called with each new state, not repeats.
 */
class ForegroundTracker(
    initiallyForeground: Boolean,
    private val onChange: (foreground: Boolean) -> Unit,
) {
    private val started = HashSet<Int>()
    private var recreating = 0

    /** The current state. */
    var foreground: Boolean = initiallyForeground
        private set

    /** An activity (by [System.identityHashCode]) became visible. */
    @Synchronized
    fun activityStarted(id: Int) {
        started.add(id)
        if (recreating > 0) recreating--
        set(true)
    }

    /** An activity stopped; [changingConfigurations] is `Activity.isChangingConfigurations`. */
    @Synchronized
    fun activityStopped(id: Int, changingConfigurations: Boolean) {
        started.remove(id)
        if (changingConfigurations) {
            recreating++
        } else if (started.isEmpty() && recreating == 0) {
            set(false)
        }
    }

    private fun set(value: Boolean) {
        if (value != foreground) {
            foreground = value
            onChange(value)
        }
    }
}
