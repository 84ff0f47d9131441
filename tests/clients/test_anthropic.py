"""The official `anthropic` Python SDK against the real `lantern serve`: Anthropic's Messages API
(`/v1/messages`, `/v1/messages/count_tokens`) on the default model. Plain and streamed answers,
system prompts, limits and stop sequences, a forced tool call and its result sent back, token
counts, errors as the SDK's exception classes, and `x-api-key` where keys are set.

The SDK takes the server's root as its base URL (it appends `/v1/messages` itself). It has no
`temperature` argument of its own: greedy requests send it through `extra_body`."""
import json
import os
import subprocess
from pathlib import Path

import anthropic
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2"
NO_CACHE = {"cache-control": "no-cache"}
GREEDY = {"temperature": 0}
WEATHER = [{"name": "get_weather", "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                             "required": ["city"]}}]
FORCED = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


def serve(tmp_path_factory, *extra):
    """`lantern serve` on port 0 with a fresh database; the process and its root URL."""
    binary = os.environ.get("LANTERN_BIN", str(ROOT / "target/release/lantern"))
    db = tmp_path_factory.mktemp("db") / "lantern.db"
    proc = subprocess.Popen([binary, "serve", MODEL, "--port", "0", "--db", str(db), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return proc, line.removeprefix("listening on ").removesuffix("/v1")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    proc, root = serve(tmp_path_factory)
    # No retries: an error is the answer under test, not a reason to ask again.
    yield anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0)
    proc.terminate()
    proc.wait(timeout=30)


def ask(text):
    return [{"role": "user", "content": text}]


def prompt_tokens(usage):
    """All the prompt's tokens: Anthropic counts those read from or written to a cache apart."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def test_plain_system_and_repeatable(client):
    kwargs = dict(model=MODEL, max_tokens=24, messages=ask("Why is the sky blue?"), extra_body=GREEDY)
    r = client.messages.create(**kwargs)
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert r.model == MODEL
    assert [b.type for b in r.content] == ["text"] and r.content[0].text
    assert r.stop_reason in ("end_turn", "max_tokens") and r.stop_sequence is None
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 24
    again = client.messages.create(extra_headers=NO_CACHE, **kwargs)
    assert text_of(again) == text_of(r), "greedy answers repeat"
    assert again.id != r.id

    system = "Answer in one word."
    as_string = client.messages.create(system=system, **kwargs)
    as_blocks = client.messages.create(system=[{"type": "text", "text": system}], extra_headers=NO_CACHE, **kwargs)
    assert text_of(as_string) == text_of(as_blocks)
    assert prompt_tokens(as_string.usage) == prompt_tokens(as_blocks.usage)
    # Not "more": without one, SmolLM2's template writes in a default system prompt of its own.
    assert prompt_tokens(as_string.usage) != prompt_tokens(r.usage), "the system prompt is in the prompt"


def test_stream_events_add_up_to_the_message(client):
    kwargs = dict(model=MODEL, max_tokens=20, messages=ask("Count to ten."), extra_body=GREEDY)
    whole = client.messages.create(**kwargs)
    events = list(client.messages.create(stream=True, extra_headers=NO_CACHE, **kwargs))
    kinds = [e.type for e in events if e.type != "ping"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1:-2] == ["content_block_start"] + ["content_block_delta"] * (len(kinds) - 5) + ["content_block_stop"]
    start = events[0].message
    assert start.id.startswith("msg_") and start.content == [] and start.stop_reason is None
    assert prompt_tokens(start.usage) == prompt_tokens(whole.usage)
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert all(d.type == "text_delta" for d in deltas)
    assert "".join(d.text for d in deltas) == text_of(whole)
    end = next(e for e in events if e.type == "message_delta")
    assert end.delta.stop_reason == whole.stop_reason
    assert end.usage.output_tokens == whole.usage.output_tokens

    # The SDK's stream helper builds the same message from them.
    with client.messages.stream(extra_headers=NO_CACHE, **kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == text_of(final) == text_of(whole)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_max_tokens_and_stop_sequences(client):
    r = client.messages.create(model=MODEL, max_tokens=5, messages=ask("Write a long story about a dragon."),
                               extra_body=GREEDY)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 5

    kwargs = dict(model=MODEL, max_tokens=24, messages=ask("Name three colours."), extra_body=GREEDY)
    free = text_of(client.messages.create(**kwargs))
    word = next(w for w in free.split() if len(w) >= 3 and free.find(w) > 0)
    stopped = client.messages.create(stop_sequences=[word], **kwargs)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert text_of(stopped) == free[:free.find(word)]


def test_forced_tool_round_trip(client):
    question = ask("What is the weather in Paris?")
    r = client.messages.create(model=MODEL, max_tokens=64, messages=question, tools=WEATHER,
                               tool_choice=FORCED, extra_body=GREEDY)
    assert r.stop_reason == "tool_use"
    calls = [b for b in r.content if b.type == "tool_use"]
    assert len(calls) == 1, r.content
    call = calls[0]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert isinstance(call.input, dict) and isinstance(call.input["city"], str)

    # "any" forces some tool: with one offered, a call of it.
    anything = client.messages.create(model=MODEL, max_tokens=64, messages=question, tools=WEATHER,
                                      tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                      extra_body=GREEDY)
    assert anything.stop_reason == "tool_use"
    [other] = [b for b in anything.content if b.type == "tool_use"]
    assert other.name == "get_weather" and isinstance(other.input["city"], str)

    # The result goes back as a tool_result block (text blocks here); the answer is text.
    turns = question + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "is_error": False,
                                      "content": [{"type": "text", "text": "18 C and sunny"}]}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=40, messages=turns, tools=WEATHER,
                                    tool_choice={"type": "none"}, extra_body=GREEDY)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in answer.content] == ["text"] and text_of(answer)
    # A string result, and one marked as an error, are accepted too.
    turns[2]["content"][0]["content"] = "Unknown city"
    turns[2]["content"][0]["is_error"] = True
    failed = client.messages.create(model=MODEL, max_tokens=8, messages=turns, tools=WEATHER, extra_body=GREEDY)
    assert failed.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_streamed_tool_use(client):
    kwargs = dict(model=MODEL, max_tokens=64, messages=ask("What is the weather in Paris?"), tools=WEATHER,
                  tool_choice=FORCED, extra_body=GREEDY)
    whole = client.messages.create(**kwargs)
    call = next(b for b in whole.content if b.type == "tool_use")
    events = list(client.messages.create(stream=True, extra_headers=NO_CACHE, **kwargs))
    starts = [e for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    assert len(starts) == 1
    block = starts[0].content_block
    assert block.id.startswith("toolu_") and block.name == "get_weather" and block.input == {}
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.index == starts[0].index)
    assert json.loads(partial) == call.input
    assert next(e for e in events if e.type == "message_delta").delta.stop_reason == "tool_use"
    with client.messages.stream(extra_headers=NO_CACHE, **kwargs) as stream:
        final = stream.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [call.input]


def test_count_tokens(client):
    short = client.messages.count_tokens(model=MODEL, messages=ask("Hi"))
    long = client.messages.count_tokens(model=MODEL, messages=ask("Hi " * 50))
    assert 0 < short.input_tokens < long.input_tokens
    system = "Answer briefly."
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=ask("Why is the sky blue?"))
    made = client.messages.create(model=MODEL, max_tokens=1, system=system, messages=ask("Why is the sky blue?"))
    assert counted.input_tokens == prompt_tokens(made.usage)
    with_tools = client.messages.count_tokens(model=MODEL, system=system, tools=WEATHER,
                                              messages=ask("Why is the sky blue?"))
    assert with_tools.input_tokens > counted.input_tokens, "the tools are part of the prompt"


def error_type(e):
    assert isinstance(e, anthropic.APIStatusError)
    assert e.body["type"] == "error" and e.body["error"]["message"], e.body
    return e.body["error"]["type"]


def test_errors_are_anthropics(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=8, messages=ask("Hi"))
    assert e.value.status_code == 404 and error_type(e.value) == "not_found_error"
    for bad in [dict(max_tokens=0, messages=ask("Hi")),
                dict(max_tokens=8, messages=[{"role": "system", "content": "Hi"}]),
                dict(max_tokens=8, messages=ask("Hi"), extra_body={"temperature": 1.5}),
                dict(max_tokens=8, messages=[])]:
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(model=MODEL, **bad)
        assert e.value.status_code == 400 and error_type(e.value) == "invalid_request_error", bad
    # Streamed: refused before the stream starts, with a status.
    with pytest.raises(anthropic.BadRequestError):
        list(client.messages.create(model=MODEL, max_tokens=0, messages=ask("Hi"), stream=True))
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=ask("Hi"))


def test_api_keys_by_x_api_key_or_bearer(tmp_path_factory):
    proc, root = serve(tmp_path_factory, "--api-key", "sk-claude")
    try:
        kwargs = dict(model=MODEL, max_tokens=2, messages=ask("Hi"))
        for good in [dict(api_key="sk-claude"), dict(auth_token="sk-claude")]:
            r = anthropic.Anthropic(base_url=root, max_retries=0, **good).messages.create(**kwargs)
            assert r.usage.output_tokens > 0, good
        with pytest.raises(anthropic.AuthenticationError) as e:
            anthropic.Anthropic(base_url=root, api_key="sk-wrong", max_retries=0).messages.create(**kwargs)
        assert e.value.status_code == 401 and error_type(e.value) == "authentication_error"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
