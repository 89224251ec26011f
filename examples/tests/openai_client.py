"""The official `openai` Python client against `edgecascade serve` (run by examples/tests/serve.rs).

    python openai_client.py http://127.0.0.1:PORT
"""
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "Name three colours of the rainbow."}]

full = client.chat.completions.create(model="local", messages=messages, max_tokens=24, temperature=0)
choice = full.choices[0]
assert choice.message.role == "assistant", choice
assert choice.message.content.strip(), "empty answer"
assert choice.finish_reason in ("stop", "length"), choice.finish_reason
assert full.usage.prompt_tokens > 0 and full.usage.completion_tokens > 0, full.usage
assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
ext = full.model_extra["edgecascade"]
assert ext["route"] == "local" and "confidence" in ext and "cost" in ext, ext

text, finish, usage, chunks = "", None, None, 0
stream = client.chat.completions.create(
    model="local", messages=messages, max_tokens=24, temperature=0,
    stream=True, stream_options={"include_usage": True},
)
for chunk in stream:
    chunks += 1
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
assert chunks > 3, chunks
assert text == choice.message.content, (text, choice.message.content)
assert finish == choice.finish_reason, (finish, choice.finish_reason)
assert usage is not None and usage.completion_tokens == full.usage.completion_tokens, usage

stopped = client.chat.completions.create(
    model="local", messages=messages, max_tokens=24, temperature=0, stop=[choice.message.content[3:6]],
)
assert choice.message.content[3:6] not in stopped.choices[0].message.content

models = client.models.list()
assert len(models.data) == 1, models

try:
    client.chat.completions.create(model="local", messages=[], max_tokens=4)
    raise AssertionError("empty messages must be rejected")
except openai.BadRequestError as e:
    assert "messages" in str(e), e

# Structured output: every answer parses and matches the schema (constrained decoding).
import json

schema = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "orange", "yellow", "green", "blue", "indigo", "violet"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["colour", "count"],
    "additionalProperties": False,
}
for temperature in (0, 0.9):
    r = client.chat.completions.create(
        model="local", messages=messages, max_tokens=60, temperature=temperature, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "rainbow", "schema": schema, "strict": True}},
    )
    v = json.loads(r.choices[0].message.content)
    assert set(v) == {"colour", "count"} and v["colour"] in schema["properties"]["colour"]["enum"], v
    assert isinstance(v["count"], int) and 1 <= v["count"] <= 7, v
    assert r.model_extra["edgecascade"]["format_error"] is None, r.model_extra
obj = client.chat.completions.create(
    model="local", messages=[{"role": "user", "content": "Reply with {\"ok\": true}"}], max_tokens=40,
    temperature=0, response_format={"type": "json_object"},
)
assert obj.choices[0].finish_reason == "stop" and isinstance(json.loads(obj.choices[0].message.content), dict), obj
try:
    client.chat.completions.create(
        model="local", messages=messages, max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "null"}}}},
    )
    raise AssertionError("an unenforceable schema must be rejected")
except openai.BadRequestError as e:
    assert "response_format" in str(e), e

# Tool calls: forced (required) calls are valid, whole and streamed alike; the history of a
# call and its result is accepted; content the model cannot read is refused.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
full = client.chat.completions.create(
    model="local", messages=ask, max_tokens=60, temperature=0, tools=tools, tool_choice="required")
choice = full.choices[0]
assert choice.finish_reason == "tool_calls", choice
(call,) = choice.message.tool_calls
assert call.type == "function" and call.function.name == "get_weather" and call.id, call
args = json.loads(call.function.arguments)
assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit"), args
assert full.model_extra["edgecascade"]["format_error"] is None, full.model_extra

calls, finish, content = {}, None, ""
for chunk in client.chat.completions.create(
        model="local", messages=ask, max_tokens=60, temperature=0, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    content += delta.content or ""
    for d in delta.tool_calls or []:
        c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
        c["id"] = d.id or c["id"]
        c["name"] += (d.function.name or "") if d.function else ""
        c["arguments"] += (d.function.arguments or "") if d.function else ""
    finish = chunk.choices[0].finish_reason or finish
assert finish == "tool_calls" and content == "", (finish, content)
assert list(calls) == [0] and calls[0]["name"] == "get_weather", calls
assert json.loads(calls[0]["arguments"]) == args, (calls, args)

history = ask + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18})},
]
after = client.chat.completions.create(
    model="local", messages=history, max_tokens=30, temperature=0, tools=tools, tool_choice="none")
assert after.choices[0].finish_reason in ("stop", "length") and not after.choices[0].message.tool_calls, after

for bad, param in [
    ({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "launch"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "name"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     "text only"),
]:
    try:
        client.chat.completions.create(**{"model": "local", "messages": ask, "max_tokens": 8, **bad})
        raise AssertionError(f"{bad} must be rejected")
    except openai.BadRequestError as e:
        assert param in str(e), e

print("openai client: ok")
