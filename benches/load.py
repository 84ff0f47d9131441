#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible chat server (Lantern, llama-server, ...).

For each concurrency level C it starts C clients at once; each client sends
--requests-per-client streaming chat completions one after another. Every request
gets its own prompt ("[<salt>-<client>-<request>] Write a long story about
<topic>", the salt fresh for every level and run) so no prompt cache can help, temperature 0, and max_tokens
--max-tokens. `ignore_eos` is not portable, so a request may stop early: what
counts is the completion tokens actually generated, taken from the usage chunk
(`stream_options: {include_usage: true}`), or the number of content chunks when
the server sends no usage.

Per request: TTFT (request sent -> first non-empty content delta), the gaps
between content chunks (ITL), TPOT ((last chunk - first chunk) / (tokens - 1);
the same as ITL when a server sends one token per chunk), completion tokens,
errors (HTTP status != 200, an error event in the stream, or an exception).

Per level: aggregate generation tokens/s (sum of completion tokens / wall time
of the level, first request sent to last one done), TTFT / ITL / TPOT p50 and
p95, requests, errors.

--prefix-test: a fresh ~1,000-token system prompt (numbered filler sentences,
deterministic, salted with --prefix-salt so that repeated runs against one
server do not hit an old cache) is sent twice in a row with two different short
user messages and max_tokens 8; reports both TTFTs and second / first. A server
that reuses the common prefix answers the second much sooner.

Usage:
  python3 benches/load.py --url http://127.0.0.1:8080/v1 --model smollm2 \\
      --concurrency 1,4,8,16,32 [--requests-per-client 2] [--max-tokens 128] \\
      [--prefix-test] [--no-load] [--out FILE]

Prints the JSON report to stdout (or writes --out) and a progress line per level
to stderr. Needs Python 3.11 and httpx.
"""
import argparse
import asyncio
import json
import math
import sys
import time

import httpx

TOPICS = [
    "a lighthouse keeper", "a lost robot", "a dragon who cannot fly", "a city under the sea",
    "a time-travelling cat", "the last library on Earth", "a baker in Paris", "a desert caravan",
    "a haunted violin", "two rival astronomers", "a village of clockmakers", "a talking river",
    "an arctic expedition", "a pirate who hates water", "a garden on Mars", "a forgotten king",
    "a detective in Tokyo", "a circus in the rain", "a mountain monastery", "a teenage inventor",
    "a ghost ship", "the first snow of winter", "a painter who lost her colours", "a jungle temple",
    "a train that never stops", "a chess prodigy", "a secret tunnel under London", "a kind giant",
    "a musician on the moon", "an old map", "a storm chaser", "a fox and a crow",
    "a submarine crew", "a lonely satellite", "a bakery for monsters", "an island of mirrors",
]


def pct(values, p):
    """Percentile with linear interpolation (numpy's default); None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def ms(x):
    return None if x is None else round(x * 1000.0, 2)


def story_prompt(client, request, salt=""):
    """A prompt of its own for every request. The id (salted per level and run) comes
    first, so that no two requests, not even across levels or repeated runs against one
    server, share more of a prompt than the chat template's preamble: a prefix cache
    cannot help."""
    topic = TOPICS[(client * 7 + request) % len(TOPICS)]
    return (f"[{salt}-{client}-{request}] Write a long, detailed story about {topic}. "
            f"Give it a title, several chapters, named characters and plenty of dialogue.")


def filler_text(target_tokens=1000, salt=""):
    """Deterministic filler of about target_tokens tokens: numbered sentences.

    Each sentence is ~31 tokens with SmolLM2's tokenizer (digits are single
    tokens), so 32 of them are ~1,000 tokens. The salt goes first so it changes
    the whole prefix."""
    words = ["amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor",
             "indigo", "juniper", "kelp", "lagoon", "meadow", "nickel", "orchard", "prairie"]
    out = [f"Reference notes {salt}.".strip()]
    for i in range(1, target_tokens // 31 + 1):
        a, b, c = words[i % 16], words[(i * 7) % 16], words[(i * 11) % 16]
        out.append(f"Note {i}: the {a} survey recorded {i * 3} samples near the {b} site, "
                   f"and the {c} team filed report {1000 + i}.")
    return " ".join(out)


class Result:
    __slots__ = ("ok", "status", "error", "ttft", "itls", "tokens", "chunks", "usage",
                 "start", "end", "first", "last", "finish_reason", "prompt_tokens", "model")

    def __init__(self):
        self.ok, self.status, self.error = False, None, None
        self.ttft, self.itls, self.tokens, self.chunks, self.usage = None, [], 0, 0, False
        self.start = self.end = self.first = self.last = None
        self.finish_reason = self.prompt_tokens = self.model = None

    def tpot(self):
        if self.first is None or self.tokens < 2:
            return None
        return (self.last - self.first) / (self.tokens - 1)


async def chat_stream(client, url, model, messages, max_tokens, headers):
    """One streaming chat completion; returns a Result (never raises)."""
    r = Result()
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    r.start = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body,
                                 headers=headers) as resp:
            r.status = resp.status_code
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", "replace")
                r.error = f"HTTP {resp.status_code}: {text[:200]}"
                r.end = time.perf_counter()
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                try:
                    ev = json.loads(data)
                except json.JSONDecodeError:
                    r.error = f"bad SSE data: {data[:200]}"
                    break
                if "error" in ev:
                    r.error = f"stream error: {json.dumps(ev['error'])[:200]}"
                    break
                if r.model is None and ev.get("model"):
                    r.model = ev["model"]
                for choice in ev.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if r.first is None:
                            r.first = now
                            r.ttft = now - r.start
                        else:
                            r.itls.append(now - r.last)
                        r.last = now
                        r.chunks += 1
                    if choice.get("finish_reason"):
                        r.finish_reason = choice["finish_reason"]
                usage = ev.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    r.tokens = int(usage["completion_tokens"])
                    r.prompt_tokens = usage.get("prompt_tokens")
                    r.usage = True
    except Exception as e:  # noqa: BLE001 - every failure is a counted error
        r.error = f"{type(e).__name__}: {e}"
    r.end = time.perf_counter()
    if not r.usage:
        r.tokens = r.chunks
    r.ok = r.error is None and r.first is not None
    if r.error is None and r.first is None:
        r.error = "no content"
    return r


async def run_level(url, model, conc, reqs_per_client, max_tokens, headers, timeout, warmup):
    limits = httpx.Limits(max_connections=conc + 4, max_keepalive_connections=conc + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=30.0),
                                 limits=limits) as client:
        for w in range(warmup):
            await chat_stream(client, url, model, [{"role": "user", "content":
                              f"[{time.time_ns():x}] Say hello ({w})."}], 4, headers)

        salt = f"{time.time_ns():x}"[-8:]

        async def one_client(i):
            out = []
            for j in range(reqs_per_client):
                msgs = [{"role": "user", "content": story_prompt(i, j, salt)}]
                out.append(await chat_stream(client, url, model, msgs, max_tokens, headers))
            return out

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(one_client(i) for i in range(conc)))
        wall = time.perf_counter() - t0

    results = [r for rs in per_client for r in rs]
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft for r in ok]
    itls = [g for r in ok for g in r.itls]
    tpots = [t for t in (r.tpot() for r in ok) if t is not None]
    errors = [r.error for r in results if not r.ok]
    return {
        "concurrency": conc,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "wall_s": round(wall, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "tokens_per_request_mean": round(tokens / len(ok), 1) if ok else None,
        "tokens_from_usage": all(r.usage for r in ok) if ok else None,
        "chunks_per_token": round(sum(r.chunks for r in ok) / tokens, 3) if tokens else None,
        "served_models": sorted({str(r.model) for r in ok}),
        "finish_reasons": {fr: sum(1 for r in ok if r.finish_reason == fr)
                           for fr in sorted({str(r.finish_reason) for r in ok})},
        "ttft_ms": {"p50": ms(pct(ttfts, 50)), "p95": ms(pct(ttfts, 95)),
                    "max": ms(max(ttfts) if ttfts else None)},
        "itl_ms": {"p50": ms(pct(itls, 50)), "p95": ms(pct(itls, 95)),
                   "max": ms(max(itls) if itls else None)},
        "tpot_ms": {"p50": ms(pct(tpots, 50)), "p95": ms(pct(tpots, 95))},
    }


async def prefix_test(url, model, headers, timeout, salt, prefix_tokens):
    system = filler_text(prefix_tokens, salt)
    users = ["In one word: which survey came first?", "Name one team from the notes."]
    out = {"system_chars": len(system), "max_tokens": 8}
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=30.0)) as client:
        rs = []
        for u in users:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": u}]
            rs.append(await chat_stream(client, url, model, msgs, 8, headers))
    out["errors"] = [r.error for r in rs if not r.ok]
    out["prompt_tokens"] = [r.prompt_tokens for r in rs]
    out["served_models"] = sorted({str(r.model) for r in rs})
    out["first_ttft_ms"] = ms(rs[0].ttft)
    out["second_ttft_ms"] = ms(rs[1].ttft)
    out["ratio_second_over_first"] = (round(rs[1].ttft / rs[0].ttft, 3)
                                      if rs[0].ttft and rs[1].ttft else None)
    return out


async def main_async(args):
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    report = {"url": url, "model": args.model, "max_tokens": args.max_tokens,
              "requests_per_client": args.requests_per_client, "levels": []}
    if args.prefix_test:
        salt = args.prefix_salt if args.prefix_salt is not None else f"{time.time_ns():x}"
        report["prefix_test"] = await prefix_test(url, args.model, headers, args.timeout,
                                                  salt, args.prefix_tokens)
        p = report["prefix_test"]
        print(f"[load] prefix: first {p['first_ttft_ms']} ms, second {p['second_ttft_ms']} ms, "
              f"ratio {p['ratio_second_over_first']}", file=sys.stderr)
    if not args.no_load:
        for c in (int(x) for x in args.concurrency.split(",") if x.strip()):
            lvl = await run_level(url, args.model, c, args.requests_per_client, args.max_tokens,
                                  headers, args.timeout, args.warmup)
            report["levels"].append(lvl)
            print(f"[load] C={c:>3}: {lvl['tokens_per_s']} tok/s, "
                  f"{lvl['completion_tokens']} tok in {lvl['wall_s']} s, "
                  f"TTFT p50/p95 {lvl['ttft_ms']['p50']}/{lvl['ttft_ms']['p95']} ms, "
                  f"ITL p50/p95 {lvl['itl_ms']['p50']}/{lvl['itl_ms']['p95']} ms, "
                  f"errors {lvl['errors']}/{lvl['requests']}", file=sys.stderr)
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080/v1",
                    help="API base, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--concurrency", default="1,4,8,16,32")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed short requests before each level")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-request read timeout, s")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--prefix-test", action="store_true")
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--prefix-salt", default=None,
                    help="fixed salt for the prefix filler (default: a fresh one per run)")
    ap.add_argument("--no-load", action="store_true", help="only the prefix test")
    ap.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
