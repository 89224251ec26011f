// A conversation over one runtime: history, prefix reuse across turns, the tool-call loop.
package dev.edgecascade

import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock

/**
 * A conversation. Each [send] adds the user's turn and the answer to [history] and sends the
 * whole history: the local tier keeps the KV cache of what it has already read (the prefix
 * cache), so a turn evaluates only its new tokens ([Usage.promptTokensEvaluated]).
 *
 * With [tools], a call the model makes runs the app's handler for it (a suspend function from
 * the call's JSON arguments to the result text), the result goes back, and the model answers
 * again, up to [maxToolRounds] rounds; the last round may not call tools, so [send] always ends
 * in a text answer. Turns run one at a time. Cancelling [send] (its coroutine) stops the
 * generation or the handler and leaves [history] as it was before the turn; so does a failure.
 *
 * [settings] is the template of every request (tokens, temperature, policy, privacy ...); its
 * messages and tools are the session's.
 */
class ChatSession(
    private val ai: EdgeCascade,
    system: String? = null,
    private val tools: Map<Tool, suspend (arguments: String) -> String> = emptyMap(),
    private val settings: ChatRequest = ChatRequest(emptyList()),
    private val maxToolRounds: Int = 4,
) {
    private val turn = Mutex()
    private val messages = mutableListOf<Message>().apply { system?.let { add(Message.system(it)) } }

    /** The conversation so far: the system message, then user, tool and assistant turns. */
    val history: List<Message> get() = synchronized(messages) { messages.toList() }

    /** Sends [text] as the user's turn; the answer, after any tool rounds. */
    suspend fun send(text: String): ChatResponse = turn.withLock {
        var sent = history + Message.user(text)
        val offered = tools.keys.toList()
        for (round in 0..maxToolRounds) {
            val choice = when {
                offered.isEmpty() || round == maxToolRounds -> ToolChoice.None
                round == 0 -> settings.toolChoice
                else -> ToolChoice.Auto
            }
            val r = ai.complete(
                settings.copy(messages = sent, tools = offered, toolChoice = choice),
            )
            if (r.toolCalls.isEmpty()) {
                synchronized(messages) {
                    messages.clear()
                    messages.addAll(sent + Message.assistant(r.text))
                }
                return@withLock r
            }
            val results = r.toolCalls.map { call -> Message.toolResult(call.id, run(call)) }
            sent = sent + Message.assistant(r.text, r.toolCalls) + results
        }
        error("the last round offers no tools, so it answers in text")
    }

    /** Forgets every turn; the system message stays. */
    fun clear() = synchronized(messages) { messages.retainAll { it.role == Role.SYSTEM } }

    private suspend fun run(call: ToolCall): String {
        val handler = tools.entries.firstOrNull { it.key.name == call.name }?.value
            ?: return """{"error": "no tool named ${call.name.replace("\"", "")}"}"""
        return handler(call.arguments)
    }
}
