"""Compile client GBNF grammars in a guarded child process before llama.cpp sees them.

llama-cpp-python 0.3.36 passes a request's ``grammar`` straight to
``llama_sampler_init_grammar``; on a parse error that returns NULL, the library adds the NULL to
its sampler chain and the server segfaults at the first token (``root ::= (`` is enough). We ask
llama.cpp's own parser first, in a long-lived child process (``python -m steam_persona.serve.grammar GGUF``,
vocabulary only), so that a grammar that crashes or hangs the parser itself takes down the child,
not the server. Verdicts are cached per grammar text; the child is restarted when it dies.

Protocol (one JSON line each way): ``{"grammar": str}`` → ``{"ok": bool}``.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from collections import OrderedDict

#: Seconds one compile may take before the child is killed and the grammar refused.
COMPILE_TIMEOUT_S = 10.0
_CACHE_SIZE = 64


class GrammarChecker:
    """Verdicts on GBNF texts from a child process that loads ``model_path``'s vocabulary.

    Thread-safe; one compile at a time.
    """

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._verdicts: OrderedDict[str, str | None] = OrderedDict()

    def error(self, grammar: str) -> str | None:
        """``None`` when llama.cpp compiles ``grammar`` (root rule ``root``), else why not (one sentence).

        Blocking (first call starts the child: about a second).
        """
        with self._lock:
            if grammar in self._verdicts:
                return self._verdicts[grammar]
            verdict = self._ask(grammar)
            self._verdicts[grammar] = verdict
            while len(self._verdicts) > _CACHE_SIZE:
                self._verdicts.popitem(last=False)
            return verdict

    def _ask(self, grammar: str) -> str | None:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "steam_persona.serve.grammar", self.model_path],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, cwd=os.getcwd())
        proc = self._proc
        try:
            proc.stdin.write(json.dumps({"grammar": grammar}).encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], COMPILE_TIMEOUT_S)
            line = proc.stdout.readline() if ready else b""
        except OSError:
            line = b""
        if not line:
            self.close()
            return "llama.cpp's grammar parser failed on it (crashed or took too long)"
        return None if json.loads(line)["ok"] else "llama.cpp's GBNF parser rejects it"

    def close(self) -> None:
        """Stop the child (it is restarted on the next call)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


def _child(model_path: str) -> None:
    import llama_cpp

    # the parser reports errors on stderr with the grammar text: keep them out of the server's log
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    llama = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    for line in sys.stdin.buffer:
        text = json.loads(line)["grammar"].encode("utf-8")
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text, b"root")
        if sampler:
            llama_cpp.llama_sampler_free(sampler)
        sys.stdout.write(json.dumps({"ok": bool(sampler)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _child(sys.argv[1])
