"""What does constraining by :class:`steam_persona.serve.grammar_guard.GrammarGuard` cost against
llama.cpp's own grammar sampler (which can abort the process)? Goal: ≥ 0.9× its decode speed.

One process, one ``Llama`` (the embedded SmolLM2 GGUF unless ``--model``), the same greedy
128-token completion under the same grammar, rounds alternating the two ways (so load on a shared
machine hits both alike); medians reported. Both produce the same tokens (checked).

Usage: ``python bench/grammar_guard.py [--model GGUF] [--rounds 5] [--n_threads 1]``.
Prints the figures and writes bench/results/grammar_guard.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRAMMAR = 'root ::= [a-z ,.]+'
PROMPT = "<|im_start|>user\nWrite about your favourite game.<|im_end|>\n<|im_start|>assistant\n"


def _run(llama, way: str, max_tokens: int) -> tuple[float, str]:
    """(tokens/s, text) of one greedy completion constrained the given way."""
    import llama_cpp

    from steam_persona.serve.grammar_guard import GrammarGuard

    kwargs = {"grammar": llama_cpp.LlamaGrammar.from_string(GRAMMAR, verbose=False)} if way == "llama.cpp" else {
        "logits_processor": llama_cpp.LogitsProcessorList([GrammarGuard(llama, GRAMMAR)])}
    llama.reset()
    start = time.perf_counter()
    out = llama.create_completion(PROMPT, max_tokens=max_tokens, temperature=0, repeat_penalty=1.0, **kwargs)
    return out["usage"]["completion_tokens"] / (time.perf_counter() - start), out["choices"][0]["text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the embedded SmolLM2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n_threads", type=int, default=1)
    parser.add_argument("--max_tokens", type=int, default=128)
    args = parser.parse_args()
    import llama_cpp

    from steam_persona.common.hub import embedded_gguf

    model = args.model or str(embedded_gguf())
    llama = llama_cpp.Llama(model, n_ctx=1024, n_threads=args.n_threads, verbose=False)
    speeds: dict[str, list[float]] = {"llama.cpp": [], "guard": []}
    texts = {}
    for r in range(args.rounds):
        for way in ("llama.cpp", "guard") if r % 2 == 0 else ("guard", "llama.cpp"):
            speed, texts[way] = _run(llama, way, args.max_tokens)
            speeds[way].append(speed)
    result = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "model": Path(model).name, "n_threads": args.n_threads, "max_tokens": args.max_tokens,
              "grammar": GRAMMAR, "rounds": args.rounds, "same_text": texts["guard"] == texts["llama.cpp"],
              "tok_s": {way: round(statistics.median(v), 1) for way, v in speeds.items()}}
    result["ratio"] = round(result["tok_s"]["guard"] / result["tok_s"]["llama.cpp"], 3)
    print(json.dumps(result, indent=1))
    print(f"guard / llama.cpp grammar sampler: {result['ratio']:.2f}× (goal ≥ 0.9×), same text: {result['same_text']}")
    out = REPO / "bench" / "results" / "grammar_guard.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
