"""LangChain's `ChatOpenAI` against the real `lantern serve`, pointed at it by base_url only."""
import os
import subprocess
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

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
