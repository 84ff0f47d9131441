"""LangChain's `ChatOpenAI` against the real `lantern serve`, pointed at it by base_url only:
plain and streamed chat, forced tool calls via `bind_tools`, and `with_structured_output`."""
import os
import subprocess
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_url():
    binary = os.environ.get("LANTERN_BIN", str(ROOT / "target/release/lantern"))
    proc = subprocess.Popen([binary, "serve", "smollm2", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    yield line.removeprefix("listening on ")
    proc.terminate()
    proc.wait(timeout=30)


def test_invoke_and_stream(base_url):
    llm = ChatOpenAI(base_url=base_url, api_key="unused", model="smollm2", temperature=0, max_tokens=24)
    reply = llm.invoke([SystemMessage("You answer briefly."), HumanMessage("Why is the sky blue?")])
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata["output_tokens"] == 24 or reply.response_metadata["finish_reason"] == "stop"
    streamed = "".join(chunk.content for chunk in llm.stream("Why is the sky blue?"))
    assert streamed == llm.invoke("Why is the sky blue?").content


class GetWeather(BaseModel):
    """Current weather for a city."""
    city: str = Field(description="The city name")


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


def chat(base_url):
    return ChatOpenAI(base_url=base_url, api_key="unused", model="smollm2", temperature=0, max_tokens=100)


def test_bind_tools_forced(base_url):
    reply = chat(base_url).bind_tools([GetWeather], tool_choice="GetWeather").invoke("Weather in Paris?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "GetWeather"
    assert isinstance(reply.tool_calls[0]["args"]["city"], str)
    assert reply.response_metadata["finish_reason"] == "tool_calls"


# Distinct prompts, so that no answer is a replay from the response cache (the default is json_schema).
@pytest.mark.parametrize("method, name, age", [(None, "Alice", 30), ("json_schema", "Bob", 41),
                                               ("function_calling", "Carol", 25)])
def test_with_structured_output(base_url, method, name, age):
    kwargs = {"method": method} if method else {}
    person = chat(base_url).with_structured_output(Person, **kwargs).invoke(f"{name} is {age}. Who is that?")
    assert isinstance(person, Person) and person == Person(name=name, age=age)
