"""Structured output and tool calling through the official `openai` SDK against the real `lantern serve`.

Covers function tools (required / named / streamed / round trip with tool results),
`response_format` (json_object, json_schema, Pydantic `parse`), Lantern's `regex` and
`grammar` extensions, request errors, and 100 seeded random JSON Schemas whose outputs
must validate with `jsonschema`.
"""
import json
import os
import random
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    binary = os.environ.get("LANTERN_BIN", str(ROOT / "target/release/lantern"))
    db = tmp_path_factory.mktemp("db") / "lantern.db"
    proc = subprocess.Popen([binary, "serve", MODEL, "--port", "0", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    yield openai.OpenAI(base_url=line.removeprefix("listening on "), api_key="unused", max_retries=0)
    proc.terminate()
    proc.wait(timeout=30)


def ask(text):
    return [{"role": "user", "content": text}]


def tool(name, description, **properties):
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {k: {"type": t} for k, t in properties.items()},
                       "required": list(properties), "additionalProperties": False}}}


WEATHER = tool("get_weather", "Current weather for a city.", city="string")
TIME = tool("get_time", "Current local time in a timezone.", timezone="string")


def test_tool_round_trip(client):
    messages = ask("What is the weather in Paris?")
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                       tool_choice="required", temperature=0, max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)

    messages.append(choice.message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18, "sky": "sunny"}'}
                 for call in choice.message.tool_calls]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                       tool_choice="none", temperature=0, max_tokens=40)
    answer = r.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None and answer.message.content.strip()


def test_named_tool_choice_single_call(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask("What is the weather in Paris?"), tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False, temperature=0, max_tokens=100)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1 and calls[0].function.name == "get_time"
    assert isinstance(json.loads(calls[0].function.arguments)["timezone"], str)


def test_streamed_tool_calls_match_plain(client):
    kwargs = dict(model=MODEL, messages=ask("Weather in Paris and in Tokyo?"), tools=[WEATHER, TIME],
                  tool_choice="required", temperature=0, seed=7, max_tokens=150)
    plain = client.chat.completions.create(**kwargs).choices[0]
    joined, finish = {}, None
    # no-cache: generate afresh rather than replay the plain answer from the response cache
    for chunk in client.chat.completions.create(stream=True, extra_headers={"Cache-Control": "no-cache"}, **kwargs):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for piece in chunk.choices[0].delta.tool_calls or []:
            call = joined.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or piece.id
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""
    streamed = [joined[i] for i in sorted(joined)]
    assert finish == plain.finish_reason == "tool_calls"
    assert streamed and all(c["id"] for c in streamed)
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == \
           [(c.function.name, json.loads(c.function.arguments)) for c in plain.message.tool_calls]


class City(BaseModel):
    name: str
    country: str
    population: int = Field(ge=0, le=50_000_000)  # unbounded, a small model may write 1s forever


def test_parse_into_pydantic(client):
    r = client.chat.completions.parse(model=MODEL, messages=ask("Describe Paris."), response_format=City,
                                      temperature=0, max_tokens=100)
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, City) and message.parsed == City.model_validate_json(message.content)


def test_json_object(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask('Reply in JSON with the keys "name" and "age" for Alice, who is 30.'),
        response_format={"type": "json_object"}, temperature=0, max_tokens=100)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_regex_and_grammar_extensions(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("Make up a phone number."),
                                       extra_body={"regex": "[0-9]{3}-[0-9]{4}"}, temperature=0.8, seed=3)
    assert re.fullmatch("[0-9]{3}-[0-9]{4}", r.choices[0].message.content)
    assert r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model=MODEL, messages=ask("Is the sky blue?"),
                                       extra_body={"grammar": 'start: "yes" | "no"'}, temperature=0)
    assert r.choices[0].message.content in {"yes", "no"}


def test_bad_requests(client):
    bad_schema = {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ask("Hi"), response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": bad_schema, "strict": True}})
    assert err.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ask("Hi"), tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "no_such_tool"}})
    assert err.value.body["param"] == "tool_choice"


# --- random schemas --------------------------------------------------------------------------

WORDS = ["name", "id", "color", "size", "city", "tags", "score", "active", "owner", "items",
         "kind", "level", "price", "note", "title", "count", "flag", "label", "code", "status"]


def random_schema(rng, depth=0):
    """Objects nest up to three deep, arrays hold at most four items, strings at most 20 characters."""
    kinds = ["enum", "integer", "number", "boolean", "string"] + ["object", "array"] * (depth < 3)
    kind = "object" if depth == 0 else rng.choice(kinds)
    if kind == "object":
        names = rng.sample(WORDS, rng.randint(1, 4))
        return {"type": "object", "properties": {n: random_schema(rng, depth + 1) for n in names},
                "required": [n for n in names if rng.random() < 0.7], "additionalProperties": False}
    if kind == "array":
        low = rng.randint(0, 2)
        return {"type": "array", "items": random_schema(rng, depth + 1),
                "minItems": low, "maxItems": rng.randint(max(low, 1), 4)}
    if kind == "enum":
        return {"type": "string", "enum": rng.sample(["red", "green", "blue", "small", "large", "on", "off"],
                                                     rng.randint(2, 4))}
    if kind in ("integer", "number"):
        low = rng.randint(-100, 50)
        schema = {"type": kind, "minimum": low, "maximum": low + rng.randint(0, 200)}
        if kind == "number":  # otherwise a small model may write decimals forever
            schema["multipleOf"] = rng.choice([0.5, 0.25])
        return schema
    if kind == "boolean":
        return {"type": "boolean"}
    return {"type": "string", "maxLength": rng.randint(1, 20)}


def longest(schema):
    """Rough upper bound on the characters of a value (numbers counted as 8)."""
    if schema["type"] == "object":
        return 2 + sum(len(k) + 6 + longest(v) for k, v in schema["properties"].items())
    if schema["type"] == "array":
        return 2 + schema["maxItems"] * (2 + longest(schema["items"]))
    if "enum" in schema:
        return 2 + max(map(len, schema["enum"]))
    return {"string": 2 + schema.get("maxLength", 0), "boolean": 5}.get(schema["type"], 8)


def bounded_schema(seed, limit=250):
    rng = random.Random(seed)
    while longest(schema := random_schema(rng)) > limit:
        pass
    return schema


SCHEMAS = [bounded_schema(n) for n in range(100)]


def test_random_schemas(client):
    def run(schema, seed):
        r = client.chat.completions.create(
            model=MODEL, messages=ask("Fill in an example record."), temperature=0.8, seed=seed, max_tokens=400,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "record", "schema": schema, "strict": True}})
        return schema, seed, r.choices[0].finish_reason, r.choices[0].message.content

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # concurrent, so that the server batches them
        results = list(pool.map(lambda case: run(*case), [(s, seed) for s in SCHEMAS for seed in (1, 2)]))
    print(f"\n{len(results)} random-schema requests in {time.monotonic() - start:.1f}s")
    failures = []
    for schema, seed, finish, content in results:
        try:
            assert finish == "stop", f"finish_reason {finish}"
            jsonschema.validate(json.loads(content), schema)
            outside_strings = re.sub(r'"(\\.|[^"\\])*"', '""', content)
            assert not re.search(r"\s", outside_strings.replace(", ", ",").replace(": ", ":")), "whitespace"
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            failures.append(f"seed={seed} schema={json.dumps(schema)}\n  {finish}: {content!r}\n  {e}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
