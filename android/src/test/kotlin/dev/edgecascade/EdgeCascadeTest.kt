// The Kotlin SDK on the JVM against the host library and SmolLM2: what the hand-written layer
// adds (suspend, Flow, cancellation on leaving a flow, errors as exceptions, close).
package dev.edgecascade

import com.sun.net.httpserver.HttpServer
import java.io.File
import java.net.InetSocketAddress
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertTrue
import kotlinx.coroutines.async
import kotlinx.coroutines.asCoroutineDispatcher
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
                    is ChatEvent.FallingBack -> println("\n(falling back: ${event.detail})")
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
    fun requestsCarryATaskNameOrAnAnswerKind() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            for (task in listOf("arithmetic", "yesno")) {
                val r = ai.complete(greedy("Is 2 plus 2 four?", 8).copy(task = task))
                assertTrue(r.text.isNotBlank(), task)
            }
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

    /** A remote tier on 127.0.0.1 (the JDK's HTTP server) that streams one fixed answer. */
    private fun remoteServer(): HttpServer {
        val server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0)
        server.createContext("/v1/chat/completions") { ex ->
            ex.requestBody.readBytes()
            val chunk = """{"choices":[{"index":0,"delta":{"content":"From the remote tier."},"finish_reason":"stop"}]}"""
            val usage = """{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}"""
            val body = "data: $chunk\n\ndata: $usage\n\ndata: [DONE]\n\n".toByteArray()
            ex.responseHeaders.add("Content-Type", "text/event-stream")
            ex.sendResponseHeaders(200, body.size.toLong())
            ex.responseBody.use { it.write(body) }
        }
        server.start()
        return server
    }

    @Test
    fun deviceStateChangesTheRoute() = runBlocking<Unit> {
        val server = remoteServer()
        try {
            val remote = RemoteEndpoint("http://127.0.0.1:${server.address.port}", "remote-model")
            EdgeCascade(EdgeCascadeConfig(localModel = model, remote = remote)).use { ai ->
                assertEquals(DeviceState(), ai.deviceState)
                // In the background the remote tier answers; the device does no work.
                ai.setDeviceState(DeviceState(background = true, battery = 0.8))
                assertEquals(DeviceState(background = true, battery = 0.8), ai.deviceState)
                val r = ai.complete(greedy("What is 2 + 2?"))
                assertEquals(Route.REMOTE to Reason.BACKGROUND, r.route to r.reason)
                assertEquals("From the remote tier.", r.text)
                // A private request stays on the device, even in the background (CPU model).
                val p = ai.complete(greedy("What is 2 + 2?").copy(private = true))
                assertEquals(Route.LOCAL to Reason.PRIVATE, p.route to p.reason)
                // Offline: the local model answers, and forcing the remote tier is an error.
                ai.setDeviceState(DeviceState(network = Network.NONE))
                val o = ai.complete(greedy("What is 2 + 2?"))
                assertEquals(Route.LOCAL to Reason.OFFLINE, o.route to o.reason)
                val e = assertFailsWith<EdgeCascadeException> {
                    ai.complete(greedy("What is 2 + 2?").copy(policy = Policy.FORCE_REMOTE))
                }
                assertIs<uniffi.edgecascade_ffi.EdgeCascadeException.RemoteUnavailable>(e)
                assertTrue(e.message!!.contains("offline"), e.message)
            }
        } finally {
            server.stop(0)
        }
    }

    @Test
    fun aFailedEscalationFallsBackToTheLocalAnswer() = runBlocking<Unit> {
        // The remote tier refuses every request (HTTP 400: not retried).
        val server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0)
        val calls = java.util.concurrent.atomic.AtomicInteger()
        server.createContext("/v1/chat/completions") { ex ->
            ex.requestBody.readBytes()
            calls.incrementAndGet()
            val body = """{"error":{"message":"no"}}""".toByteArray()
            ex.sendResponseHeaders(400, body.size.toLong())
            ex.responseBody.use { it.write(body) }
        }
        server.start()
        try {
            val remote = RemoteEndpoint("http://127.0.0.1:${server.address.port}", "remote-model")
            // A threshold no answer reaches: every local answer escalates.
            val config = EdgeCascadeConfig(localModel = model, remote = remote, cascadeThreshold = 0.0)
            EdgeCascade(config).use { ai ->
                val events = ai.stream(greedy("Name a colour.", maxTokens = 8)).toList()
                val kinds = events.map { it::class.simpleName }
                val escalating = kinds.indexOf("Escalating")
                val fallingBack = kinds.indexOf("FallingBack")
                assertTrue(escalating >= 0 && fallingBack > escalating, "$kinds")
                assertTrue(events.none { it is ChatEvent.Token && it.tier == Tier.REMOTE }, "$events")
                val detail = (events[fallingBack] as ChatEvent.FallingBack).detail
                assertTrue(detail.contains("400"), detail)
                val done = events.last()
                assertIs<ChatEvent.Done>(done)
                assertEquals(Route.DEGRADED_LOCAL, done.response.route)
                assertEquals(1, calls.get())
                // The text the caller keeps is the local answer: the tokens before Escalating
                // and after FallingBack.
                val kept = events.filterIsInstance<ChatEvent.Token>().joinToString("") { it.text }
                assertEquals(done.response.text, kept)
                assertTrue(kept.isNotEmpty())
            }
        } finally {
            server.stop(0)
        }
    }

    @Test
    fun aPullThatRetriesSaysSoBeforeItSucceeds() = runBlocking<Unit> {
        val bytes = ByteArray(100_000) { (it * 7 + 1).toByte() }
        val sha = java.security.MessageDigest.getInstance("SHA-256").digest(bytes)
            .joinToString("") { "%02x".format(it) }
        val server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0)
        val requests = java.util.concurrent.atomic.AtomicInteger()
        server.createContext("/flaky.gguf") { ex ->
            if (requests.incrementAndGet() == 1) {
                ex.responseHeaders.add("Retry-After", "1")
                ex.sendResponseHeaders(503, -1)
                ex.close()
            } else {
                ex.sendResponseHeaders(200, bytes.size.toLong())
                ex.responseBody.use { it.write(bytes) }
            }
        }
        server.start()
        val dir = java.nio.file.Files.createTempDirectory("pull").toFile()
        try {
            val dest = File(dir, "flaky.gguf")
            val events = Models.pull("http://127.0.0.1:${server.address.port}/flaky.gguf", sha, dest.path).toList()
            val retries = events.filterIsInstance<PullEvent.Retrying>()
            assertEquals(1, retries.size, "$events")
            assertEquals(1, retries[0].attempt)
            assertTrue(retries[0].reason.contains("503"), retries[0].reason)
            assertEquals(0L, retries[0].bytesDone)
            val done = events.last()
            assertIs<PullEvent.Done>(done)
            assertEquals(sha, done.outcome.sha256)
            assertEquals(2, requests.get())
            assertTrue(bytes.contentEquals(dest.readBytes()))
        } finally {
            server.stop(0)
            dir.deleteRecursively()
        }
    }

    @Test
    fun androidReadingsMapOntoDeviceState() {
        assertEquals(
            listOf(Thermal.NOMINAL, Thermal.FAIR, Thermal.SERIOUS, Thermal.CRITICAL, Thermal.CRITICAL),
            listOf(0, 1, 2, 3, 6).map(DeviceState::thermalFromAndroid),
        )
        assertEquals(Network.NONE, DeviceState.network(connected = false, metered = true))
        assertEquals(Network.METERED, DeviceState.network(connected = true, metered = true))
        assertEquals(Network.UNMETERED, DeviceState.network(connected = true, metered = false))
        assertEquals(0.5, DeviceState.batteryFraction(50, 100))
        assertEquals(null, DeviceState.batteryFraction(-1, 100))
        assertEquals(null, DeviceState.batteryFraction(50, 0))
    }

    @Test
    fun pullIsAFlowOfProgressEndingWithTheVerifiedFile() = runBlocking<Unit> {
        val bytes = ByteArray(2_000_000) { (it * 31 + 7).toByte() }
        val sha = java.security.MessageDigest.getInstance("SHA-256").digest(bytes)
            .joinToString("") { "%02x".format(it) }
        val server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0)
        server.createContext("/model.gguf") { ex ->
            ex.sendResponseHeaders(200, bytes.size.toLong())
            ex.responseBody.use { out -> bytes.toList().chunked(65536).forEach { out.write(it.toByteArray()); out.flush() } }
        }
        server.createContext("/missing.gguf") { ex -> ex.sendResponseHeaders(404, -1); ex.close() }
        server.start()
        val dir = java.nio.file.Files.createTempDirectory("pull").toFile()
        try {
            val base = "http://127.0.0.1:${server.address.port}"
            val dest = File(dir, "m.gguf")
            val events = Models.pull("$base/model.gguf", sha, dest.path).toList()
            val done = events.last()
            assertIs<PullEvent.Done>(done)
            assertEquals(2_000_000uL, done.outcome.bytes)
            assertEquals(sha, done.outcome.sha256)
            assertTrue(events.dropLast(1).all { it is PullEvent.Progress }, "$events")
            val last = events.filterIsInstance<PullEvent.Progress>().last()
            assertEquals(2_000_000L, last.bytesDone)
            assertTrue(bytes.contentEquals(dest.readBytes()))
            // A refusal ends the flow with a Download exception and leaves nothing.
            val missing = File(dir, "missing.gguf")
            val e = assertFailsWith<EdgeCascadeException> { Models.pull("$base/missing.gguf", sha, missing.path).toList() }
            assertIs<uniffi.edgecascade_ffi.EdgeCascadeException.Download>(e)
            assertTrue(e.message!!.contains("HTTP 404"), e.message)
            assertTrue(!missing.exists())
            // The catalog: known names, pinned hashes; a name without a URL is refused.
            val catalog = Models.catalog()
            assertTrue(catalog.any { it.name == "qwen2.5-coder-0.5b" && it.sha256.length == 64 && it.url != null }, "$catalog")
            assertFailsWith<EdgeCascadeException> { Models.pull("smollm2-135m", File(dir, "s.gguf").path) }
        } finally {
            server.stop(0)
            dir.deleteRecursively()
        }
    }

    @Test
    fun aSchemaConstrainsTheLocalAnswer() = runBlocking<Unit> {
        val schema = """{"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000}}, "required": ["city", "population"],
            "additionalProperties": false}"""
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val request = greedy("What is the biggest city in France?", maxTokens = 60)
                .copy(responseFormat = ResponseFormat.JsonSchema("city", schema))
            val r = ai.complete(request)
            assertEquals(null, r.formatError, r.text)
            assertTrue(Regex("""^\{"city": "[^"]*", "population": \d+\}$""").matches(r.text), r.text)
        }
    }

    @Test
    fun aRequiredToolCallIsValidAndTheResultGoesBack() = runBlocking<Unit> {
        val weather = Tool(
            "get_weather", "Current weather in a city",
            """{"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
               "required": ["city"], "additionalProperties": false}""",
        )
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val ask = greedy("What is the weather in Paris?", maxTokens = 60)
                .copy(tools = listOf(weather), toolChoice = ToolChoice.Required)
            val r = ai.complete(ask)
            assertEquals(null, r.formatError, r.text)
            assertEquals(FinishReason.TOOL_CALLS, r.finishReason)
            val call = r.toolCalls.single()
            assertEquals("get_weather", call.name)
            assertTrue(Regex("""^\{"city": ?"[^"]*"\}$""").matches(call.arguments), call.arguments)
            val next = ask.copy(
                messages = ask.messages + Message.assistant(r.text, r.toolCalls) +
                    Message.toolResult(call.id, """{"temperature": 18}"""),
                toolChoice = ToolChoice.None,
            )
            val after = ai.complete(next)
            assertTrue(after.toolCalls.isEmpty())
            assertTrue(after.text.isNotBlank())
        }
    }

    @Test
    fun logsReachTheAppsLoggerLlamaCppIncluded() = runBlocking<Unit> {
        val lines = java.util.concurrent.ConcurrentLinkedQueue<Triple<LogLevel, String, String>>()
        fun answer() = EdgeCascade(EdgeCascadeConfig(localModel = model)).use {
            runBlocking { it.complete(greedy("Hi", 2)) }
        }
        try {
            EdgeCascadeLog.install(LogLevel.DEBUG) { l, t, m -> lines.add(Triple(l, t, m)) }
            answer()
            val llama = lines.filter { it.second == "llama.cpp" }
            assertTrue(llama.isNotEmpty(), "no llama.cpp line among ${lines.size}")
            assertTrue(llama.any { it.third.contains("llama_model_loader") }, "${llama.take(5)}")
            assertTrue(lines.all { it.first <= LogLevel.DEBUG }, "a line above the level asked for")
            // At WARN the load's detail is left out.
            lines.clear()
            EdgeCascadeLog.install(LogLevel.WARN) { l, t, m -> lines.add(Triple(l, t, m)) }
            answer()
            assertTrue(lines.none { it.first > LogLevel.WARN }, "${lines.take(5)}")
            // A logger that throws loses its lines, never the request.
            EdgeCascadeLog.install(LogLevel.TRACE) { _, _, _ -> throw IllegalStateException("broken logger") }
            assertTrue(answer().text.isNotEmpty())
        } finally {
            EdgeCascadeLog.uninstall()
        }
        lines.clear()
        answer()
        assertTrue(lines.isEmpty(), "lines after uninstall: ${lines.take(3)}")
    }

    @Test
    fun aModelTooBigForTheStatedMemoryIsRefusedNotLoaded() = runBlocking<Unit> {
        val e = assertFailsWith<EdgeCascadeException> {
            EdgeCascade(EdgeCascadeConfig(localModel = model, memoryLimitMb = 150))
        }
        assertIs<uniffi.edgecascade_ffi.EdgeCascadeException.InsufficientMemory>(e)
        val text = e.toString()
        assertTrue(text.contains("150 MB may be used"), text)
        // The control: with room, it loads and answers.
        EdgeCascade(EdgeCascadeConfig(localModel = model, memoryLimitMb = 2000)).use {
            assertTrue(it.complete(greedy("Hi", 2)).text.isNotEmpty())
        }
    }

    @Test
    fun theForegroundStateFollowsActivitiesNotCountsAndIgnoresRotations() {
        val seen = mutableListOf<Boolean>()
        // Started while an activity (1) is already visible: its stop must still mean background
        // (a count from 0 reached -1 there and stayed "background" for good).
        val late = ForegroundTracker(initiallyForeground = true) { seen.add(it) }
        late.activityStopped(1, changingConfigurations = false)
        assertEquals(listOf(false), seen)
        late.activityStarted(1)
        assertEquals(listOf(false, true), seen)
        // A rotation: the old instance stops for a configuration change, the new one starts;
        // no background in between.
        late.activityStopped(1, changingConfigurations = true)
        late.activityStarted(2)
        assertEquals(listOf(false, true), seen)
        assertTrue(late.foreground)
        // Two activities: leaving one keeps the app in the foreground, leaving both does not.
        late.activityStarted(3)
        late.activityStopped(2, changingConfigurations = false)
        assertEquals(listOf(false, true), seen)
        late.activityStopped(3, changingConfigurations = false)
        assertEquals(listOf(false, true, false), seen)
        // Repeated events are not repeated changes.
        late.activityStopped(3, changingConfigurations = false)
        assertEquals(listOf(false, true, false), seen)
    }

    @Test
    fun closeAsyncEndsTheRuntimeOnItsDispatcher() = runBlocking<Unit> {
        // The runtime's dispatcher counts the work it is given: closeAsync must hand it the close.
        val pool = java.util.concurrent.Executors.newSingleThreadExecutor()
        val tasks = java.util.concurrent.atomic.AtomicInteger()
        val counting = java.util.concurrent.Executor { tasks.incrementAndGet(); pool.execute(it) }
        try {
            val ai = EdgeCascade(EdgeCascadeConfig(localModel = model), counting.asCoroutineDispatcher())
            val before = tasks.get()
            ai.closeAsync()
            assertTrue(tasks.get() > before, "close did not run on the runtime's dispatcher")
            // Closed: calls fail with Closed, and closing again is a no-op.
            val e = assertFailsWith<EdgeCascadeException> { runBlocking { ai.complete(greedy("Hi")) } }
            assertIs<uniffi.edgecascade_ffi.EdgeCascadeException.Closed>(e)
            ai.closeAsync()
        } finally {
            pool.shutdown()
        }
    }

    private val weather = Tool(
        "get_weather", "Current weather in a city",
        """{"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
           "required": ["city"], "additionalProperties": false}""",
    )

    @Test
    fun aSessionKeepsItsHistoryAndReusesTheEarlierTurnsKv() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val chat = ChatSession(ai, system = "You are brief.", settings = greedy("", 12))
            val first = chat.send("What is the capital of France?")
            val second = chat.send("And of Japan?")
            assertEquals(
                listOf(Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT),
                chat.history.map { it.role },
            )
            assertEquals(first.text, chat.history[2].content)
            assertEquals(second.text, chat.history[4].content)
            // The second turn re-reads the first from the prefix cache: only its new tokens run.
            assertTrue(second.usage.promptTokens > first.usage.promptTokens, "${second.usage}")
            assertTrue(second.usage.promptTokensEvaluated < second.usage.promptTokens - first.usage.promptTokens / 2, "${second.usage}")
            chat.clear()
            assertEquals(listOf(Role.SYSTEM), chat.history.map { it.role })
        }
    }

    @Test
    fun aSessionRunsTheAppsToolHandlersAndEndsInText() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val calls = mutableListOf<String>()
            val chat = ChatSession(
                ai,
                tools = mapOf(weather to { args -> calls.add(args); """{"temperature": 18}""" }),
                settings = greedy("", 60).copy(toolChoice = ToolChoice.Required),
                maxToolRounds = 2,
            )
            val r = chat.send("What is the weather in Paris?")
            assertTrue(calls.isNotEmpty() && calls.all { it.contains("city") }, "$calls")
            assertTrue(r.toolCalls.isEmpty(), "${r.toolCalls}")
            val roles = chat.history.map { it.role }
            assertEquals(Role.USER, roles.first())
            assertEquals(Role.ASSISTANT, roles.last())
            assertEquals(calls.size, roles.count { it == Role.TOOL })
            assertTrue(chat.history.filter { it.role == Role.TOOL }.all { it.content == """{"temperature": 18}""" })
        }
    }

    @Test
    fun aCancelledTurnLeavesTheHistoryAsItWas() = runBlocking<Unit> {
        EdgeCascade(EdgeCascadeConfig(localModel = model)).use { ai ->
            val entered = kotlinx.coroutines.CompletableDeferred<Unit>()
            var block = true
            val chat = ChatSession(
                ai,
                system = "You are brief.",
                tools = mapOf(weather to { _ ->
                    if (block) {
                        entered.complete(Unit)
                        kotlinx.coroutines.awaitCancellation()
                    }
                    """{"temperature": 18}"""
                }),
                settings = greedy("", 60).copy(toolChoice = ToolChoice.Required),
                maxToolRounds = 1,
            )
            val turn = async { chat.send("What is the weather in Paris?") }
            entered.await()
            turn.cancel()
            turn.join()
            assertTrue(turn.isCancelled)
            assertEquals(listOf(Role.SYSTEM), chat.history.map { it.role })
            // The session is still usable.
            block = false
            chat.send("What is the weather in Rome?")
            assertEquals(Role.ASSISTANT, chat.history.last().role)
        }
    }

    @Test
    fun theCostReportSumsTheLedgerOfThisRuntime() = runBlocking<Unit> {
        val ledger = File.createTempFile("ledger", ".jsonl").apply { delete() }
        try {
            EdgeCascade(EdgeCascadeConfig(localModel = model, ledgerPath = ledger.path)).use { ai ->
                assertEquals(0L, ai.costReport().requests)
                val a = ai.complete(greedy("Hi", 4))
                val b = ai.complete(greedy("What is the capital of France?", 8))
                val r = ai.costReport()
                assertEquals(2L, r.requests)
                assertEquals(mapOf("local" to 2L), r.byRoute)
                assertEquals(a.cost.totalUsd + b.cost.totalUsd, r.totalUsd, 1e-9)
                assertTrue(r.savingsUsd > 0.0 && r.allRemoteUsd > r.totalUsd, "$r")
                // A period after both answers holds none of them.
                assertEquals(0L, ai.costReport(sinceUnixSeconds = System.currentTimeMillis() / 1000.0 + 60).requests)
            }
        } finally {
            ledger.delete()
        }
    }
}
