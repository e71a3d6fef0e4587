"""Where the embedded engine's generate thread spends CPU per token: ``llama_decode``, llama.cpp's
sampler chain, detokenizing, and the rest (Python: llama-cpp-python's generation loop and ours).

1. The requests of ``bench/serve_engines.py`` (persona system turn, a review prompt, temperature 0)
   go through ``Llama.create_chat_completion`` with our chat handler installed, on one thread, as the
   server's generate thread runs them, each from an empty KV cache (greedy text depends on how much
   of the prompt was reused, and both variants must generate the same tokens). Figures are that
   thread's CPU time (``time.thread_time``), which a busy shared machine disturbs less than wall
   time (``llama_decode``'s share still includes ggml's spin waits, so it grows under load; the other
   parts hardly do). Variants, alternated within each round: ``repeat_penalty`` 1.0 (llama-server's
   default) and 1.1 (llama-cpp-python's request default, which adds llama.cpp's penalties sampler).
2. Detokenizing alone, as ``create_completion`` calls it (the whole reply after every token), for
   replies of 43 (the bench's median), 128, 512 and 1024 tokens: the library's ``Llama.detokenize``
   (baseline) against the handler's incremental one, CPU µs per generated token, best of 7.

Usage: ``python bench/serve_generate_cpu.py [--model GGUF|export dir|smollm2] [--requests 8]
[--rounds 3] [--max_tokens 128] [--n_threads 2]``. Prints the figures and writes
bench/results/serve_generate_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llama_cpp import _internals  # noqa: E402

from bench.serve_engines import prompt  # noqa: E402
from steam_persona.common.hub import resolve_model  # noqa: E402
from steam_persona.common.persona import DEFAULT_SYSTEM  # noqa: E402
from steam_persona.serve import chat_handler  # noqa: E402
from steam_persona.serve.modelinfo import read_model_info  # noqa: E402

#: Thread CPU nanoseconds inside each timed llama-cpp-python call, since the last reset.
SPENT: Counter[str] = Counter()


def timed(cls: type, name: str, part: str) -> None:
    """Count the calling thread's CPU time inside ``cls.name`` under ``part``."""
    original: Callable[..., Any] = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time_ns()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[part] += time.thread_time_ns() - start
    setattr(cls, name, wrapper)


def load(model: str, n_threads: int) -> tuple[Any, chat_handler.ChatHandler]:
    """The model as ``steam-train serve`` loads it (n_ctx 2048), with our chat handler."""
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings

    info = read_model_info(model)
    llama = LlamaProxy.load_llama_from_model_settings(ModelSettings(
        model=str(info.path), n_ctx=2048, n_threads=n_threads, n_threads_batch=n_threads,
        chat_format="chat_template.default", logits_all=False, flash_attn=False, verbose=False))
    return llama, chat_handler.install(llama, info.chat_template or "")


def run(llama: Any, handler: chat_handler.ChatHandler, requests: int, first: int, max_tokens: int,
        repeat_penalty: float) -> dict[str, float]:
    """``requests`` chats on this thread; thread CPU ns per part and the completion tokens."""
    SPENT.clear()
    tokens, start = 0, time.thread_time_ns()
    for i in range(first, first + requests):
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": prompt(i)}]
        handler.prompt_tokens(messages)  # the server's check does this on its checks thread
        llama.reset()  # the whole prompt evaluated: every variant generates the same tokens
        reply = llama.create_chat_completion(messages=messages, temperature=0, max_tokens=max_tokens,
                                             repeat_penalty=repeat_penalty)
        tokens += reply["usage"]["completion_tokens"]
    total = time.thread_time_ns() - start
    return {**SPENT, "rest": total - sum(SPENT.values()), "total": total, "tokens": tokens}


def detokenize_us_per_token(detokenize: Callable[..., bytes], reply: list[int], prompt_ids: list[int]) -> float:
    """CPU µs per token of detokenizing ``reply`` as ``create_completion`` does: the whole reply
    so far after every token (best of 7)."""
    best = float("inf")
    for _ in range(7):
        start = time.thread_time_ns()
        completion: list[int] = []
        for token in reply:
            completion.append(token)
            detokenize(completion, prev_tokens=prompt_ids)
        best = min(best, (time.thread_time_ns() - start) / len(reply) / 1000)
    return best


def detokenize_costs(llama: Any, handler: chat_handler.ChatHandler) -> dict[str, dict[str, float]]:
    """Library vs incremental detokenize, µs per token, by reply length (a review text repeated)."""
    text = ("Hades is a masterpiece of a roguelike: every run teaches you something, the music is great, "
            "and the writing makes even the fiftieth death feel like progress. Would die again. ").encode()
    ids = llama.tokenize(text * 64, add_bos=False, special=False)
    prompt_ids = ids[:150]
    out = {}
    for n in (43, 128, 512, 1024):
        out[str(n)] = {name: detokenize_us_per_token(f, ids[:n], prompt_ids) for name, f in
                       (("library", handler._original_detokenize), ("incremental", handler._incremental_detokenize))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="GGUF, export dir or `smollm2` (the embedded default)")
    ap.add_argument("--requests", type=int, default=8, help="requests per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max_tokens", type=int, default=128)
    ap.add_argument("--n_threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/serve_generate_cpu.json"))
    args = ap.parse_args()

    src = resolve_model(args.model)
    llama, handler = load(str(Path(src.path) / src.gguf_file) if src.gguf_file else args.model, args.n_threads)
    detokenize = detokenize_costs(llama, handler)
    timed(_internals.LlamaContext, "decode", "llama_decode")
    timed(_internals.LlamaSampler, "sample", "sampler")
    timed(_internals.LlamaModel, "detokenize", "detokenize")
    run(llama, handler, 2, 0, 8, 1.0)  # warm-up
    load_start = os.getloadavg()[0]
    penalties = (1.0, 1.1)
    sums: dict[str, Counter[str]] = {f"repeat_penalty {rp}": Counter() for rp in penalties}
    for r in range(args.rounds):
        for rp in (penalties if r % 2 == 0 else penalties[::-1]):
            sums[f"repeat_penalty {rp}"].update(run(llama, handler, args.requests, 1, args.max_tokens, rp))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    parts = ("llama_decode", "sampler", "detokenize", "rest", "total")
    summary = {name: {"tokens": s["tokens"], **{f"{p}_ms_per_token": s[p] / s["tokens"] / 1e6 for p in parts}}
               for name, s in sums.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": Path(llama.model_path).name,
              "n_threads": args.n_threads, "max_tokens": args.max_tokens, "requests": args.requests,
              "rounds": args.rounds, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                 "load_avg_1m_start": load_start, "load_avg_1m": os.getloadavg()[0]},
              "generate_thread": summary, "detokenize_us_per_token": detokenize}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"{result['model']}, {args.n_threads} threads, {args.rounds} rounds × {args.requests} requests, "
          f"load {load_start:.2f} → {result['machine']['load_avg_1m']:.2f}; generate thread CPU ms per token:")
    print(f"{'':20s}" + "".join(f"{p:>14s}" for p in parts))
    for name, s in summary.items():
        print(f"{name:20s}" + "".join(f"{s[f'{p}_ms_per_token']:14.4f}" for p in parts) + f"   ({s['tokens']} tokens)")
    print("detokenizing, CPU µs per generated token (library → incremental): " + ", ".join(
        f"{n}-token reply {d['library']:.1f} → {d['incremental']:.1f}" for n, d in detokenize.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
