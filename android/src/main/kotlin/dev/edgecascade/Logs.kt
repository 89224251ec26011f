// The runtime's log lines, llama.cpp's own included, where an app can see them.
package dev.edgecascade

import uniffi.edgecascade_ffi.LogListener
import uniffi.edgecascade_ffi.clearLogListener
import uniffi.edgecascade_ffi.setLogListener

/** How much to log, most severe first: ERROR, WARN, INFO, DEBUG (llama.cpp's load lines), TRACE. */
typealias LogLevel = uniffi.edgecascade.LogLevel

/**
 * Where the native runtime's log lines go. Nothing is logged until a logger is installed; on
 * Android, `EdgeCascadeLogcat.install()` sends them to logcat.
 */
object EdgeCascadeLog {
    /**
     * Sends every line at [level] and above to [logger] (level, target, message), on whichever
     * thread logged it, generation threads included; replaces the logger installed before. The
     * target is `llama.cpp` for llama.cpp's lines, the Rust module otherwise. An exception
     * thrown by [logger] loses that line, nothing else.
     */
    fun install(level: LogLevel = LogLevel.INFO, logger: (LogLevel, String, String) -> Unit) {
        setLogListener(object : LogListener {
            override fun onLog(level: LogLevel, target: String, message: String) =
                logger(level, target, message)
        }, level)
    }

    /** Stops logging. */
    fun uninstall() = clearLogListener()
}
