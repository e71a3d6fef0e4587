"""Compile client GBNF grammars, and turn JSON schemas into grammars, in a guarded child process
before llama.cpp sees them.

llama-cpp-python 0.3.36 passes a request's ``grammar`` straight to
``llama_sampler_init_grammar``; on a parse error that returns NULL, the library adds the NULL to
its sampler chain and the server segfaults at the first token (``root ::= (`` is enough). We ask
llama.cpp's own parser first, in a long-lived child process (``python -m steam_persona.serve.grammar GGUF``,
vocabulary only), so that a grammar that crashes or hangs the parser itself takes down the child,
not the server. Verdicts are cached per grammar text; the child is restarted when it dies.

JSON schemas (``response_format``, a forced tool's ``parameters``) become grammars through the
library's ``json_schema_to_gbnf``, which spells every repetition out: ``"maxLength": 10**9`` asks
for a grammar of gigabytes (the server froze, then ran out of memory). The child converts them
under an address-space limit (:data:`CHILD_HEADROOM_BYTES`) and refuses grammars over
:data:`MAX_GRAMMAR_CHARS`.

Protocol (one JSON line each way): ``{"grammar": str}`` → ``{"ok": bool}``;
``{"schema": str}`` (JSON text) → ``{"grammar": str}`` or ``{"error": str, "too_large": bool}``.
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import threading
from collections import OrderedDict

#: Seconds one compile may take before the child is killed and the grammar refused.
COMPILE_TIMEOUT_S = 10.0
_CACHE_SIZE = 64
#: Largest grammar (characters) a JSON schema may turn into; ample for schemas of hundreds of fields.
MAX_GRAMMAR_CHARS = 262_144
#: Memory the child may allocate beyond what it holds once the vocabulary is loaded.
CHILD_HEADROOM_BYTES = 1 << 30


class SchemaError(Exception):
    """A JSON schema that cannot become a grammar.

    Attributes:
        too_large: the grammar would exceed :data:`MAX_GRAMMAR_CHARS` (or the child's memory or
            time); otherwise the converter does not support the schema or llama.cpp rejects its grammar.
    """

    def __init__(self, message: str, too_large: bool) -> None:
        super().__init__(message)
        self.too_large = too_large


class GrammarChecker:
    """Verdicts on GBNF texts from a child process that loads ``model_path``'s vocabulary.

    Thread-safe; one compile at a time.
    """

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        #: ("grammar", text) → why not (None: compiles); ("schema", JSON text) → grammar or SchemaError
        self._verdicts: OrderedDict[tuple[str, str], object] = OrderedDict()

    def error(self, grammar: str) -> str | None:
        """``None`` when llama.cpp compiles ``grammar`` (root rule ``root``), else why not (one sentence).

        Blocking (first call starts the child: about a second).
        """
        with self._lock:
            if ("grammar", grammar) in self._verdicts:
                return self._verdicts["grammar", grammar]
            verdict = self._ask(grammar)
            self._remember(("grammar", grammar), verdict)
            return verdict

    def from_schema(self, schema: object) -> str:
        """The GBNF grammar for JSON ``schema`` (the library's conversion), compiled by llama.cpp.

        Blocking; results are cached per schema text. Keys keep their order: the grammar writes an
        object's properties in the schema's order (as OpenAI's structured outputs do).

        Raises:
            SchemaError: the schema cannot be converted, its grammar is too large or llama.cpp rejects it.
        """
        key = ("schema", json.dumps(schema))
        with self._lock:
            if key not in self._verdicts:
                self._remember(key, self._convert(key[1]))
            result = self._verdicts[key]
        if isinstance(result, SchemaError):
            raise result
        return result

    def _convert(self, schema_text: str) -> str | SchemaError:
        reply = self._send({"schema": schema_text})
        if reply is None:
            return SchemaError("turning it into a grammar crashed or took too long", too_large=True)
        if "error" in reply:
            return SchemaError(reply["error"], too_large=reply["too_large"])
        self._remember(("grammar", reply["grammar"]), None)  # the child compiled it
        return reply["grammar"]

    def _remember(self, key: tuple[str, str], value: object) -> None:
        self._verdicts[key] = value
        while len(self._verdicts) > _CACHE_SIZE:
            self._verdicts.popitem(last=False)

    def _ask(self, grammar: str) -> str | None:
        reply = self._send({"grammar": grammar})
        if reply is None:
            return "llama.cpp's grammar parser failed on it (crashed or took too long)"
        return None if reply["ok"] else "llama.cpp's GBNF parser rejects it"

    def _send(self, request: dict[str, str]) -> dict | None:
        """One request to the child; ``None`` (and the child stopped) when it died or timed out."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "steam_persona.serve.grammar", self.model_path],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, cwd=os.getcwd())
        proc = self._proc
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], COMPILE_TIMEOUT_S)
            line = proc.stdout.readline() if ready else b""
        except OSError:
            line = b""
        if not line:
            self.close()
            return None
        return json.loads(line)

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
    _limit_memory()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if "schema" in request:
            reply = _schema_grammar(vocab, request["schema"])
        else:
            reply = {"ok": _compiles(vocab, request["grammar"])}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _compiles(vocab: object, grammar: str) -> bool:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
    return bool(sampler)


def _schema_grammar(vocab: object, schema_text: str) -> dict[str, object]:
    from llama_cpp import llama_grammar

    try:
        grammar = llama_grammar.json_schema_to_gbnf(schema_text)
    except (MemoryError, RecursionError):
        return {"error": "its grammar would be too large", "too_large": True}
    except Exception as e:  # noqa: BLE001 -- the converter asserts, or fails on types it does not expect
        why = str(e).split(":")[0][:120]  # the part after a colon quotes the schema
        return {"error": f"the JSON-schema converter does not support it ({type(e).__name__}: {why})",
                "too_large": False}
    if len(grammar) > MAX_GRAMMAR_CHARS:
        return {"error": f"its grammar would be {len(grammar)} characters (at most {MAX_GRAMMAR_CHARS}); "
                         "lower its minLength / maxLength / minItems / maxItems", "too_large": True}
    if not _compiles(vocab, grammar):
        return {"error": "llama.cpp's GBNF parser rejects the grammar it gives", "too_large": False}
    return {"grammar": grammar}


def _limit_memory() -> None:
    """Cap the child's address space at what it holds now plus :data:`CHILD_HEADROOM_BYTES`, so a
    schema that asks for a huge grammar raises ``MemoryError`` here instead of exhausting the machine."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):  # not Linux: the timeout still bounds the child
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_kb * 1024 + CHILD_HEADROOM_BYTES
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


if __name__ == "__main__":
    _child(sys.argv[1])
