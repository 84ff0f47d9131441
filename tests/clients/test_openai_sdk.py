"""The official `openai` Python SDK against the real `lantern serve` on the default model."""
import os
import subprocess
from pathlib import Path

import openai
import pytest

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
    yield openai.OpenAI(base_url=line.removeprefix("listening on "), api_key="unused")
    proc.terminate()
    proc.wait(timeout=30)


def ask(text):
    return [{"role": "user", "content": text}]


def test_models(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    # Every installed model, chat and embedding.
    assert MODEL in ids and "gemma3" in ids and "all-minilm" in ids
    assert client.models.retrieve(MODEL).owned_by == "lantern"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("Why is the sky blue?"),
                                       temperature=0, max_tokens=24)
    assert r.object == "chat.completion"
    assert "light" in r.choices[0].message.content.lower()
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_stream_with_and_without_usage(client):
    kwargs = dict(model=MODEL, messages=ask("Count to five."), temperature=0, max_tokens=10)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    assert text == whole
    plain = list(client.chat.completions.create(stream=True, **kwargs))
    assert all(c.usage is None for c in plain)
    assert plain[-1].choices[0].finish_reason == "length"


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.object == "text_completion" and "Paris" in r.choices[0].text


def test_seed_repeats(client):
    kwargs = dict(model=MODEL, messages=ask("Tell me a story."), temperature=1.0, max_tokens=16, seed=1234)
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_stop(client):
    kwargs = dict(model=MODEL, messages=ask("Why is the sky blue?"), temperature=0, max_tokens=40)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    cut = client.chat.completions.create(stop=["light"], **kwargs).choices[0]
    assert "light" in full and cut.message.content == full[: full.index("light")]
    assert cut.finish_reason == "stop"


def test_logprobs_and_n(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("Hi"), max_tokens=3, logprobs=True,
                                       top_logprobs=3, n=2, seed=5)
    assert len(r.choices) == 2
    entries = r.choices[0].logprobs.content
    assert len(entries) == 3 and len(entries[0].top_logprobs) == 3
    assert entries[0].logprob <= 0


def test_errors_map_to_sdk_exceptions(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ask("x"), temperature=5)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=ask("x"))


def reference_embeddings():
    import json
    return json.loads((ROOT / "tests" / "fixtures" / "embeddings.json").read_text())["items"]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_embeddings_base64_default_and_float(client):
    items = reference_embeddings()[:4]
    texts = [it["text"] for it in items]
    # The SDK asks for base64 unless told otherwise and decodes it itself.
    r = client.embeddings.create(model="all-minilm", input=texts)
    floats = client.embeddings.create(model="all-minilm", input=texts, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == sum(it["n_tokens"] for it in items)
    for it, d, f in zip(items, r.data, floats.data):
        assert len(d.embedding) == 384
        assert cosine(d.embedding, it["embedding"]) >= 0.999
        assert max(abs(a - b) for a, b in zip(d.embedding, f.embedding)) < 1e-6
    one = client.embeddings.create(model="all-minilm", input="hello", dimensions=384)
    assert len(one.data) == 1
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-minilm", input="hello", dimensions=128)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="hello")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hello")


def test_metrics_parse_as_prometheus_text(client):
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    client.chat.completions.create(model=MODEL, messages=ask("Say hi."), temperature=0, max_tokens=4)
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics") as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["lantern_requests"].type == "counter"
    ok = [s for s in families["lantern_requests"].samples
          if s.name == "lantern_requests_total" and s.labels["model"] == MODEL
          and s.labels["outcome"] == "ok"]
    assert ok and ok[0].value >= 1
    ttft = families["lantern_time_to_first_token_seconds"]
    assert ttft.type == "histogram"
    assert any(s.name.endswith("_count") and s.value >= 1 for s in ttft.samples)
    # Every gap between tokens is observed: 4 tokens give 3 gaps.
    gaps = families["lantern_inter_token_latency_seconds"]
    assert gaps.type == "histogram"
    assert any(s.name.endswith("_count") and s.labels["model"] == MODEL and s.value >= 3
               for s in gaps.samples)
    loaded = [s for s in families["lantern_model_loaded"].samples if s.labels["model"] == MODEL]
    assert loaded and loaded[0].value == 1
    assert "lantern_running_sequences" in families and "lantern_cache_hits" in families
