// Opt-in collector of the device state on Android. Needs android.jar, so it is compiled only by
// the Gradle module, never on our JVM CI (README: what is and is not tested). The mappings it
// relies on live in Device.kt and are tested on the JVM.
package dev.edgecascade

import android.app.Activity
import android.app.ActivityManager
import android.app.Application
import android.content.BroadcastReceiver
import android.content.ComponentCallbacks2
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.content.res.Configuration
import android.net.ConnectivityManager
import android.net.NetworkCapabilities
import android.os.BatteryManager
import android.os.Build
import android.os.Bundle
import android.os.PowerManager

/**
 * Keeps an [EdgeCascade]'s [DeviceState] current from the platform: battery level and charging
 * (`ACTION_BATTERY_CHANGED`), battery saver (`PowerManager`), thermal status
 * (`PowerManager.addThermalStatusListener`, API 29+), the default network and whether it is
 * metered (`ConnectivityManager`), and whether the app is in the background (its activities'
 * start and stop, rotations not counted: [ForegroundTracker]). Memory pressure
 * (`ComponentCallbacks2.onTrimMemory`) frees the runtime's caches ([EdgeCascade.trimMemory]).
 *
 * ```
 * val monitor = AndroidDeviceMonitor(application, ai).also { it.start() }
 * // ...
 * monitor.close()
 * ```
 * Needs `ACCESS_NETWORK_STATE` (declared by this library's manifest).
 */
class AndroidDeviceMonitor(
    context: Context,
    private val target: EdgeCascade,
) : AutoCloseable {
    private val app = context.applicationContext as Application
    private val power = app.getSystemService(PowerManager::class.java)
    private val connectivity = app.getSystemService(ConnectivityManager::class.java)
    private val lock = Any()
    private var state = DeviceState()
    private var running = false
    private var tracker: ForegroundTracker? = null

    private fun update(change: (DeviceState) -> DeviceState) {
        val next = synchronized(lock) {
            state = change(state)
            state
        }
        try {
            target.setDeviceState(next)
        } catch (_: EdgeCascadeException) {
            // The runtime was closed: nothing left to tell.
        }
    }

    private val battery = object : BroadcastReceiver() {
        override fun onReceive(c: Context, intent: Intent) {
            val level = intent.getIntExtra(BatteryManager.EXTRA_LEVEL, -1)
            val scale = intent.getIntExtra(BatteryManager.EXTRA_SCALE, -1)
            val plugged = intent.getIntExtra(BatteryManager.EXTRA_PLUGGED, 0) != 0
            update { it.copy(battery = DeviceState.batteryFraction(level, scale), charging = plugged) }
        }
    }

    private val powerSave = object : BroadcastReceiver() {
        override fun onReceive(c: Context, intent: Intent) {
            update { it.copy(lowPower = power.isPowerSaveMode) }
        }
    }

    private val thermal: PowerManager.OnThermalStatusChangedListener? =
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) {
            PowerManager.OnThermalStatusChangedListener { status ->
                update { it.copy(thermal = DeviceState.thermalFromAndroid(status)) }
            }
        } else {
            null
        }

    private val network = object : ConnectivityManager.NetworkCallback() {
        override fun onCapabilitiesChanged(n: android.net.Network, caps: NetworkCapabilities) {
            val connected = caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) &&
                caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED)
            val metered = !caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_NOT_METERED)
            update { it.copy(network = DeviceState.network(connected, metered)) }
        }

        override fun onLost(n: android.net.Network) {
            update { it.copy(network = Network.NONE) }
        }
    }

    private val activities = object : Application.ActivityLifecycleCallbacks {
        override fun onActivityStarted(activity: Activity) {
            tracker?.activityStarted(System.identityHashCode(activity))
        }

        override fun onActivityStopped(activity: Activity) {
            tracker?.activityStopped(System.identityHashCode(activity), activity.isChangingConfigurations)
        }

        override fun onActivityCreated(activity: Activity, savedInstanceState: Bundle?) {}
        override fun onActivityResumed(activity: Activity) {}
        override fun onActivityPaused(activity: Activity) {}
        override fun onActivitySaveInstanceState(activity: Activity, outState: Bundle) {}
        override fun onActivityDestroyed(activity: Activity) {}
    }

    private val memory = object : ComponentCallbacks2 {
        override fun onTrimMemory(level: Int) {
            // Background or running low: give the caches back before the OS takes the process.
            if (level >= ComponentCallbacks2.TRIM_MEMORY_RUNNING_LOW) {
                try {
                    target.trimMemory()
                } catch (_: EdgeCascadeException) {
                }
            }
        }

        override fun onConfigurationChanged(newConfig: Configuration) {}

        @Deprecated("Deprecated in Java")
        override fun onLowMemory() = onTrimMemory(ComponentCallbacks2.TRIM_MEMORY_COMPLETE)
    }

    /** Reads the current state, then follows its changes. Idempotent. */
    fun start() {
        synchronized(lock) {
            if (running) return
            running = true
        }
        val info = ActivityManager.RunningAppProcessInfo()
        ActivityManager.getMyMemoryState(info)
        val foreground =
            info.importance <= ActivityManager.RunningAppProcessInfo.IMPORTANCE_FOREGROUND
        tracker = ForegroundTracker(foreground) { fg -> update { it.copy(background = !fg) } }
        update {
            it.copy(
                lowPower = power.isPowerSaveMode,
                background = !foreground,
                network = if (connectivity.activeNetwork == null) Network.NONE else it.network,
                thermal = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) {
                    DeviceState.thermalFromAndroid(power.currentThermalStatus)
                } else {
                    it.thermal
                },
            )
        }
        register(battery, IntentFilter(Intent.ACTION_BATTERY_CHANGED))
        register(powerSave, IntentFilter(PowerManager.ACTION_POWER_SAVE_MODE_CHANGED))
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) power.addThermalStatusListener(thermal!!)
        connectivity.registerDefaultNetworkCallback(network)
        app.registerActivityLifecycleCallbacks(activities)
        app.registerComponentCallbacks(memory)
    }

    /** Stops following changes; the last state stays with the runtime. Idempotent. */
    override fun close() {
        synchronized(lock) {
            if (!running) return
            running = false
        }
        app.unregisterReceiver(battery)
        app.unregisterReceiver(powerSave)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) power.removeThermalStatusListener(thermal!!)
        connectivity.unregisterNetworkCallback(network)
        app.unregisterActivityLifecycleCallbacks(activities)
        app.unregisterComponentCallbacks(memory)
    }

    private fun register(receiver: BroadcastReceiver, filter: IntentFilter) {
        // System broadcasts reach a not-exported receiver; Android 14 requires saying so.
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
            app.registerReceiver(receiver, filter, Context.RECEIVER_NOT_EXPORTED)
        } else {
            app.registerReceiver(receiver, filter)
        }
    }
}
