"""Several users at once: `steam-train serve` (both engines) against llama.cpp's own llama-server.

Goals (issue: "serves several users at once"), all measured in this one run, same GGUF, threads,
``n_ctx`` per request, temperature 0, ``--max_tokens`` tokens, a persona review prompt:

* embedded engine (llama-cpp-python, the default) ≥ 0.95× llama-server ``--parallel 1`` aggregate
  tokens/s at 4 and 8 clients, and its TTFT (1 client, streamed) ≤ 1.2× llama-server's;
* ``--engine llama-server --parallel N`` ≥ 0.9× plain llama-server ``--parallel N`` aggregate
  tokens/s, and its p95 request latency ≤ 1.2× llama-server's.

Contenders run one after another inside each round (order rotated per round, so load changes on a
shared machine hit all alike); figures are medians over ``--rounds``. Aggregate tokens/s = completion
tokens of all requests of a batch / the batch's wall time; p95 = 95th percentile of the request
latencies of all batches of that client count; CPU ms/token = user + system CPU time of the
server's processes during a batch / its completion tokens (a figure that a busy shared machine
disturbs less than wall time; ratios ``embedded_vs_p1_cpu_per_token_N``); TTFT = first content
chunk − request start (one streamed request, after the batches). Plain llama-server gets the persona as a system message;
ours applies it server-side (``--system``), so both prompts are the same tokens.

Same work, counted alike: every request carries the same sampling values (``--repeat_penalty``,
default 1.0: llama-cpp-python's request default is 1.1, llama-server's 1.0, and left to their
defaults the two sample different tokens, with a penalty pass over the whole vocabulary per token on
one side only); greedy then gives every contender the same text (``same_text`` in the results says
how many replies matched ours; not all do, ours included, since greedy text also depends on how much
of the prompt the KV cache reused, and slots that decode together round differently). Completion tokens are counted the OpenAI way, as ours reports them:
plain llama-server's ``usage.completion_tokens`` also counts the end-of-generation token it sampled
(one more per reply that ends with ``finish_reason`` "stop"; no stop strings are sent), so one is
taken off those. Each contender gets one ``httpx.Client`` for the whole run (kept-alive connections,
as SDK clients keep them), so no client setup runs inside a timed batch.

Usage: ``python bench/serve_engines.py [--model GGUF|export dir|smollm2] [--clients 1,4,8] [--rounds 3]
[--max_tokens 128] [--n_threads 2] [--repeat_penalty 1.0]``. Needs the llama-server binary (``make llama-server``). Prints a
table and writes bench/results/serve_engines.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from steam_persona.serve.llama_server import LlamaServer, find_binary, launch  # noqa: E402
from steam_persona.serve.modelinfo import read_model_info  # noqa: E402
from steam_persona.common.hub import resolve_model  # noqa: E402
from steam_persona.common.persona import DEFAULT_SYSTEM  # noqa: E402
from tests.serving import start_server  # noqa: E402

GAMES = ["Hades", "Stardew Valley", "Elden Ring", "Celeste", "Factorio", "Hollow Knight", "Terraria", "Portal 2"]


def prompt(i: int) -> str:
    return f"Write a Steam review of {GAMES[i % len(GAMES)]}."


@contextlib.contextmanager
def plain_llama_server(binary: Path, model: str, n_ctx: int, parallel: int, threads: int,
                       flash_attn: bool) -> Iterator[LlamaServer]:
    """llama-server alone on a free port (started as serve's engine starts it)."""
    server = launch(binary, model, n_ctx=n_ctx, parallel=parallel, n_threads=threads, n_gpu_layers=-1,
                    flash_attn=flash_attn)
    try:
        yield server
    finally:
        server.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far, all threads (Linux ``/proc``)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> list[int]:
    """``pid`` and its child processes (ours with ``--engine llama-server`` runs llama-server)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return [pid, *kids]


def body(i: int, max_tokens: int, with_system: bool, repeat_penalty: float, stream: bool = False) -> dict:
    messages = [{"role": "user", "content": prompt(i)}]
    if with_system:
        messages.insert(0, {"role": "system", "content": DEFAULT_SYSTEM})
    return {"model": "bench", "messages": messages, "temperature": 0, "max_tokens": max_tokens, "stream": stream,
            "repeat_penalty": repeat_penalty}


@dataclass
class Contender:
    """One server under test: its client, whether it needs the persona in the request (plain
    llama-server), whether its usage counts the end-of-generation token (plain llama-server), and
    its processes (for CPU time)."""

    client: httpx.Client
    with_system: bool
    counts_eog: bool
    pids: list[int]


def completion_tokens(reply: dict, counts_eog: bool) -> int:
    """Completion tokens the OpenAI way (the end-of-generation token not counted)."""
    n = reply["usage"]["completion_tokens"]
    return n - 1 if counts_eog and reply["choices"][0]["finish_reason"] == "stop" else n


def batch(c: Contender, n: int, round_no: int, max_tokens: int, repeat_penalty: float) -> dict:
    """``n`` non-streamed chats at once; aggregate tokens/s, each request's latency and text by prompt."""
    results: list[tuple[int, float]] = []
    texts: dict[int, str] = {}

    def one(i: int) -> None:
        t = time.perf_counter()
        k = round_no * n + i
        r = c.client.post("/v1/chat/completions", json=body(k, max_tokens, c.with_system, repeat_penalty))
        r.raise_for_status()
        results.append((completion_tokens(r.json(), c.counts_eog), time.perf_counter() - t))
        texts[k] = r.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    cpu, start = cpu_seconds(c.pids), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, cpu_seconds(c.pids) - cpu
    if len(results) != n:
        raise RuntimeError(f"{c.client.base_url}: {n - len(results)} of {n} requests failed")
    tokens = sum(k for k, _ in results)
    return {"aggregate_tok_s": tokens / wall, "cpu_ms_per_token": 1000 * cpu / tokens,
            "latencies_s": [s for _, s in results], "texts": texts}


def ttft_ms(c: Contender, max_tokens: int, repeat_penalty: float) -> float:
    start = time.perf_counter()
    with c.client.stream("POST", "/v1/chat/completions",
                         json=body(0, max_tokens, c.with_system, repeat_penalty, stream=True)) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"] and \
                    json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return (time.perf_counter() - start) * 1000
    raise RuntimeError(f"{c.client.base_url}: no content streamed")


def measure(contenders: dict[str, Contender], clients: list[int], rounds: int, max_tokens: int,
            repeat_penalty: float) -> dict:
    rows: dict[str, dict] = {name: {"ttft_ms": [], **{str(n): [] for n in clients}} for name in contenders}
    names = list(contenders)
    for c in contenders.values():  # warm-up: load pages, fill caches, open connections
        batch(c, max(clients), 0, 8, repeat_penalty)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            c = contenders[name]
            for n in clients:
                rows[name][str(n)].append(batch(c, n, r, max_tokens, repeat_penalty))
            rows[name]["ttft_ms"].append(ttft_ms(c, max_tokens, repeat_penalty))
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {rows[name][str(clients[-1])][-1]['aggregate_tok_s']:.1f} tok/s" for name in names), file=sys.stderr)
    return rows


def same_text(rows: dict, clients: list[int]) -> dict[str, str]:
    """Per contender: how many of its replies have the text ours (embedded) gave for that prompt;
    the texts then leave the rows."""
    ours: dict[int, str] = {}
    for n in clients:
        for b in rows["ours_embedded"][str(n)]:
            ours.update(b["texts"])
    out = {}
    for name, r in rows.items():
        pairs = [(ours.get(k), text) for n in clients for b in r[str(n)] for k, text in b.pop("texts").items()]
        out[name] = f"{sum(a == t for a, t in pairs)}/{len(pairs)}"
    return out


def summarise(rows: dict, clients: list[int]) -> dict:
    out = {}
    for name, r in rows.items():
        out[name] = {"ttft_ms": statistics.median(r["ttft_ms"])}
        for n in clients:
            lat = sorted(x for b in r[str(n)] for x in b["latencies_s"])
            out[name][str(n)] = {"aggregate_tok_s": statistics.median(b["aggregate_tok_s"] for b in r[str(n)]),
                                 "cpu_ms_per_token": statistics.median(b["cpu_ms_per_token"] for b in r[str(n)]),
                                 "p95_latency_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}
    return out


def goals(s: dict, clients: list[int], parallel: int) -> dict:
    emb, p1, ls, pn = s["ours_embedded"], s["llama_server_p1"], s["ours_llama_server"], s["llama_server_pN"]
    g = {"embedded_vs_p1_ttft": emb["ttft_ms"] / p1["ttft_ms"]}  # goal: at most 1.2x
    for n in clients:
        k = str(n)
        g[f"embedded_vs_p1_aggregate_{n}"] = emb[k]["aggregate_tok_s"] / p1[k]["aggregate_tok_s"]
        g[f"engine_vs_pN_aggregate_{n}"] = ls[k]["aggregate_tok_s"] / pn[k]["aggregate_tok_s"]
        g[f"engine_vs_pN_p95_{n}"] = ls[k]["p95_latency_s"] / pn[k]["p95_latency_s"]
        g[f"embedded_vs_p1_cpu_per_token_{n}"] = emb[k]["cpu_ms_per_token"] / p1[k]["cpu_ms_per_token"]
    busy = [n for n in clients if n > 1]
    met = (all(g[f"embedded_vs_p1_aggregate_{n}"] >= 0.95 for n in busy if n in (4, 8))
           and g["embedded_vs_p1_ttft"] <= 1.2
           and all(g[f"engine_vs_pN_aggregate_{n}"] >= 0.9 and g[f"engine_vs_pN_p95_{n}"] <= 1.2 for n in busy))
    return {"ratios": g, "met": met, "parallel": parallel,
            "targets": {"embedded_vs_p1_aggregate_min": 0.95, "embedded_ttft_max_x": 1.2,
                        "engine_vs_pN_aggregate_min": 0.9, "engine_vs_pN_p95_max_x": 1.2}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="GGUF, export dir or `smollm2` (the embedded default)")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--parallel", type=int, default=0, help="slots for the llama-server contenders; 0 = most clients")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max_tokens", type=int, default=128)
    ap.add_argument("--n_threads", type=int, default=2)
    ap.add_argument("--n_ctx", type=int, default=2048, help="context per request (llama-server: × slots)")
    ap.add_argument("--flash_attn", action="store_true", help="flash attention on in every contender")
    ap.add_argument("--repeat_penalty", type=float, default=1.0, help="sent in every request to every contender")
    ap.add_argument("--out", default=str(REPO / "bench/results/serve_engines.json"))
    args = ap.parse_args()

    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    parallel = args.parallel or max(clients)
    src = resolve_model(args.model)
    model = str(Path(src.path) / src.gguf_file) if src.gguf_file else args.model
    info = read_model_info(model)
    binary = find_binary(None)
    load_start = os.getloadavg()[0]
    common = ("--n_threads", args.n_threads, "--n_ctx", args.n_ctx, "--system", DEFAULT_SYSTEM,
              "--max_tokens_cap", max(args.max_tokens, 1024), "--log_level", "warning",
              "--flash_attn", args.flash_attn)
    with start_server(model, extra_args=common) as embedded, \
            start_server(model, extra_args=(*common, "--engine", "llama-server", "--parallel", parallel)) as engine, \
            plain_llama_server(binary, str(info.path), args.n_ctx, 1, args.n_threads, args.flash_attn) as p1, \
            plain_llama_server(binary, str(info.path), args.n_ctx, parallel, args.n_threads, args.flash_attn) as pn, \
            contextlib.ExitStack() as stack:
        def client(url: str) -> httpx.Client:
            return stack.enter_context(httpx.Client(base_url=url, timeout=900,
                                                    limits=httpx.Limits(max_connections=max(clients) + 1)))
        contenders = {"ours_embedded": Contender(client(embedded.base_url), False, False, [embedded.proc.pid]),
                      "ours_llama_server": Contender(client(engine.base_url), False, False, with_children(engine.proc.pid)),
                      "llama_server_p1": Contender(client(p1.base_url), True, True, [p1.proc.pid]),
                      "llama_server_pN": Contender(client(pn.base_url), True, True, [pn.proc.pid])}
        rows = measure(contenders, clients, args.rounds, args.max_tokens, args.repeat_penalty)
    texts = same_text(rows, clients)
    s = summarise(rows, clients)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": info.path.name,
              "n_threads": args.n_threads, "flash_attn": args.flash_attn, "repeat_penalty": args.repeat_penalty,
              "n_ctx": args.n_ctx, "max_tokens": args.max_tokens, "rounds": args.rounds, "clients": clients,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m_start": load_start,
                          "load_avg_1m": os.getloadavg()[0]},
              "llama_server": str(binary), "summary": s, "same_text": texts, "goals": goals(s, clients, parallel),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"model {info.path.name}, {args.n_threads} threads, n_ctx {args.n_ctx}/request, {args.rounds} rounds × "
          f"{args.max_tokens} tokens, repeat_penalty {args.repeat_penalty}, load {load_start:.2f} → "
          f"{result['machine']['load_avg_1m']:.2f}; same text as ours: {texts}")
    names = {"ours_embedded": "ours (embedded)", "llama_server_p1": "llama-server --parallel 1",
             "ours_llama_server": f"ours --engine llama-server --parallel {parallel}",
             "llama_server_pN": f"llama-server --parallel {parallel}"}
    for key, label in names.items():
        cells = "  ".join(f"{n}: {s[key][str(n)]['aggregate_tok_s']:6.1f} tok/s p95 {s[key][str(n)]['p95_latency_s']:5.2f} s "
                          f"CPU {s[key][str(n)]['cpu_ms_per_token']:5.2f} ms/tok" for n in clients)
        print(f"{label:42s} TTFT {s[key]['ttft_ms']:6.1f} ms  {cells}")
    for name, value in result["goals"]["ratios"].items():
        print(f"  {name}: {value:.3f}")
    print(f"goals met: {result['goals']['met']}; wrote {args.out}")


if __name__ == "__main__":
    main()
