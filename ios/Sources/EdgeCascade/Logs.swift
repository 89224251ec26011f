// The runtime's log lines, llama.cpp's own included, where an app can see them: os_log by
// default, or the app's own handler.
import EdgeCascadeBindings
import Foundation
import os

/// How much to log, most severe first: error, warn, info, debug (llama.cpp's load lines), trace.
public typealias LogLevel = EdgeCascadeBindings.LogLevel

/// Where the native runtime's log lines go. Nothing is logged until one of these is called.
public enum EdgeCascadeLog {
    /// Sends lines at `level` and above to os_log (subsystem `dev.edgecascade`, the target as the
    /// category: `llama.cpp` for llama.cpp's lines). Shown in Console.app and Xcode.
    public static func installOSLog(level: LogLevel = .info) throws {
        try install(level: level) { lvl, target, message in
            let log = Logger(subsystem: "dev.edgecascade", category: target)
            switch lvl {
            case .error: log.error("\(message, privacy: .public)")
            case .warn: log.warning("\(message, privacy: .public)")
            case .info: log.info("\(message, privacy: .public)")
            case .debug, .trace: log.debug("\(message, privacy: .public)")
            }
        }
    }

    /// Sends lines at `level` and above to `handler` (level, target, message), on whichever
    /// thread logged them; replaces the handler installed before.
    public static func install(level: LogLevel = .info, handler: @escaping @Sendable (LogLevel, String, String) -> Void) throws {
        try setLogListener(listener: LogForward(handler), level: level)
    }

    /// Stops logging.
    public static func uninstall() {
        clearLogListener()
    }
}

private final class LogForward: EdgeCascadeBindings.LogListener, @unchecked Sendable {
    private let handler: @Sendable (LogLevel, String, String) -> Void

    init(_ handler: @escaping @Sendable (LogLevel, String, String) -> Void) {
        self.handler = handler
    }

    func onLog(level: LogLevel, target: String, message: String) throws {
        handler(level, target, message)
    }
}
