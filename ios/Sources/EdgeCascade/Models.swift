// Model downloads: resumable, verified by sha256 before the file appears at its path.
// Not compiled on our CI (no Swift toolchain): scripts/check-swift.sh checks it (README).
import EdgeCascadeBindings
import Foundation

/// A finished download: the verified file, and how it got there.
public typealias PullOutcome = EdgeCascadeBindings.PullOutcome

/// What `Models.pull` yields: progress and retries, then the verified file.
public enum PullEvent: Sendable, Equatable {
    case progress(bytesDone: UInt64, total: UInt64?, bytesPerSecond: Double)
    /// An attempt failed (`reason`, such as "HTTP 503"); the next follows in `waitSeconds`.
    /// `attempt` counts the attempts in a row that received nothing; after 8 the download fails
    /// with `EdgeCascadeError.Download`. `bytesDone` stay on disk for the resume.
    case retrying(attempt: UInt32, waitSeconds: Double, reason: String, bytesDone: UInt64)
    case done(PullOutcome)
}

/// A known model: name, URL, size, sha256, licence, context length, recommended use.
public typealias CatalogModel = EdgeCascadeBindings.CatalogModel

public enum Models {
    /// The built-in catalog of known models.
    public static var catalog: [CatalogModel] { modelCatalog() }

    /// Marks the folder that will hold `dest` (and the partial download beside it) as excluded
    /// from iCloud and device backups, creating it if needed. `pull` does this itself.
    public static func excludeFromBackup(folderOf dest: String) {
        var folder = URL(fileURLWithPath: dest).deletingLastPathComponent()
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var values = URLResourceValues()
        values.isExcludedFromBackup = true
        try? folder.setResourceValues(values)
    }

    /// Downloads `url` to `dest`, resuming a partial download left by an earlier attempt and
    /// checking the whole file's `sha256` before it appears at `dest`. Ending the iteration
    /// early cancels the download (the partial file stays for a later resume); failures end the
    /// stream with an `EdgeCascadeError` (`.Download`, `.Storage`). `keep` is a file the quota
    /// never evicts (the configured model).
    public static func pull(
        url: String,
        sha256: String,
        dest: String,
        quotaBytes: UInt64? = nil,
        keep: String? = nil,
        deadlineSeconds: Double = 6 * 3600,
        stallTimeoutSeconds: Double = 30
    ) -> AsyncThrowingStream<PullEvent, Error> {
        AsyncThrowingStream { continuation in
            let request = EdgeCascadeBindings.PullRequest(
                url: url,
                sha256: sha256,
                dest: dest,
                deadlineS: deadlineSeconds,
                stallTimeoutS: stallTimeoutSeconds,
                quotaBytes: quotaBytes,
                keep: keep
            )
            // Models are large and can be downloaded again: never in the user's iCloud backup.
            Models.excludeFromBackup(folderOf: dest)
            let handle = pullModel(request: request, listener: PullStreamListener(continuation))
            continuation.onTermination = { _ in handle.cancel() }
        }
    }
}

private final class PullStreamListener: EdgeCascadeBindings.PullListener, @unchecked Sendable {
    private let continuation: AsyncThrowingStream<PullEvent, Error>.Continuation

    init(_ continuation: AsyncThrowingStream<PullEvent, Error>.Continuation) {
        self.continuation = continuation
    }

    func onProgress(progress: EdgeCascadeBindings.PullProgress) {
        continuation.yield(.progress(bytesDone: progress.bytesDone, total: progress.total, bytesPerSecond: progress.bytesPerS))
    }
    func onRetry(retry: EdgeCascadeBindings.PullRetry) {
        continuation.yield(.retrying(attempt: retry.attempt, waitSeconds: retry.waitS, reason: retry.reason, bytesDone: retry.bytesDone))
    }
    func onDone(outcome: PullOutcome) {
        continuation.yield(.done(outcome))
        continuation.finish()
    }
    func onFailed(error: EdgeCascadeError) {
        continuation.finish(throwing: error)
    }
}
