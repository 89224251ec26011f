// The idiomatic Kotlin surface of EdgeCascade. Hand-written; the generated UniFFI bindings
// (packages uniffi.edgecascade and uniffi.edgecascade_ffi) are produced from the native library
// by scripts/build-kotlin-jvm.sh and never edited.
package dev.edgecascade

import java.util.concurrent.atomic.AtomicBoolean
import kotlin.coroutines.resume
import kotlin.coroutines.resumeWithException
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.suspendCancellableCoroutine
import kotlinx.coroutines.withContext
import uniffi.edgecascade_ffi.ChatListener
import uniffi.edgecascade_ffi.Runtime
import uniffi.edgecascade_ffi.configFromToml
import uniffi.edgecascade_ffi.defaultConfig
import uniffi.edgecascade_ffi.defaultRemoteConfig
import uniffi.edgecascade.ChatMessage as FfiMessage
import uniffi.edgecascade.ChatRequest as FfiRequest
import uniffi.edgecascade.Response as FfiResponse

/** Every failure: the subclass is the stable kind, the message the human text. */
typealias EdgeCascadeException = uniffi.edgecascade_ffi.EdgeCascadeException
/** Where an answer came from: LOCAL, REMOTE, ESCALATED, DEGRADED_LOCAL. */
typealias Route = uniffi.edgecascade.Route
/** The stable code for why a request took its route. */
typealias Reason = uniffi.edgecascade.Reason
/** Which tier produced text. */
typealias Tier = uniffi.edgecascade.Tier
/** Who wrote a message. */
typealias Role = uniffi.edgecascade.Role
/** Why generation ended. */
typealias FinishReason = uniffi.edgecascade.FinishReason
/** Force a tier, or let the router and cascade decide. */
typealias Policy = uniffi.edgecascade.PolicyOverride
/** Cost of one answer in USD, and what it would have cost all-remote. */
typealias Cost = uniffi.edgecascade.Cost
/** Timings of one answer. */
typealias Timings = uniffi.edgecascade.Timings
/** The local model's confidence in its answer. */
typealias Confidence = uniffi.edgecascade.Confidence
/** Requests ended so far, by outcome, and those in flight. */
typealias RuntimeStats = uniffi.edgecascade.RuntimeStats
/** The answer's shape. Locally, JSON formats constrain decoding; every JSON answer is checked. */
sealed class ResponseFormat {
    /** Free text. */
    object Text : ResponseFormat()
    /** Any JSON object. */
    object JsonObject : ResponseFormat()
    /** JSON matching [schema], a JSON schema as JSON text. */
    data class JsonSchema(val name: String, val schema: String, val strict: Boolean = true) : ResponseFormat()

    internal fun toFfi(): uniffi.edgecascade.ResponseFormat = when (this) {
        Text -> uniffi.edgecascade.ResponseFormat.Text
        JsonObject -> uniffi.edgecascade.ResponseFormat.JsonObject
        is JsonSchema -> uniffi.edgecascade.ResponseFormat.JsonSchema(name, schema, strict)
    }
}

/** An OpenAI-compatible endpoint for the remote tier. */
data class RemoteEndpoint(
    val baseUrl: String,
    val model: String,
    /** The API key; never logged. */
    val apiKey: String? = null,
    /** Seconds an escalation may take, retries included. */
    val deadlineSeconds: Double = 90.0,
)

/**
 * What the runtime runs with. `localModel` alone is enough for on-device answers; without it a
 * `remote` endpoint answers everything until [EdgeCascade.setLocalModel] loads a model.
 * `toml` starts from a desktop-style config file's text; the other fields override it.
 */
data class EdgeCascadeConfig(
    val localModel: String? = null,
    val remote: RemoteEndpoint? = null,
    /** Escalate when the local answer's mean token log-probability is below this. */
    val cascadeThreshold: Double? = null,
    val threads: Int? = null,
    val contextSize: Int? = null,
    /** Requests served at once by the local model; more queue. */
    val parallel: Int = 1,
    /** Where cost records go (a JSONL file); none by default. */
    val ledgerPath: String? = null,
    /**
     * Most memory the model may take, in MB (weights, KV cache, compute buffers, estimated
     * before loading); by default the memory the system reports available. A model that does
     * not fit fails with [EdgeCascadeException.InsufficientMemory] instead of getting the app
     * killed.
     */
    val memoryLimitMb: Long? = null,
    val toml: String? = null,
)

/** One chat turn. An assistant turn may carry [toolCalls]; a TOOL turn answers [toolCallId]. */
data class Message(
    val role: Role,
    val content: String,
    val toolCalls: List<ToolCall> = emptyList(),
    val toolCallId: String? = null,
) {
    companion object {
        fun system(text: String) = Message(Role.SYSTEM, text)
        fun user(text: String) = Message(Role.USER, text)
        fun assistant(text: String) = Message(Role.ASSISTANT, text)
        /** The assistant's turn that made [calls] (from [ChatResponse.toolCalls]). */
        fun assistant(text: String, calls: List<ToolCall>) = Message(Role.ASSISTANT, text, calls)
        /** What the app's function returned for the call [callId]. */
        fun toolResult(callId: String, result: String) = Message(Role.TOOL, result, toolCallId = callId)
    }
}

/** A function the model may call. [parameters] is a JSON schema of an object, as JSON text. */
data class Tool(val name: String, val description: String? = null, val parameters: String = "")

/** One call the model made; [arguments] is a JSON object as JSON text. */
data class ToolCall(val id: String, val name: String, val arguments: String)

/** Whether the model must call a tool. Locally, [Required] and [Function] constrain decoding to a valid call. */
sealed class ToolChoice {
    /** The model answers in text or calls tools. */
    object Auto : ToolChoice()
    /** Text only. */
    object None : ToolChoice()
    /** At least one call. */
    object Required : ToolChoice()
    /** A call to the function [name]. */
    data class Function(val name: String) : ToolChoice()

    internal fun toFfi(): uniffi.edgecascade.ToolChoice = when (this) {
        Auto -> uniffi.edgecascade.ToolChoice.Auto
        None -> uniffi.edgecascade.ToolChoice.None
        Required -> uniffi.edgecascade.ToolChoice.Required
        is Function -> uniffi.edgecascade.ToolChoice.Function(name)
    }
}

/** A chat completion request. */
data class ChatRequest(
    val messages: List<Message>,
    val maxTokens: Int = 256,
    /** 0 is greedy (deterministic). */
    val temperature: Float = 0.7f,
    val topP: Float = 0.95f,
    val seed: Int? = null,
    val stop: List<String> = emptyList(),
    val policy: Policy = Policy.AUTO,
    /** A private request never leaves the device. */
    val private: Boolean = false,
    /** Hold the local draft until the cascade settles: never stream text that escalation replaces. */
    val holdDraft: Boolean = false,
    /** Text, any JSON object, or JSON matching a schema (`ResponseFormat.JsonSchema(name, schemaJson, strict)`). */
    val responseFormat: ResponseFormat = ResponseFormat.Text,
    /** Functions the model may call; its calls arrive in [ChatResponse.toolCalls]. */
    val tools: List<Tool> = emptyList(),
    val toolChoice: ToolChoice = ToolChoice.Auto,
    /**
     * The task's name, when the app has one: the hidden-state probe (`[cascade] probe`) learns
     * per-task terms by name. "choice", "number", "exact" and "yesno" also hint the answer kind.
     */
    val task: String? = null,
) {
    companion object {
        /** A single user question. */
        fun user(text: String, maxTokens: Int = 256, temperature: Float = 0.7f) =
            ChatRequest(listOf(Message.user(text)), maxTokens, temperature)
    }
}

/** The ledger's totals over a period ([EdgeCascade.costReport]). */
data class CostReport(
    val requests: Long,
    /** Requests per route name ("local", "escalated", "degraded_local", ...). */
    val byRoute: Map<String, Long>,
    val escalationRate: Double,
    val localUsd: Double,
    val remoteUsd: Double,
    val totalUsd: Double,
    /** What the same requests would have cost all-remote. */
    val allRemoteUsd: Double,
    /** allRemoteUsd - totalUsd. */
    val savingsUsd: Double,
)

/** Token counts of one answer. */
data class Usage(
    val promptTokens: Int,
    val completionTokens: Int,
    val estimated: Boolean,
    /** Prompt tokens the local model actually evaluated: fewer than [promptTokens] when the prefix cache reused earlier turns. */
    val promptTokensEvaluated: Int = promptTokens,
)

/** A finished answer with its route, usage, cost, timings and confidence. */
data class ChatResponse(
    val text: String,
    val route: Route,
    val reason: Reason,
    val reasonDetail: String,
    val remoteError: String?,
    val finishReason: FinishReason,
    val usage: Usage,
    val cost: Cost,
    val timings: Timings,
    val confidence: Confidence?,
    val id: String,
    /** With a JSON response format or tools: why the answer or a call is not valid; null when it is. */
    val formatError: String? = null,
    /** The model's calls to the request's tools (then [finishReason] is TOOL_CALLS). */
    val toolCalls: List<ToolCall> = emptyList(),
)

/** What [EdgeCascade.stream] emits: tokens, maybe an escalation, then the final answer. */
sealed class ChatEvent {
    data class Token(val text: String, val tier: Tier) : ChatEvent()
    /** The local text so far is being replaced by the remote tier's answer. */
    data class Escalating(val reason: Reason) : ChatEvent()
    /**
     * The escalation gave no answer ([detail] says why): drop the text received since
     * [Escalating]; the local text received before it stands again, and its continuation follows.
     */
    data class FallingBack(val detail: String) : ChatEvent()
    data class Done(val response: ChatResponse) : ChatEvent()
}

/**
 * The runtime. Loading a model blocks: create it off the main thread, or with [create].
 * Thread-safe: share one instance. [close] it to free the model.
 */
class EdgeCascade(
    config: EdgeCascadeConfig,
    private val dispatcher: CoroutineDispatcher = Dispatchers.IO,
) : AutoCloseable {
    private val runtime: Runtime = Runtime(config.toFfi())
    private val closed = AtomicBoolean(false)

    companion object {
        /** Creates the runtime on [dispatcher] (the model loads there). */
        suspend fun create(
            config: EdgeCascadeConfig,
            dispatcher: CoroutineDispatcher = Dispatchers.IO,
        ): EdgeCascade = withContext(dispatcher) { EdgeCascade(config, dispatcher) }

        /** The native library's version. */
        fun version(): String = uniffi.edgecascade_ffi.edgecascadeVersion()
    }

    /** Answers [request]. Suspends; never blocks the caller's thread. Cancelling stops it. */
    suspend fun complete(request: ChatRequest): ChatResponse {
        checkOpen()
        return suspendCancellableCoroutine { cont ->
            val handle = runtime.startChat(request.toFfi(), object : ChatListener {
                override fun onToken(text: String, tier: Tier) {}
                override fun onEscalating(reason: Reason) {}
                override fun onFallingBack(detail: String) {}
                override fun onDone(response: FfiResponse) {
                    cont.resume(response.toSdk())
                }
                override fun onFailed(error: EdgeCascadeException) {
                    cont.resumeWithException(error)
                }
            })
            cont.invokeOnCancellation { handle.cancel() }
        }
    }

    /**
     * Streams [request]'s events. Cold: nothing runs until collected. Leaving the flow early
     * (take(n), a cancelled scope) cancels the Rust generation; a failure ends the flow with
     * an [EdgeCascadeException].
     */
    fun stream(request: ChatRequest): Flow<ChatEvent> = callbackFlow {
        checkOpen()
        val handle = runtime.startChat(request.toFfi(), object : ChatListener {
            override fun onToken(text: String, tier: Tier) {
                trySendBlocking(ChatEvent.Token(text, tier))
            }
            override fun onEscalating(reason: Reason) {
                trySendBlocking(ChatEvent.Escalating(reason))
            }
            override fun onFallingBack(detail: String) {
                trySendBlocking(ChatEvent.FallingBack(detail))
            }
            override fun onDone(response: FfiResponse) {
                trySendBlocking(ChatEvent.Done(response.toSdk()))
                channel.close()
            }
            override fun onFailed(error: EdgeCascadeException) {
                channel.close(error)
            }
        })
        awaitClose { handle.cancel() }
    }

    /** Loads the model at [path] and switches to it; requests in flight finish on the old one. */
    suspend fun setLocalModel(path: String) {
        checkOpen()
        withContext(dispatcher) { runtime.setLocalModel(path) }
    }

    /** Requests ended so far, by outcome, and those in flight. */
    fun stats(): RuntimeStats {
        checkOpen()
        return runtime.stats()
    }

    /**
     * Tells the router about the device: heat, battery, network, background (see
     * [DeviceState]). Requests already under way keep the state they started with. An
     * [AndroidDeviceMonitor] keeps it current on Android.
     */
    fun setDeviceState(state: DeviceState) {
        checkOpen()
        runtime.setDeviceState(state.toFfi())
    }

    /** The device state last reported. */
    val deviceState: DeviceState
        get() {
            checkOpen()
            return runtime.deviceState().toSdk()
        }

    /**
     * The ledger's totals since [sinceUnixSeconds] (all time when null): requests by route, the
     * spend per tier and the saving against sending everything remote. Empty without
     * [EdgeCascadeConfig.ledgerPath]. Reads the ledger file: call it off the main thread.
     */
    fun costReport(sinceUnixSeconds: Double? = null): CostReport {
        checkOpen()
        val r = runtime.costReport(sinceUnixSeconds)
        return CostReport(
            requests = r.requests.toLong(),
            byRoute = r.byRoute.mapValues { it.value.toLong() },
            escalationRate = r.escalationRate,
            localUsd = r.localUsd,
            remoteUsd = r.remoteUsd,
            totalUsd = r.totalUsd,
            allRemoteUsd = r.allRemoteUsd,
            savingsUsd = r.savingsUsd,
        )
    }

    /** Frees caches and idle contexts; call it on the platform's memory warnings. */
    fun trimMemory() {
        if (!closed.get()) runtime.trimMemory()
    }

    /**
     * [close] on the runtime's dispatcher: suspends while requests in flight end and the model is
     * freed, never blocking the caller's thread (call it from the main thread, e.g. in
     * `ViewModel.onCleared` through a scope that outlives it).
     */
    suspend fun closeAsync() = withContext(dispatcher) { close() }

    /** Cancels requests in flight, waits for them, frees the model; blocks. Idempotent. */
    override fun close() {
        if (closed.compareAndSet(false, true)) {
            runtime.shutdown()
            runtime.close()
        }
    }

    private fun checkOpen() {
        if (closed.get()) throw uniffi.edgecascade_ffi.EdgeCascadeException.Closed("the runtime is closed")
    }
}

internal fun EdgeCascadeConfig.toFfi(): uniffi.edgecascade.Config {
    val base = toml?.let { configFromToml(it) } ?: defaultConfig()
    val local = base.local.copy(
        model = localModel ?: base.local.model,
        threads = threads?.toUInt() ?: base.local.threads,
        nCtx = contextSize?.toUInt() ?: base.local.nCtx,
        parallel = parallel.toUInt(),
        memoryLimitMb = memoryLimitMb?.toULong() ?: base.local.memoryLimitMb,
    )
    val remoteConfig = remote?.let {
        defaultRemoteConfig(it.baseUrl, it.model).copy(apiKey = it.apiKey, deadlineS = it.deadlineSeconds)
    } ?: base.remote
    val cascade = cascadeThreshold?.let { base.cascade.copy(threshold = it) } ?: base.cascade
    val ledger = ledgerPath?.let { base.ledger.copy(path = it) } ?: base.ledger
    return base.copy(local = local, remote = remoteConfig, cascade = cascade, ledger = ledger)
}

internal fun ChatRequest.toFfi(): FfiRequest {
    val base = uniffi.edgecascade.Sampling(
        temperature = temperature,
        topK = 40u,
        topP = topP,
        minP = 0.05f,
        repeatPenalty = 1.0f,
        repeatLastN = 64u,
        seed = seed?.toUInt(),
    )
    return FfiRequest(
        messages = messages.map { m ->
            FfiMessage(m.role, m.content, m.toolCalls.map { it.toFfi() }, m.toolCallId)
        },
        maxTokens = maxTokens.coerceAtLeast(0).toUInt(),
        sampling = base,
        stop = stop,
        policy = policy,
        private = private,
        taskHint = task?.let { kindOf(it) },
        task = task,
        holdDraft = holdDraft,
        responseFormat = responseFormat.toFfi(),
        tools = tools.map { uniffi.edgecascade.Tool(it.name, it.description, it.parameters) },
        toolChoice = toolChoice.toFfi(),
    )
}

/** The answer kind a task name hints, when it is one. */
internal fun kindOf(task: String): uniffi.edgecascade.Kind? = when (task) {
    "choice" -> uniffi.edgecascade.Kind.CHOICE
    "number" -> uniffi.edgecascade.Kind.NUMBER
    "exact" -> uniffi.edgecascade.Kind.EXACT
    "yesno" -> uniffi.edgecascade.Kind.YES_NO
    else -> null
}

internal fun ToolCall.toFfi() = uniffi.edgecascade.ToolCall(id, name, arguments)

internal fun FfiResponse.toSdk() = ChatResponse(
    text = text,
    route = route,
    reason = reason,
    reasonDetail = reasonDetail,
    remoteError = remoteError,
    finishReason = finishReason,
    usage = Usage(usage.promptTokens.toInt(), usage.completionTokens.toInt(), usage.estimated, usage.promptTokensEvaluated.toInt()),
    cost = cost,
    timings = timings,
    confidence = confidence,
    id = id,
    formatError = formatError,
    toolCalls = toolCalls.map { ToolCall(it.id, it.name, it.arguments) },
)
