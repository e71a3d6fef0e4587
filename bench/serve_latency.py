"""How much does `steam-train serve` cost over calling llama.cpp directly? Goals: decode speed and
time to first token through the server ≥ 0.95× an in-process ``llama_cpp.Llama``; our middleware
adds ≤ 2 ms per request.

One run, one machine, same GGUF, same ``n_ctx`` and threads:

* **in-process baseline**: ``Llama.create_chat_completion(stream=True)`` in this process;
* **server**: ``steam-train serve`` as a subprocess, the same request streamed over HTTP (httpx),
  timed on the client side (so HTTP, JSON, SSE and our middleware are all inside the figure);
* **library server**: plain ``python -m llama_cpp.server`` with the same settings, to separate what
  HTTP serving costs from what our layer costs.

Rounds alternate baseline / server so load changes on a shared machine hit both alike; medians and
the best round (min TTFT, max tokens/s: the least disturbed run, as ``timeit`` advises) are reported. Decode tokens/s = (completion tokens − 1) / (last token time − first token time); TTFT =
first content chunk − request start. Then the middleware alone: a chat body through
:class:`steam_persona.serve.middleware.SteamMiddleware` (auth, normalise, persona, schema check, prompt token
count, re-serialise) into an app doing the library's own prompt preparation, minus that app alone.

Several users: each round also sends ``--clients`` non-streamed requests at once to our server and
to the library's (aggregate completion tokens/s over the batch's wall time, and the slowest request);
ours runs every llama call on one dedicated thread, the library one thread-pool hop per token.

Usage: ``python bench/serve_latency.py [--model smollm2] [--rounds 7] [--max_tokens 64] [--n_threads N] [--clients 1,4]``.
Prints the figures and writes bench/results/serve_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from steam_persona.serve.chat_handler import install as install_handler  # noqa: E402
from steam_persona.common.arguments import n_threads  # noqa: E402
from steam_persona.serve.engine import Worker  # noqa: E402
from steam_persona.serve.grammar import GrammarChecker  # noqa: E402
from steam_persona.serve.middleware import BODY, SteamMiddleware  # noqa: E402
from steam_persona.serve.routes import Served  # noqa: E402
from steam_persona.serve.modelinfo import read_model_info  # noqa: E402
from tests.serving import free_port, start_server  # noqa: E402
from steam_persona.common.hub import resolve_model  # noqa: E402
from steam_persona.common.persona import DEFAULT_SYSTEM  # noqa: E402

QUESTIONS = ["Tell me a long story about a dragon.", "Describe your favourite video game in detail.",
             "Write a long review of a racing game.", "Explain how to build a castle, step by step."]


def messages_for(round_no: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": QUESTIONS[round_no % len(QUESTIONS)]}]


def summarise(start: float, token_times: list[float], n_tokens: int) -> dict[str, float]:
    ttft = token_times[0] - start
    span = token_times[-1] - token_times[0]
    return {"ttft_ms": ttft * 1000, "decode_tok_s": (n_tokens - 1) / span if span > 0 else 0.0, "tokens": n_tokens}


def run_inprocess(llama, handler, messages, max_tokens: int) -> dict[str, float]:
    start, times = time.perf_counter(), []
    for chunk in llama.create_chat_completion(messages=messages, stream=True, temperature=0, max_tokens=max_tokens):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter())
    return summarise(start, times, handler.last_usage["completion_tokens"])


def run_server(client: httpx.Client, messages, max_tokens: int) -> dict[str, float]:
    body = {"messages": messages, "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True}}
    start, times, usage = time.perf_counter(), [], None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    # the plain library server ignores include_usage: count content chunks (one per token here)
    return summarise(start, times, usage["completion_tokens"] if usage else len(times))


def middleware_overhead(llama, handler, n_ctx: int, iterations: int) -> dict[str, dict[str, float]]:
    """Per-request milliseconds SteamMiddleware adds, for a short and a long (20-turn) chat.

    The bare figure is what the library's route does with a chat body before generating (parse the
    JSON, render the template, tokenise); the other is our middleware (checks on its thread) plus
    what our route does before generating (render; tokens come from the middleware's count). The token
    cache is emptied before every request, so each one is a first sight of its prompt.
    """

    async def library_prep(scope, receive, send):
        body = json.loads((await receive())["body"])
        prompt = handler.formatter(messages=body["messages"])
        llama.tokenize(prompt.prompt.encode("utf-8"), add_bos=not prompt.added_special, special=True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def our_route(scope, receive, send):
        # what our route does before generating: the chat handler renders; its tokens are cached
        handler.prompt_tokens(scope["state"][BODY].messages)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def sink(message):
        pass

    served = Served(llama=llama, handler=handler, grammars=GrammarChecker(str(llama.model_path)),
                    generate=Worker("bench-generate"), checks=Worker("bench-checks"), alias="bench", n_ctx=n_ctx,
                    request_timeout=300.0, check_budget=10.0)
    mw = SteamMiddleware(our_route, served=served, api_key="bench-key", persona=DEFAULT_SYSTEM, persona_mode="replace",
                         max_request_bytes=2**20, max_tokens_cap=1024)
    system = {"role": "system", "content": DEFAULT_SYSTEM}
    long_chat = [system]
    for i in range(10):
        long_chat += [{"role": "user", "content": f"Question {i}: " + "What about this game? " * 20},
                      {"role": "assistant", "content": "It is fun. " * 40}]
    bodies = {"short": [system, {"role": "user", "content": "Review Hades in two lines."}], "long": long_chat}
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer bench-key")]

    async def once(app, raw: bytes) -> float:
        async def receive():
            return {"type": "http.request", "body": raw, "more_body": False}
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                 "headers": headers + [(b"content-length", str(len(raw)).encode())]}
        handler._tokens.clear()
        t = time.perf_counter()
        await app(scope, receive, sink)
        return time.perf_counter() - t

    async def measure() -> dict[str, dict[str, float]]:
        out = {}
        for name, messages in bodies.items():
            raw = json.dumps({"model": "bench", "stream": True, "stream_options": {"include_usage": True},
                              "max_tokens": 256, "messages": messages}).encode()
            for _ in range(10):  # warm up
                await once(mw, raw)
                await once(library_prep, raw)
            with_mw, bare = [], []
            for _ in range(iterations):
                with_mw.append(await once(mw, raw))
                bare.append(await once(library_prep, raw))
            added = sorted((a - b) * 1000 for a, b in zip(with_mw, bare))
            out[name] = {"median_ms": statistics.median(added), "p95_ms": added[int(0.95 * len(added))],
                         "bare_median_ms": statistics.median(bare) * 1000,
                         "prompt_tokens": handler.prompt_tokens(messages)}
        return out

    return asyncio.run(measure())


def run_concurrent(base_url: str, n_clients: int, round_no: int, max_tokens: int) -> dict[str, float]:
    """``n_clients`` non-streamed chats at once (different questions); aggregate completion tokens/s
    over the wall time of the whole batch, and the slowest request's latency."""
    import threading

    results: list[tuple[int, float]] = []

    def one(i: int) -> None:
        body = {"messages": messages_for(round_no + i), "temperature": 0, "max_tokens": max_tokens}
        t = time.perf_counter()
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=600)
        results.append((r.json()["usage"]["completion_tokens"], time.perf_counter() - t))

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": n_clients, "aggregate_tok_s": sum(n for n, _ in results) / wall,
            "max_latency_s": max(s for _, s in results)}


class LibraryServer:
    """``python -m llama_cpp.server`` (no steam-persona layer) on a free port, same settings."""

    def __init__(self, model: str, n_ctx: int, threads: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", "bench", "--port", str(self.port),
             "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
             "--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False",
             "--chat_format", "chat_template.default"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("llama_cpp.server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="GGUF, export dir or `smollm2` (the embedded default)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max_tokens", type=int, default=64)
    ap.add_argument("--n_threads", type=int, default=0, help="0 = serve's default (half the usable cores)")
    ap.add_argument("--n_ctx", type=int, default=4096)
    ap.add_argument("--iterations", type=int, default=300, help="middleware timing repetitions")
    ap.add_argument("--clients", default="1,4", help="concurrent non-streamed clients per round (comma-separated)")
    ap.add_argument("--out", default=str(REPO / "bench/results/serve_latency.json"))
    args = ap.parse_args()

    import llama_cpp

    src = resolve_model(args.model)
    model = str(Path(src.path) / src.gguf_file) if src.gguf_file else args.model
    info = read_model_info(model)
    threads = n_threads(args.n_threads, generate=True)
    llama = llama_cpp.Llama(str(info.path), n_ctx=args.n_ctx, n_threads=threads, n_threads_batch=threads,
                            n_gpu_layers=-1, logits_all=False, verbose=False)
    handler = install_handler(llama, info.chat_template)

    rows: dict[str, list[dict[str, float]]] = {"inprocess": [], "server": [], "library_server": []}
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    concurrent: dict[str, list[dict[str, float]]] = {"server": [], "library_server": []}
    library = LibraryServer(str(info.path), args.n_ctx, threads)
    try:
        with start_server(model, extra_args=("--n_threads", str(threads), "--n_ctx", str(args.n_ctx),
                                             "--log_level", "warning")) as srv, \
                httpx.Client(base_url=srv.base_url, timeout=300) as client, \
                httpx.Client(base_url=library.base_url, timeout=300) as lib_client:
            run_server(client, messages_for(0), 8)  # warm up all three
            run_server(lib_client, messages_for(0), 8)
            run_inprocess(llama, handler, messages_for(0), 8)
            for r in range(args.rounds):
                for n in clients:
                    for name, url in (("server", srv.base_url), ("library_server", library.base_url)):
                        concurrent[name].append(run_concurrent(url, n, r, args.max_tokens))
                rows["inprocess"].append(run_inprocess(llama, handler, messages_for(r), args.max_tokens))
                rows["server"].append(run_server(client, messages_for(r), args.max_tokens))
                rows["library_server"].append(run_server(lib_client, messages_for(r), args.max_tokens))
                print(f"round {r + 1}/{args.rounds}: in-process {rows['inprocess'][-1]['decode_tok_s']:.1f} tok/s, "
                      f"server {rows['server'][-1]['decode_tok_s']:.1f} tok/s, "
                      f"library server {rows['library_server'][-1]['decode_tok_s']:.1f} tok/s", file=sys.stderr)
    finally:
        library.close()

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("ttft_ms", "decode_tok_s", "tokens")} for k, v in rows.items()}
    # best round (min TTFT, max tokens/s): on a shared machine the least disturbed run (timeit's rule)
    best = {k: {"ttft_ms": min(x["ttft_ms"] for x in v), "decode_tok_s": max(x["decode_tok_s"] for x in v)}
            for k, v in rows.items()}
    mw = middleware_overhead(llama, handler, llama.n_ctx(), args.iterations)
    result = {
        "date": time.strftime("%Y-%m-%d"), "model": info.path.name, "n_ctx": llama.n_ctx(), "n_threads": threads, "max_tokens": args.max_tokens,
        "rounds": args.rounds, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                          "load_avg_1m": os.getloadavg()[0]},
        "inprocess": med["inprocess"], "server": med["server"], "library_server": med["library_server"],
        "decode_ratio": med["server"]["decode_tok_s"] / med["inprocess"]["decode_tok_s"],
        "decode_ratio_vs_library_server": med["server"]["decode_tok_s"] / med["library_server"]["decode_tok_s"],
        # as a speed ratio (≥ 0.95 is the goal, like decode): in-process TTFT / server TTFT
        "ttft_ratio": med["inprocess"]["ttft_ms"] / med["server"]["ttft_ms"],
        "best": best,
        "best_decode_ratio": best["server"]["decode_tok_s"] / best["inprocess"]["decode_tok_s"],
        "best_ttft_ratio": best["inprocess"]["ttft_ms"] / best["server"]["ttft_ms"],
        "middleware": mw,
        "concurrent": {name: {str(n): {m: statistics.median(x[m] for x in v if x["clients"] == n)
                                       for m in ("aggregate_tok_s", "max_latency_s")} for n in clients}
                       for name, v in concurrent.items()},
        "goals": {"decode_ratio_min": 0.95, "ttft_ratio_min": 0.95, "middleware_ms_max": 2.0},
        "rows": rows,
    }
    result["goals_met"] = bool(result["decode_ratio"] >= 0.95 and result["ttft_ratio"] >= 0.95
                               and all(v["median_ms"] <= 2.0 for v in mw.values()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    i, s, lib = med["inprocess"], med["server"], med["library_server"]
    print(f"model {info.path.name}, {threads} thread(s), n_ctx {llama.n_ctx()}, {args.rounds} rounds × {args.max_tokens} tokens")
    print(f"decode    in-process {i['decode_tok_s']:7.1f} tok/s   server {s['decode_tok_s']:7.1f} tok/s   "
          f"ratio {result['decode_ratio']:.3f} (goal ≥ 0.95)")
    print(f"          library server (no steam-persona layer) {lib['decode_tok_s']:7.1f} tok/s, "
          f"TTFT {lib['ttft_ms']:.1f} ms; ours / library {result['decode_ratio_vs_library_server']:.3f}")
    print(f"TTFT      in-process {i['ttft_ms']:7.1f} ms      server {s['ttft_ms']:7.1f} ms      "
          f"ratio {result['ttft_ratio']:.3f} (goal ≥ 0.95)")
    print(f"best round: decode ratio {result['best_decode_ratio']:.3f}, TTFT ratio {result['best_ttft_ratio']:.3f} "
          f"(in-process {best['inprocess']['ttft_ms']:.1f} ms, server {best['server']['ttft_ms']:.1f} ms, "
          f"library server {best['library_server']['ttft_ms']:.1f} ms)")
    for n in clients:
        ours, lib = result["concurrent"]["server"][str(n)], result["concurrent"]["library_server"][str(n)]
        print(f"{n} client(s): aggregate ours {ours['aggregate_tok_s']:.1f} tok/s, library server "
              f"{lib['aggregate_tok_s']:.1f} tok/s (ratio {ours['aggregate_tok_s'] / lib['aggregate_tok_s']:.3f}); "
              f"slowest request {ours['max_latency_s']:.2f} s vs {lib['max_latency_s']:.2f} s")
    for name, v in mw.items():
        print(f"middleware ({name}, {v['prompt_tokens']} prompt tokens): median {v['median_ms']:.3f} ms, "
              f"p95 {v['p95_ms']:.3f} ms (goal ≤ 2 ms)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
