// The idiomatic Swift surface of EdgeCascade, the same shape as the Kotlin SDK. Hand-written;
// the generated UniFFI bindings (module EdgeCascadeBindings) come from the native library
// (scripts/build-xcframework.sh) and are never edited. No Swift toolchain runs on our CI:
// scripts/check-swift.sh parses this file and checks every generated name it uses (README).
import EdgeCascadeBindings
import Foundation
import os

/// Where an answer came from: local, remote, escalated, degradedLocal.
public typealias Route = EdgeCascadeBindings.Route
/// The stable code for why a request took its route.
public typealias Reason = EdgeCascadeBindings.Reason
/// Which tier produced text.
public typealias Tier = EdgeCascadeBindings.Tier
/// Who wrote a message.
public typealias Role = EdgeCascadeBindings.Role
/// Why generation ended.
public typealias FinishReason = EdgeCascadeBindings.FinishReason
/// Force a tier, or let the router and cascade decide.
public typealias Policy = EdgeCascadeBindings.PolicyOverride
/// Cost of one answer in USD, and what it would have cost all-remote.
public typealias Cost = EdgeCascadeBindings.Cost
/// Timings of one answer.
public typealias Timings = EdgeCascadeBindings.Timings
/// The local model's confidence in its answer.
public typealias Confidence = EdgeCascadeBindings.Confidence
/// Requests ended so far, by outcome, and those in flight.
public typealias RuntimeStats = EdgeCascadeBindings.RuntimeStats
/// The answer's shape: `.text`, `.jsonObject`, or `.jsonSchema(name:schema:strict:)` with the
/// schema as JSON text.
public typealias ResponseFormat = EdgeCascadeBindings.ResponseFormat
/// A function the model may call: `Tool(name:description:parameters:)`, the parameters a JSON
/// schema of an object as JSON text.
public typealias Tool = EdgeCascadeBindings.Tool
/// One call the model made: its `id`, the function's `name`, the `arguments` as JSON text.
public typealias ToolCall = EdgeCascadeBindings.ToolCall
/// Whether the model must call a tool: `.auto`, `.none`, `.required`, `.function(name:)`.
/// Locally, `.required` and `.function` constrain decoding to a valid call.
public typealias ToolChoice = EdgeCascadeBindings.ToolChoice
/// Every failure: the case is the stable kind, its message the human text.
public typealias EdgeCascadeError = EdgeCascadeBindings.EdgeCascadeError

/// An OpenAI-compatible endpoint for the remote tier.
public struct RemoteEndpoint: Sendable, Equatable {
    public var baseUrl: String
    public var model: String
    /// The API key; never logged.
    public var apiKey: String?
    /// Seconds an escalation may take, retries included.
    public var deadlineSeconds: Double

    public init(baseUrl: String, model: String, apiKey: String? = nil, deadlineSeconds: Double = 90) {
        self.baseUrl = baseUrl
        self.model = model
        self.apiKey = apiKey
        self.deadlineSeconds = deadlineSeconds
    }
}

/// What the runtime runs with. `localModel` alone is enough for on-device answers; without it
/// a `remote` endpoint answers everything until `setLocalModel` loads a model. `toml` starts
/// from a desktop-style config file's text; the other fields override it.
public struct EdgeCascadeConfig: Sendable, Equatable {
    public var localModel: String?
    public var remote: RemoteEndpoint?
    /// Escalate when the local answer's mean token log-probability is below this.
    public var cascadeThreshold: Double?
    public var threads: Int?
    public var contextSize: Int?
    /// Requests served at once by the local model; more queue.
    public var parallel: Int
    /// Where cost records go (a JSONL file); none by default.
    public var ledgerPath: String?
    /// Most memory the model may take, in MB (weights, KV cache, compute buffers, estimated
    /// before loading). `nil`: what `os_proc_available_memory()` reports when the runtime is
    /// created. A model that does not fit throws `.InsufficientMemory` instead of getting the
    /// app killed.
    public var memoryLimitMb: Int?
    public var toml: String?

    public init(
        localModel: String? = nil,
        remote: RemoteEndpoint? = nil,
        cascadeThreshold: Double? = nil,
        threads: Int? = nil,
        contextSize: Int? = nil,
        parallel: Int = 1,
        ledgerPath: String? = nil,
        memoryLimitMb: Int? = nil,
        toml: String? = nil
    ) {
        self.localModel = localModel
        self.remote = remote
        self.cascadeThreshold = cascadeThreshold
        self.threads = threads
        self.contextSize = contextSize
        self.parallel = parallel
        self.ledgerPath = ledgerPath
        self.memoryLimitMb = memoryLimitMb
        self.toml = toml
    }
}

/// One chat turn. An assistant turn may carry `toolCalls`; a `.tool` turn answers `toolCallId`.
public struct Message: Sendable, Equatable {
    public var role: Role
    public var content: String
    public var toolCalls: [ToolCall]
    public var toolCallId: String?

    public init(role: Role, content: String, toolCalls: [ToolCall] = [], toolCallId: String? = nil) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
        self.toolCallId = toolCallId
    }

    public static func system(_ text: String) -> Message { Message(role: .system, content: text) }
    public static func user(_ text: String) -> Message { Message(role: .user, content: text) }
    public static func assistant(_ text: String) -> Message { Message(role: .assistant, content: text) }
    /// The assistant's turn that made `calls` (from `ChatResponse.toolCalls`).
    public static func assistant(_ text: String, calls: [ToolCall]) -> Message {
        Message(role: .assistant, content: text, toolCalls: calls)
    }
    /// What the app's function returned for the call `callId`.
    public static func toolResult(callId: String, _ result: String) -> Message {
        Message(role: .tool, content: result, toolCallId: callId)
    }
}

/// A chat completion request.
public struct ChatRequest: Sendable, Equatable {
    public var messages: [Message]
    public var maxTokens: Int
    /// 0 is greedy (deterministic).
    public var temperature: Float
    public var topP: Float
    public var seed: UInt32?
    public var stop: [String]
    public var policy: Policy
    /// A private request never leaves the device.
    public var isPrivate: Bool
    /// Hold the local draft until the cascade settles: never stream text that escalation replaces.
    public var holdDraft: Bool
    /// Text, any JSON object, or JSON matching a schema.
    public var responseFormat: ResponseFormat
    /// Functions the model may call; its calls arrive in `ChatResponse.toolCalls`.
    public var tools: [Tool]
    public var toolChoice: ToolChoice
    /// The task's name, when the app has one: the hidden-state probe (`[cascade] probe`) learns
    /// per-task terms by name. "choice", "number", "exact" and "yesno" also hint the answer kind.
    public var task: String?

    public init(
        messages: [Message],
        maxTokens: Int = 256,
        temperature: Float = 0.7,
        topP: Float = 0.95,
        seed: UInt32? = nil,
        stop: [String] = [],
        policy: Policy = .auto,
        isPrivate: Bool = false,
        holdDraft: Bool = false,
        responseFormat: ResponseFormat = .text,
        tools: [Tool] = [],
        toolChoice: ToolChoice = .auto,
        task: String? = nil
    ) {
        self.messages = messages
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
        self.stop = stop
        self.policy = policy
        self.isPrivate = isPrivate
        self.holdDraft = holdDraft
        self.responseFormat = responseFormat
        self.tools = tools
        self.toolChoice = toolChoice
        self.task = task
    }

    /// A single user question.
    public static func user(_ text: String, maxTokens: Int = 256, temperature: Float = 0.7) -> ChatRequest {
        ChatRequest(messages: [.user(text)], maxTokens: maxTokens, temperature: temperature)
    }
}

/// The ledger's totals over a period (`EdgeCascade.costReport`).
public struct CostReport: Sendable, Equatable {
    public var requests: Int
    /// Requests per route name ("local", "escalated", "degraded_local", ...).
    public var byRoute: [String: Int]
    public var escalationRate: Double
    public var localUsd: Double
    public var remoteUsd: Double
    public var totalUsd: Double
    /// What the same requests would have cost all-remote.
    public var allRemoteUsd: Double
    /// `allRemoteUsd - totalUsd`.
    public var savingsUsd: Double
}

/// Token counts of one answer.
public struct Usage: Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Counted by us, not reported by the remote server.
    public var estimated: Bool
    /// Prompt tokens the local model actually evaluated: fewer than `promptTokens` when the
    /// prefix cache reused earlier turns.
    public var promptTokensEvaluated: Int
}

/// A finished answer with its route, usage, cost, timings and confidence.
public struct ChatResponse: Sendable, Equatable {
    public var text: String
    public var route: Route
    public var reason: Reason
    public var reasonDetail: String
    public var remoteError: String?
    public var finishReason: FinishReason
    public var usage: Usage
    public var cost: Cost
    public var timings: Timings
    public var confidence: Confidence?
    public var id: String
    /// With a JSON response format or tools: why the answer or a call is not valid; nil when it is.
    public var formatError: String?
    /// The model's calls to the request's tools (then `finishReason` is `.toolCalls`).
    public var toolCalls: [ToolCall]
}

/// What `EdgeCascade.stream` yields: tokens, maybe an escalation, then the final answer.
public enum ChatEvent: Sendable, Equatable {
    case token(text: String, tier: Tier)
    /// The local text so far is being replaced by the remote tier's answer.
    case escalating(reason: Reason)
    /// The escalation gave no answer (`detail` says why): drop the text received since
    /// `.escalating`; the local text received before it stands again, and its continuation
    /// follows.
    case fallingBack(detail: String)
    case done(ChatResponse)
}

/// The runtime. Loading a model blocks: create it off the main thread, or with `create`.
/// Thread-safe: share one instance. `close()` it to free the model.
public final class EdgeCascade: @unchecked Sendable {
    private let runtime: EdgeCascadeBindings.Runtime
    private let lock = NSLock()
    private var closed = false

    /// Loads the model (blocking) and prepares the remote tier.
    public init(_ config: EdgeCascadeConfig) throws {
        runtime = try EdgeCascadeBindings.Runtime(config: config.toFfi())
    }

    /// Creates the runtime off the caller's thread (the model loads there).
    public static func create(_ config: EdgeCascadeConfig) async throws -> EdgeCascade {
        try await Task.detached(priority: .userInitiated) { try EdgeCascade(config) }.value
    }

    /// The native library's version.
    public static var version: String { edgecascadeVersion() }

    /// Answers `request`. Never blocks the caller's thread; cancelling the task stops the
    /// generation and throws `CancellationError`, as Swift's own async APIs do.
    public func complete(_ request: ChatRequest) async throws -> ChatResponse {
        try checkOpen()
        let handle = HandleBox()
        let response = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ChatResponse, Error>) in
                let listener = CompletionListener(continuation)
                handle.set(runtime.startChat(request: request.toFfi(), listener: listener))
            }
        } onCancel: {
            handle.cancel()
        }
        try Task.checkCancellation()
        return response
    }

    /// Streams `request`'s events; the generation starts at once. Ending the iteration early
    /// (breaking out, a cancelled task) cancels the Rust generation; a failure ends the stream
    /// with an `EdgeCascadeError`.
    public func stream(_ request: ChatRequest) -> AsyncThrowingStream<ChatEvent, Error> {
        AsyncThrowingStream { continuation in
            do {
                try checkOpen()
            } catch {
                continuation.finish(throwing: error)
                return
            }
            let handle = runtime.startChat(request: request.toFfi(), listener: StreamListener(continuation))
            continuation.onTermination = { _ in handle.cancel() }
        }
    }

    /// Loads the model at `path` and switches to it; requests in flight finish on the old one.
    public func setLocalModel(_ path: String) async throws {
        try checkOpen()
        let runtime = self.runtime
        _ = try await Task.detached(priority: .userInitiated) { try runtime.setLocalModel(path: path) }.value
    }

    /// Tells the router about the device (see `DeviceState`); a `DeviceMonitor` keeps it current.
    public func setDeviceState(_ state: DeviceState) throws {
        try checkOpen()
        runtime.setDeviceState(state: state.toFfi())
    }

    /// The device state last reported.
    public var deviceState: DeviceState { DeviceState(runtime.deviceState()) }

    /// Requests ended so far, by outcome, and those in flight.
    public func stats() throws -> RuntimeStats {
        try checkOpen()
        return runtime.stats()
    }

    /// Frees caches and idle contexts; call it on memory warnings.
    /// The ledger's totals since `sinceUnixSeconds` (all time when `nil`): requests by route,
    /// the spend per tier and the saving against sending everything remote. Empty without
    /// `ledgerPath`. Reads the ledger file: call it off the main actor.
    public func costReport(sinceUnixSeconds: Double? = nil) throws -> CostReport {
        try checkOpen()
        let r = try runtime.costReport(sinceUnixS: sinceUnixSeconds)
        return CostReport(
            requests: Int(r.requests),
            byRoute: r.byRoute.mapValues { Int($0) },
            escalationRate: r.escalationRate,
            localUsd: r.localUsd,
            remoteUsd: r.remoteUsd,
            totalUsd: r.totalUsd,
            allRemoteUsd: r.allRemoteUsd,
            savingsUsd: r.savingsUsd
        )
    }

    public func trimMemory() {
        if !isClosed { runtime.trimMemory() }
    }

    /// Cancels requests in flight, waits for them, frees the model. Idempotent.
    /// `close()` off the caller's thread: suspends while requests in flight end and the model
    /// is freed (call it from the main actor).
    public func closeAsync() async {
        await Task.detached(priority: .userInitiated) { self.close() }.value
    }

    public func close() {
        let first: Bool = lock.sync {
            defer { closed = true }
            return !closed
        }
        if first { runtime.shutdown() }
    }

    private var isClosed: Bool { lock.sync { closed } }

    private func checkOpen() throws {
        if isClosed { throw EdgeCascadeError.Closed(message: "the runtime is closed") }
    }
}

/// Holds a started request's handle for a cancellation that may arrive before it exists.
private final class HandleBox: @unchecked Sendable {
    private let lock = NSLock()
    private var handle: EdgeCascadeBindings.GenerationHandle?
    private var cancelled = false

    func set(_ h: EdgeCascadeBindings.GenerationHandle) {
        let cancelNow: Bool = lock.sync {
            handle = h
            return cancelled
        }
        if cancelNow { h.cancel() }
    }

    func cancel() {
        let h: EdgeCascadeBindings.GenerationHandle? = lock.sync {
            cancelled = true
            return handle
        }
        h?.cancel()
    }
}

/// Resumes a continuation with the one terminal event the runtime guarantees.
private final class CompletionListener: EdgeCascadeBindings.ChatListener, @unchecked Sendable {
    private let continuation: CheckedContinuation<ChatResponse, Error>

    init(_ continuation: CheckedContinuation<ChatResponse, Error>) {
        self.continuation = continuation
    }

    func onToken(text: String, tier: Tier) {}
    func onEscalating(reason: Reason) {}
    func onFallingBack(detail: String) {}
    func onDone(response: EdgeCascadeBindings.Response) {
        continuation.resume(returning: ChatResponse(response))
    }
    func onFailed(error: EdgeCascadeError) {
        continuation.resume(throwing: error)
    }
}

/// Feeds a stream; callbacks may arrive on any thread, which the continuation allows.
private final class StreamListener: EdgeCascadeBindings.ChatListener, @unchecked Sendable {
    private let continuation: AsyncThrowingStream<ChatEvent, Error>.Continuation

    init(_ continuation: AsyncThrowingStream<ChatEvent, Error>.Continuation) {
        self.continuation = continuation
    }

    func onToken(text: String, tier: Tier) {
        continuation.yield(.token(text: text, tier: tier))
    }
    func onEscalating(reason: Reason) {
        continuation.yield(.escalating(reason: reason))
    }
    func onFallingBack(detail: String) {
        continuation.yield(.fallingBack(detail: detail))
    }
    func onDone(response: EdgeCascadeBindings.Response) {
        continuation.yield(.done(ChatResponse(response)))
        continuation.finish()
    }
    func onFailed(error: EdgeCascadeError) {
        continuation.finish(throwing: error)
    }
}

extension EdgeCascadeConfig {
    func toFfi() throws -> EdgeCascadeBindings.Config {
        var config = try toml.map { try configFromToml(toml: $0) } ?? defaultConfig()
        if let localModel { config.local.model = localModel }
        if let threads { config.local.threads = UInt32(threads) }
        if let contextSize { config.local.nCtx = UInt32(contextSize) }
        config.local.parallel = UInt32(max(parallel, 1))
        if let memoryLimitMb {
            config.local.memoryLimitMb = UInt64(max(memoryLimitMb, 0))
        } else if config.local.memoryLimitMb == nil {
            #if os(iOS)
            // iOS gives each app its own limit, below the device's free memory.
            config.local.memoryLimitMb = UInt64(os_proc_available_memory() / 1_000_000)
            #endif
        }
        if let remote {
            var r = defaultRemoteConfig(baseUrl: remote.baseUrl, model: remote.model)
            r.apiKey = remote.apiKey
            r.deadlineS = remote.deadlineSeconds
            config.remote = r
        }
        if let cascadeThreshold { config.cascade.threshold = cascadeThreshold }
        if let ledgerPath { config.ledger.path = ledgerPath }
        return config
    }
}

extension ChatRequest {
    func toFfi() -> EdgeCascadeBindings.ChatRequest {
        let sampling = EdgeCascadeBindings.Sampling(
            temperature: temperature,
            topK: 40,
            topP: topP,
            minP: 0.05,
            repeatPenalty: 1.0,
            repeatLastN: 64,
            seed: seed
        )
        return EdgeCascadeBindings.ChatRequest(
            messages: messages.map {
                EdgeCascadeBindings.ChatMessage(
                    role: $0.role, content: $0.content, toolCalls: $0.toolCalls, toolCallId: $0.toolCallId
                )
            },
            maxTokens: UInt32(max(maxTokens, 0)),
            sampling: sampling,
            stop: stop,
            policy: policy,
            private: isPrivate,
            taskHint: kindOf(task),
            task: task,
            holdDraft: holdDraft,
            responseFormat: responseFormat,
            tools: tools,
            toolChoice: toolChoice
        )
    }
}

/// The answer kind a task name hints, when it is one.
func kindOf(_ task: String?) -> EdgeCascadeBindings.Kind? {
    guard let name = task else { return nil }
    switch name {
    case "choice": return .choice
    case "number": return .number
    case "exact": return .exact
    case "yesno": return .yesNo
    default: return nil
    }
}

extension ChatResponse {
    init(_ r: EdgeCascadeBindings.Response) {
        self.init(
            text: r.text,
            route: r.route,
            reason: r.reason,
            reasonDetail: r.reasonDetail,
            remoteError: r.remoteError,
            finishReason: r.finishReason,
            usage: Usage(
                promptTokens: Int(r.usage.promptTokens),
                completionTokens: Int(r.usage.completionTokens),
                estimated: r.usage.estimated,
                promptTokensEvaluated: Int(r.usage.promptTokensEvaluated)
            ),
            cost: r.cost,
            timings: r.timings,
            confidence: r.confidence,
            id: r.id,
            formatError: r.formatError,
            toolCalls: r.toolCalls
        )
    }
}

extension NSLock {
    /// Runs `body` holding the lock (`withLock` needs iOS 16).
    func sync<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}
