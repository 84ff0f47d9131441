"""The official `ollama` Python client against the real `lantern serve` on its Ollama API:
chat and generate (streamed and not), `format` (JSON and a schema), tools, embed/embeddings,
list/show/ps/version, and errors as `ollama.ResponseError` with the HTTP status."""
import json
import os
import subprocess
from pathlib import Path

import httpx
import ollama
import pydantic
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2"
GREEDY = {"temperature": 0, "seed": 42, "num_predict": 24}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    binary = os.environ.get("LANTERN_BIN", str(ROOT / "target/release/lantern"))
    db = tmp_path_factory.mktemp("db") / "lantern.db"
    proc = subprocess.Popen([binary, "serve", MODEL, "--port", "0", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    yield line.removeprefix("listening on ").removesuffix("/v1")
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(host):
    return ollama.Client(host=host)


def ask(text):
    return [{"role": "user", "content": text}]


def assert_final(r):
    """The figures Ollama ends every answer with: counts, and durations in integer nanoseconds."""
    assert r.done is True and r.done_reason in ("stop", "length")
    assert r.eval_count > 0 and r.prompt_eval_count > 0
    for d in (r.total_duration, r.prompt_eval_duration, r.eval_duration):
        assert isinstance(d, int) and d > 0
    # Zero when the model was already loaded (it is: `serve smollm2` loads it).
    assert isinstance(r.load_duration, int) and r.load_duration >= 0
    assert r.total_duration >= r.eval_duration


def test_chat(client):
    r = client.chat(model=MODEL, messages=ask("Why is the sky blue?"), options=GREEDY)
    assert r.model == MODEL and r.message.role == "assistant"
    assert r.message.content.strip()
    assert r.done_reason == "length" and r.eval_count == 24
    assert_final(r)
    # The tag suffix names the same model.
    same = client.chat(model=MODEL + ":latest", messages=ask("Why is the sky blue?"), options=GREEDY)
    assert same.message.content == r.message.content


def test_chat_stream_matches(client):
    kwargs = dict(model=MODEL, messages=ask("Count to five."), options=GREEDY)
    chunks = list(client.chat(stream=True, **kwargs))
    assert len(chunks) > 2
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done is True
    assert chunks[-1].eval_count > 0 and chunks[-1].message.content == ""
    assert_final(chunks[-1])
    text = "".join(c.message.content for c in chunks)
    assert text == client.chat(**kwargs).message.content


def test_generate(client):
    kwargs = dict(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    r = client.generate(**kwargs)
    assert "Paris" in r.response
    assert_final(r)
    chunks = list(client.generate(stream=True, **kwargs))
    assert chunks[-1].done is True and all(not c.done for c in chunks[:-1])
    assert "".join(c.response for c in chunks) == r.response
    assert chunks[-1].eval_count == r.eval_count


def test_format_json(client):
    r = client.chat(model=MODEL, messages=ask("Give a JSON object with a name and an age."),
                    format="json", options={"temperature": 0, "num_predict": 64})
    assert r.done_reason == "stop", r.message.content
    assert isinstance(json.loads(r.message.content), dict)


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int


def test_format_schema(client):
    r = client.chat(model=MODEL, messages=ask("Describe Paris as JSON."),
                    format=City.model_json_schema(), options={"temperature": 0, "num_predict": 96})
    assert r.done_reason == "stop", r.message.content
    City.model_validate_json(r.message.content)
    g = client.generate(model=MODEL, prompt="Describe Tokyo as JSON.",
                        format=City.model_json_schema(), options={"temperature": 0, "num_predict": 96})
    City.model_validate_json(g.response)


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The name of the city
    """
    return "sunny"


def test_tools(client):
    tool_dict = {"type": "function", "function": {
        "name": "get_time", "description": "The current time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    for tools, names in (([get_weather], {"get_weather"}), ([tool_dict], {"get_time"}),
                         ([get_weather, tool_dict], {"get_weather", "get_time"})):
        r = client.chat(model=MODEL, messages=ask("What is the weather in Paris right now?"),
                        tools=tools, options={"temperature": 0, "num_predict": 64})
        assert_final(r)
        # The tiny model may answer in words; any call it makes names a declared tool.
        for call in r.message.tool_calls or []:
            assert call.function.name in names
            assert isinstance(call.function.arguments, dict)
    # A conversation with a call and its result goes back through the template.
    r = client.chat(model=MODEL, tools=[get_weather], options={"temperature": 0, "num_predict": 16},
                    messages=ask("Weather in Paris?") + [
                        {"role": "assistant", "content": "",
                         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                        {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
    assert r.message.content or r.message.tool_calls


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_embed(client):
    texts = ["The cat sat on the mat.", "The cat sat on the mat."]
    r = client.embed(model="all-minilm", input=texts)
    assert len(r.embeddings) == 2 and all(len(v) == 384 for v in r.embeddings)
    assert cosine(*r.embeddings) == pytest.approx(1, abs=1e-5)
    assert r.prompt_eval_count > 0
    one = client.embed(model="all-minilm:latest", input="Stock markets fell sharply.")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 384
    assert cosine(one.embeddings[0], r.embeddings[0]) < 0.5
    legacy = client.embeddings(model="all-minilm", prompt=texts[0])
    assert len(legacy.embedding) == 384
    assert cosine(legacy.embedding, r.embeddings[0]) == pytest.approx(1, abs=1e-5)


def test_list_show_ps_version(client, host):
    names = {m.model for m in client.list().models}
    assert {MODEL, "gemma3", "all-minilm"} <= names
    shown = client.show(MODEL)
    assert shown.template and "completion" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "embedding" in client.show("all-minilm").capabilities
    client.chat(model=MODEL, messages=ask("Hi"), options={"num_predict": 2})
    assert MODEL in {m.model for m in client.ps().models}
    # The client has no call for it; apps check it before using newer fields.
    version = httpx.get(f"{host}/api/version").json()["version"]
    assert tuple(map(int, version.split("."))) >= (0, 5, 0)


def test_errors(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="no-such-model", messages=ask("Hi"))
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="no-such-model", prompt="Hi", stream=True).__next__()
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=MODEL, messages=ask("Hi"), options={"num_predict": -5})
    assert e.value.status_code == 400 and "num_predict" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.show("no-such-model")
    assert e.value.status_code == 404
