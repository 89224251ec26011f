// Model downloads: resumable, verified by sha256 before the file appears at its path.
package dev.edgecascade

import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import uniffi.edgecascade_ffi.PullListener
import uniffi.edgecascade_ffi.pullModel

/** A finished download: the verified file, and how it got there. */
typealias PullOutcome = uniffi.edgecascade.PullOutcome

/** What [Models.pull] emits: progress and retries, then the verified file. */
sealed class PullEvent {
    data class Progress(val bytesDone: Long, val total: Long?, val bytesPerSecond: Double) : PullEvent()
    /**
     * An attempt failed ([reason], such as "HTTP 503"); the next follows in [waitSeconds].
     * [attempt] counts the attempts in a row that received nothing; after 8 the download
     * fails with `EdgeCascadeException.Download`. [bytesDone] stay on disk for the resume.
     */
    data class Retrying(val attempt: Int, val waitSeconds: Double, val reason: String, val bytesDone: Long) : PullEvent()
    data class Done(val outcome: PullOutcome) : PullEvent()
}

/** A known model: name, URL, size, sha256, licence, context length, recommended use. */
typealias CatalogModel = uniffi.edgecascade.CatalogModel

object Models {
    /** The built-in catalog of known models. */
    fun catalog(): List<CatalogModel> = uniffi.edgecascade_ffi.modelCatalog()

    /**
     * Downloads the catalog model [name] to [dest] (see the other [pull]).
     * @throws EdgeCascadeException.InvalidRequest for an unknown name or one with no download URL.
     */
    fun pull(name: String, dest: String, quotaBytes: Long? = null, keep: String? = null): Flow<PullEvent> {
        val m = catalog().firstOrNull { it.name == name }
            ?: throw uniffi.edgecascade_ffi.EdgeCascadeException.InvalidRequest("$name is not in the catalog")
        val url = m.url
            ?: throw uniffi.edgecascade_ffi.EdgeCascadeException.InvalidRequest("$name has no download URL: ${m.recommendedUse}")
        return pull(url, m.sha256, dest, quotaBytes, keep)
    }

    /**
     * Downloads [url] to [dest], resuming a partial download left by an earlier attempt and
     * checking the whole file's [sha256] before it appears at [dest]. Cold: nothing runs until
     * collected; leaving the flow cancels the download (the partial file stays for a later
     * resume). Failures end the flow with an [EdgeCascadeException] (`Download`, `Storage`).
     * [keep] is a file the quota never evicts (the configured model).
     */
    fun pull(
        url: String,
        sha256: String,
        dest: String,
        quotaBytes: Long? = null,
        keep: String? = null,
        deadlineSeconds: Double = 6.0 * 3600,
        stallTimeoutSeconds: Double = 30.0,
    ): Flow<PullEvent> = callbackFlow {
        val request = uniffi.edgecascade.PullRequest(
            url = url,
            sha256 = sha256,
            dest = dest,
            deadlineS = deadlineSeconds,
            stallTimeoutS = stallTimeoutSeconds,
            quotaBytes = quotaBytes?.toULong(),
            keep = keep,
        )
        val handle = pullModel(request, object : PullListener {
            override fun onProgress(progress: uniffi.edgecascade.PullProgress) {
                trySend(PullEvent.Progress(progress.bytesDone.toLong(), progress.total?.toLong(), progress.bytesPerS))
            }
            override fun onRetry(retry: uniffi.edgecascade.PullRetry) {
                trySend(PullEvent.Retrying(retry.attempt.toInt(), retry.waitS, retry.reason, retry.bytesDone.toLong()))
            }
            override fun onDone(outcome: PullOutcome) {
                trySendBlocking(PullEvent.Done(outcome))
                channel.close()
            }
            override fun onFailed(error: EdgeCascadeException) {
                channel.close(error)
            }
        })
        awaitClose { handle.cancel() }
    }
}
