"""Grammar-constrained sampling that cannot abort the process.

llama.cpp's grammar sampler (which llama-cpp-python 0.3.36 puts in its sampler chain) aborts the
whole process when the grammar allows no token of the vocabulary — ``root ::= "\\u0000"`` (no
token spells NUL), or a schema ``pattern`` with such a character — because the chain then samples
a token the grammar refuses and its accept step calls ``GGML_ABORT`` (llama-grammar.cpp,
``llama_grammar_accept_impl``) or throws through the C API. No parse-time check can see this
coming: a grammar may dead-end only after some tokens.

:class:`GrammarGuard` replaces the chain's grammar sampler with a logits processor that runs the
same llama.cpp grammar (``llama_sampler_apply`` / ``llama_sampler_accept`` on its own sampler)
and masks the logits with it (it runs last among the processors: the mask is what is sampled
from); when nothing is left to sample it leaves only end-of-generation, so generation ends, and
if the grammar itself allowed nothing :meth:`GrammarGuard.check` then raises a 400.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np

from steam_persona.serve.errors import RequestError


class GrammarGuard:
    """A ``LogitsProcessor`` (``(input_ids, scores) -> scores``) that constrains sampling to a GBNF grammar.

    Args:
        llama: the model (its vocabulary and end-of-generation token).
        grammar: GBNF text with a ``root`` rule, already compiled once by
            :class:`steam_persona.serve.grammar.GrammarChecker`.

    Raises:
        RequestError: 400 ``invalid_grammar`` when llama.cpp cannot compile ``grammar``.
    """

    def __init__(self, llama: llama_cpp.Llama, grammar: str) -> None:
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not self._sampler:
            raise RequestError("'grammar' cannot be used: llama.cpp's GBNF parser rejects it", param="grammar",
                               code="invalid_grammar")
        n_vocab = llama.n_vocab()
        self._eog = llama.token_eos()
        self._data = (llama_cpp.llama_token_data * n_vocab)()
        # the same memory as a numpy record array: fields id (int32), logit, p (float32)
        self._view = np.ctypeslib.as_array(self._data)
        self._array = llama_cpp.llama_token_data_array(data=self._data, size=n_vocab, selected=-1, sorted=False)
        self._seen: int | None = None
        self.dead_end = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """``scores`` (float32, shape ``(n_vocab,)``) with every token the grammar refuses at -inf."""
        if self._seen is None:
            self._seen = len(input_ids)  # the prompt: the grammar starts after it
        for token in input_ids[self._seen:]:
            llama_cpp.llama_sampler_accept(self._sampler, int(token))
        self._seen = len(input_ids)
        view = self._view
        view["id"] = np.arange(len(view), dtype=np.int32)
        view["logit"] = 0.0
        self._array.size, self._array.selected, self._array.sorted = len(view), -1, False
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._array))
        allowed = np.isfinite(view["logit"])
        self.dead_end = not allowed.any()
        out = np.where(allowed, scores, np.float32(-np.inf)).astype(scores.dtype, copy=False)
        if not np.isfinite(out).any():
            # nothing left to sample (a dead end, or min_tokens refusing the end a complete grammar
            # requires): end here rather than sample a token the grammar refuses
            out[self._eog] = 0.0
        return out

    def check(self) -> None:
        """Raise when generation ended because the grammar allowed no token.

        Raises:
            RequestError: 400 ``invalid_grammar``.
        """
        if self.dead_end:
            raise RequestError("The grammar allows no token of this model's vocabulary at some point (e.g. a "
                               "character no token spells); change the grammar or schema", param="grammar",
                               code="invalid_grammar")

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()


def guard_grammar(llama: llama_cpp.Llama, kwargs: dict[str, Any]) -> GrammarGuard | None:
    """Move ``kwargs["grammar"]`` (a ``LlamaGrammar`` for ``Llama.generate``) into a
    :class:`GrammarGuard` appended to ``kwargs["logits_processor"]``; return the guard (``None``
    without a grammar)."""
    grammar = kwargs.pop("grammar", None)
    if grammar is None:
        return None
    guard = GrammarGuard(llama, grammar._grammar)
    kwargs["logits_processor"] = llama_cpp.LogitsProcessorList([*(kwargs.get("logits_processor") or []), guard])
    return guard
