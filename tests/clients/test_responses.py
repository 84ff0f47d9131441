"""OpenAI's Responses API (`client.responses`) against the real `lantern serve`: plain and
streamed answers, instructions and limits, function calls and their outputs, `responses.parse`
into a Pydantic model, and the stateless server's refusal of `previous_response_id`."""
import json
import os
import subprocess
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2"
NO_CACHE = {"cache-control": "no-cache"}
WEATHER = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                           "required": ["city"]}}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    binary = os.environ.get("LANTERN_BIN", str(ROOT / "target/release/lantern"))
    db = tmp_path_factory.mktemp("db") / "lantern.db"
    proc = subprocess.Popen([binary, "serve", MODEL, "--port", "0", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    yield openai.OpenAI(base_url=line.removeprefix("listening on "), api_key="unused")
    proc.terminate()
    proc.wait(timeout=30)


def test_plain_and_streamed(client):
    kwargs = dict(model=MODEL, input="Why is the sky blue?", instructions="Answer briefly.",
                  max_output_tokens=16, temperature=0)
    r = client.responses.create(**kwargs)
    assert r.object == "response" and r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output_text
    assert r.usage.output_tokens == 16
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    events = list(client.responses.create(stream=True, extra_headers=NO_CACHE, **kwargs))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text == events[-1].response.output_text
    whole = client.responses.create(model=MODEL, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Say hello."}]}], max_output_tokens=64, temperature=0)
    assert whole.status == "completed" and whole.output_text


def test_function_call_round_trip(client):
    r = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=WEATHER,
                                tool_choice="required", parallel_tool_calls=False, temperature=0)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    streamed = list(client.responses.create(model=MODEL, input="What is the weather in Paris?",
                                            tools=WEATHER, tool_choice="required",
                                            parallel_tool_calls=False, temperature=0, stream=True,
                                            extra_headers=NO_CACHE))
    done = [e for e in streamed if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == json.loads(calls[0].arguments)
    call = calls[0]
    answer = client.responses.create(model=MODEL, tools=WEATHER, temperature=0, max_output_tokens=40, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"},
    ], tool_choice="none")
    assert answer.output[0].type == "message" and answer.output_text


class Person(BaseModel):
    name: str
    age: int


def test_parse_into_a_model(client):
    r = client.responses.parse(model=MODEL, input="Invent a person.", text_format=Person, temperature=0)
    assert isinstance(r.output_parsed, Person)
    assert r.output_parsed == Person.model_validate_json(r.output_text)


def test_stateless_and_bad_input(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_123")
    assert e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=[])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input=[{"type": "input_image", "image_url": "x"}])
