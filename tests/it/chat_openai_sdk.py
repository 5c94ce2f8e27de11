"""Drives mediagate's chat completions with the official OpenAI Python SDK, as a
customer's code would: plain and streamed answers (with the usage chunk), fallback across
providers and models (OpenRouter-style fields through `extra_body`), tools, a Claude
model served by Anthropic's Messages API, a Gemini model served by Google's Gemini API,
and the exceptions errors become.

argv: base URL (http://host:port/v1), API key. Prints what it saw as JSON."""

import json
import sys

import openai

base_url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
messages = [{"role": "user", "content": "tell me about red foxes"}]
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
report = {}

plain = client.chat.completions.create(model="local/chat", messages=messages)
assert plain.object == "chat.completion" and plain.model == "local/chat", plain
report["plain"] = plain.choices[0].message.content

text, usage = [], None
for chunk in client.chat.completions.create(
        model="local/chat", messages=messages, stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        assert chunk.choices == [], chunk
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        if choice.delta.content:
            text.append(choice.delta.content)
report["streamed"] = "".join(text)
report["usage"] = usage

# OpenAI is down for its first two calls: OpenRouter serves them.
fallback = client.chat.completions.create(
    model="openai/gpt-4o-mini", messages=messages,
    extra_body={"provider": {"order": ["openai", "openrouter"]}})
report["fallback"] = {"model": fallback.model, "provider": fallback.to_dict()["provider"]}

called = client.chat.completions.create(model="openai/gpt-4o-mini", messages=messages, tools=tools)
call = called.choices[0].message.tool_calls[0]
report["tool"] = {"name": call.function.name, "arguments": call.function.arguments}

name, arguments = None, []
for chunk in client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=messages, tools=tools, stream=True):
    for choice in chunk.choices:
        for tc in choice.delta.tool_calls or []:
            name = name or tc.function.name
            arguments.append(tc.function.arguments or "")
report["streamed_tool"] = {"name": name, "arguments": "".join(arguments)}

# A Claude model, served by Anthropic's Messages API behind the same OpenAI format.
claude = client.chat.completions.create(
    model="anthropic/claude-haiku-4.5", messages=messages, max_tokens=64)
name, arguments, text = None, [], []
for chunk in client.chat.completions.create(
        model="anthropic/claude-haiku-4.5", messages=messages, tools=tools, stream=True,
        stream_options={"include_usage": True}):
    for choice in chunk.choices:
        text.append(choice.delta.content or "")
        for tc in choice.delta.tool_calls or []:
            name = name or tc.function.name
            arguments.append(tc.function.arguments or "")
report["claude"] = {"provider": claude.to_dict()["provider"],
                    "content": claude.choices[0].message.content,
                    "finish_reason": claude.choices[0].finish_reason,
                    "streamed_text": "".join(text),
                    "streamed_tool": {"name": name, "arguments": "".join(arguments)},
                    "usage": chunk.usage.model_dump() if chunk.usage else None}

# A Gemini model, served by Google's Gemini API behind the same OpenAI format.
gemini = client.chat.completions.create(
    model="google/gemini-2.5-flash", messages=messages, max_completion_tokens=64)
text, usage = [], None
for chunk in client.chat.completions.create(
        model="google/gemini-2.5-flash", messages=messages, stream=True,
        stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        text.append(choice.delta.content or "")
report["gemini"] = {"provider": gemini.to_dict()["provider"],
                    "content": gemini.choices[0].message.content,
                    "finish_reason": gemini.choices[0].finish_reason,
                    "streamed_text": "".join(text),
                    "usage": {"prompt_tokens": usage.prompt_tokens,
                              "completion_tokens": usage.completion_tokens,
                              "reasoning_tokens": usage.completion_tokens_details.reasoning_tokens}}

# A Gemini tool call and its result go back the way customers write it: the SDK's own
# message object appended to the conversation. Its thought signature (in the call's
# `extra_content`) must survive the round trip, or Gemini 3 refuses the next turn.
called = client.chat.completions.create(
    model="google/gemini-2.5-flash", messages=messages, tools=tools, tool_choice="required")
message = called.choices[0].message
call = message.tool_calls[0]
followed = client.chat.completions.create(
    model="google/gemini-2.5-flash", tools=tools,
    messages=messages + [message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
report["gemini_tool"] = {"signature": call.to_dict().get("extra_content"),
                         "answer": followed.choices[0].message.content}

# local/chat fails as an outage would: the next model of `models` serves.
moved = client.chat.completions.create(
    model="local/chat", messages=messages,
    extra_body={"models": ["openai/gpt-4o-mini"], "simulate": {"fail": "transient"}})
report["model_fallback"] = {"model": moved.model, "provider": moved.to_dict()["provider"]}

try:
    client.chat.completions.create(model="nobody/nothing", messages=messages)
except openai.BadRequestError as e:
    report["bad_request"] = {"status": e.status_code, "param": e.body["param"]}

try:
    openai.OpenAI(base_url=base_url, api_key="mg_wrong", max_retries=0).chat.completions.create(
        model="local/chat", messages=messages)
except openai.AuthenticationError as e:
    report["unauthorized"] = e.status_code

print(json.dumps(report))
