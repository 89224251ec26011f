// A conversation over one runtime: history, prefix reuse across turns, the tool-call loop.
import EdgeCascadeBindings
import Foundation

/// A conversation. Each `send` adds the user's turn and the answer to `history` and sends the
/// whole history: the local tier keeps the KV cache of what it has already read, so a turn
/// evaluates only its new tokens (`Usage.promptTokensEvaluated`).
///
/// With `tools`, a call the model makes runs the app's handler for it (the call's JSON
/// arguments in, the result text out), the result goes back and the model answers again, up to
/// `maxToolRounds` rounds; the last round may not call tools, so `send` always ends in text.
/// Turns run one at a time. A cancelled task or a failure leaves `history` as it was.
public actor ChatSession {
    public typealias Handler = @Sendable (String) async throws -> String

    private let ai: EdgeCascade
    private let tools: [(Tool, Handler)]
    private let settings: ChatRequest
    private let maxToolRounds: Int
    /// The conversation so far: the system message, then user, tool and assistant turns.
    public private(set) var history: [Message]

    public init(
        _ ai: EdgeCascade,
        system: String? = nil,
        tools: [(Tool, Handler)] = [],
        settings: ChatRequest = ChatRequest(messages: []),
        maxToolRounds: Int = 4
    ) {
        self.ai = ai
        self.tools = tools
        self.settings = settings
        self.maxToolRounds = maxToolRounds
        self.history = system.map { [Message.system($0)] } ?? []
    }

    /// Sends `text` as the user's turn; the answer, after any tool rounds.
    public func send(_ text: String) async throws -> ChatResponse {
        var sent = history + [Message.user(text)]
        let offered = tools.map { $0.0 }
        for round in 0...maxToolRounds {
            var request = settings
            request.messages = sent
            request.tools = offered
            if offered.isEmpty || round == maxToolRounds {
                request.toolChoice = .none
            } else if round > 0 {
                request.toolChoice = .auto
            }
            let answer = try await ai.complete(request)
            try Task.checkCancellation()
            if answer.toolCalls.isEmpty {
                history = sent + [Message.assistant(answer.text)]
                return answer
            }
            var results: [Message] = []
            for call in answer.toolCalls {
                results.append(Message.toolResult(callId: call.id, try await run(call)))
            }
            sent += [Message.assistant(answer.text, calls: answer.toolCalls)] + results
        }
        throw CancellationError()  // not reached: the last round offers no tools
    }

    /// Forgets every turn; the system message stays.
    public func clear() {
        history = history.filter { $0.role == .system }
    }

    private func run(_ call: ToolCall) async throws -> String {
        guard let handler = tools.first(where: { $0.0.name == call.name })?.1 else {
            return "{\"error\": \"no tool named \(call.name)\"}"
        }
        return try await handler(call.arguments)
    }
}
