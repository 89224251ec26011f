// The Kotlin SDK on the JVM against the host library and SmolLM2: what the hand-written layer
// adds (suspend, Flow, cancellation on leaving a flow, errors as exceptions, close).
package dev.edgecascade

import java.io.File
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertTrue
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import org.junit.Test

class EdgeCascadeTest {
    private val model: String = run {
        val dir = System.getenv("EDGECASCADE_MODELS") ?: "models"
        val f = File(dir, "smollm2-135m-instruct-q4_1.gguf")
        check(f.exists()) { "missing $f: run scripts/fetch_models.py smollm2" }
        f.path
    }

    private fun greedy(text: String, maxTokens: Int = 16) =
        ChatRequest.user(text, maxTokens = maxTokens, temperature = 0f)

    /** The README's Kotlin quick start, verbatim. */
    @Test
    fun readmeQuickStart() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val answer = ai.complete(ChatRequest.user("What is the capital of France?"))
            println("${answer.text} [${answer.route}, ${answer.reason}, $${answer.cost.totalUsd}]")

            ai.stream(ChatRequest.user("Tell me a joke.")).collect { event ->
                when (event) {
                    is ChatEvent.Token -> print(event.text)
                    is ChatEvent.Escalating -> println("\n(escalating: ${event.reason})")
                    is ChatEvent.Done -> println("\n[${event.response.route}]")
                }
            }
        }
    }

    @Test
    fun completeAnswersOnTheDeviceWithRouteAndCost() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val r = ai.complete(greedy("What is the capital of France?"))
            assertTrue(r.text.isNotBlank(), r.text)
            assertEquals(Route.LOCAL, r.route)
            assertEquals(Reason.NO_REMOTE, r.reason)
            assertTrue(r.usage.completionTokens in 1..16, "${r.usage}")
            assertTrue(r.cost.totalUsd > 0.0 && r.cost.allRemoteUsd > 0.0, "${r.cost}")
            assertTrue(r.confidence != null)
        }
    }

    @Test
    fun streamEndsWithDoneAndCarriesTheAnswer() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val events = ai.stream(greedy("Name three colours.", 24)).toList()
            val done = events.last()
            assertIs<ChatEvent.Done>(done)
            val text = events.filterIsInstance<ChatEvent.Token>().joinToString("") { it.text }
            assertEquals(done.response.text, text)
            assertEquals(1, events.count { it is ChatEvent.Done })
        }
    }

    @Test
    fun leavingTheFlowCancelsTheRustGeneration() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val first = ai.stream(greedy("Write a very long story about a dragon.", 400)).take(3).toList()
            assertEquals(3, first.size)
            assertTrue(first.all { it is ChatEvent.Token })
            // The Rust side ends the request as cancelled (counted, not timed).
            var waited = 0
            while (ai.stats().inFlight > 0uL && waited++ < 30_000) Thread.sleep(10)
            val s = ai.stats()
            assertEquals(0uL, s.inFlight, "$s")
            assertEquals(1uL, s.cancelled, "$s")
            // The context is free: the next request runs.
            assertTrue(ai.complete(greedy("Say hi.", 4)).text.isNotEmpty())
        }
    }

    @Test
    fun fourConcurrentCompletesShareOneRuntime() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model, parallel = 2)).use { ai ->
            val answers = (1..4).map { i -> async { ai.complete(greedy("What is $i plus $i?", 8)) } }.awaitAll()
            assertTrue(answers.all { it.text.isNotBlank() })
            assertEquals(4uL, ai.stats().finished)
        }
    }

    @Test
    fun aBadModelFileIsAnEdgeCascadeException() {
        val f = File.createTempFile("bad", ".gguf")
        try {
            f.writeText("this is not a model")
            val e = assertFailsWith<EdgeCascadeException> { EdgeCascade(EdgeCascadeConfig(localModel = f.path)) }
            assertIs<uniffi.edgecascade_ffi.EdgeCascadeException.InvalidModelFile>(e)
            assertTrue(e.message!!.contains(f.path), e.message)
        } finally {
            f.delete()
        }
    }

    @Test
    fun aClosedRuntimeThrows() {
        val ai = EdgeCascade(EdgeCascadeConfig(localModel = model))
        ai.close()
        ai.close() // idempotent
        val e = assertFailsWith<EdgeCascadeException> { runBlocking { ai.complete(greedy("Hi")) } }
        assertIs<uniffi.edgecascade_ffi.EdgeCascadeException.Closed>(e)
        assertFailsWith<EdgeCascadeException> { runBlocking { ai.stream(greedy("Hi")).toList() } }
    }

    @Test
    fun aFailureEndsTheFlowWithTheException() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model, contextSize = 64)).use { ai ->
            val long = ChatRequest.user("word ".repeat(200), maxTokens = 4)
            val e = assertFailsWith<EdgeCascadeException> { ai.stream(long).toList() }
            assertIs<uniffi.edgecascade_ffi.EdgeCascadeException.ContextOverflow>(e)
        }
    }
}
