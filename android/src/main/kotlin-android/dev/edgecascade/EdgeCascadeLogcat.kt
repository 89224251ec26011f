// Android only: the runtime's log lines in logcat.
package dev.edgecascade

import android.util.Log

/** Sends the native runtime's log lines to logcat, under the tag `EdgeCascade`. */
object EdgeCascadeLogcat {
    private const val TAG = "EdgeCascade"

    /** Logs lines at [level] and above (INFO by default; DEBUG adds llama.cpp's load lines). */
    fun install(level: LogLevel = LogLevel.INFO) {
        EdgeCascadeLog.install(level) { lvl, target, message ->
            val text = "[$target] $message"
            when (lvl) {
                LogLevel.ERROR -> Log.e(TAG, text)
                LogLevel.WARN -> Log.w(TAG, text)
                LogLevel.INFO -> Log.i(TAG, text)
                LogLevel.DEBUG -> Log.d(TAG, text)
                LogLevel.TRACE -> Log.v(TAG, text)
            }
        }
    }
}
