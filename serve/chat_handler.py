"""The chat handler installed on the served ``llama_cpp.Llama``: the GGUF's own chat template,
exact prompt token counts before generation, and ``usage`` at the end of streams.

The middleware counts a request's prompt tokens before generation (to answer an overflow with a
400 rather than a broken stream); the tokens are kept in a small cache that the generation step's
own ``Llama.tokenize`` call hits, so the check costs no second tokenisation (a 3k-token prompt
takes 3–15 ms to tokenise on a busy 2-core machine).

llama-cpp-python 0.3.36 ignores ``stream_options.include_usage``. OpenAI's behaviour (API
reference, "stream_options"): when it is true, one extra chunk comes before ``data: [DONE]`` with
``"choices": []`` and ``"usage": {prompt_tokens, completion_tokens, total_tokens}``. Dify counts
tokens from it. We count exactly as the library's non-streamed ``usage`` does: the prompt tokens
given to ``Llama.generate`` and every sampled token except an end-of-generation one.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict
from typing import Any, Iterator

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from serve.errors import RequestError
from serve.modelinfo import special_token_texts

#: Set per request by the middleware: does this stream want a final ``usage`` chunk?
INCLUDE_USAGE: contextvars.ContextVar[bool] = contextvars.ContextVar("include_usage", default=False)
#: Prompts whose tokens are kept between the check and generation (requests queue for the model).
TOKEN_CACHE_SIZE = 16


class ChatHandler:
    """Chat handler (``Llama.chat_handler`` protocol) for one loaded model.

    Args:
        llama: the model the server loaded.
        template: the GGUF's ``tokenizer.chat_template``.

    Attributes:
        last_usage: ``{"prompt_tokens", "completion_tokens"}`` of the latest generation (requests
            are serialised by the server's lock, so one slot is enough).
    """

    def __init__(self, llama: llama_cpp.Llama, template: str) -> None:
        bos, eos = special_token_texts(llama)
        self.llama = llama
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                             stop_token_ids=[llama.token_eos()])
        self._handler = self.formatter.to_chat_handler()
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.last_usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self._tokens: OrderedDict[tuple[bytes, bool], list[int]] = OrderedDict()
        self._original_generate, self._original_tokenize = llama.generate, llama.tokenize
        # Shadow two bound methods on this one instance: count tokens, reuse checked prompts.
        llama.generate = self._counting_generate  # type: ignore[method-assign]
        llama.tokenize = self._cached_tokenize  # type: ignore[method-assign]

    def _cached_tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        if special:
            cached = self._tokens.get((text, add_bos))
            if cached is not None:
                return list(cached)
        return self._original_tokenize(text, add_bos, special)

    def _counting_generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        usage = self.last_usage = {"prompt_tokens": len(tokens), "completion_tokens": 0}
        for token in self._original_generate(tokens, *args, **kwargs):
            if not llama_cpp.llama_vocab_is_eog(self._vocab, token):
                usage["completion_tokens"] += 1
            yield token

    def prompt_tokens(self, messages: list[dict[str, Any]], tools: Any = None, tool_choice: Any = None) -> int:
        """Number of tokens the prompt for ``messages`` takes (exactly what generation will see).

        Raises:
            RequestError: 400 ``invalid_messages`` when the chat template rejects the messages.
        """
        try:
            result = self.formatter(messages=messages, tools=tools, tool_choice=tool_choice)
        except Exception as e:  # jinja2 errors and the template's raise_exception (ValueError)
            raise RequestError(f"Invalid messages for the chat template: {e}", param="messages",
                               code="invalid_messages") from None
        key = (result.prompt.encode("utf-8"), not result.added_special)
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = self._tokens[key] = self._original_tokenize(key[0], key[1], True)
            while len(self._tokens) > TOKEN_CACHE_SIZE:
                self._tokens.popitem(last=False)
        return len(tokens)

    def __call__(self, **kwargs: Any) -> Any:
        result = self._handler(**kwargs)
        if kwargs.get("stream") and INCLUDE_USAGE.get():
            return self._with_usage(result)
        return result

    def _with_usage(self, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        last: dict[str, Any] = {}
        for chunk in chunks:
            last = chunk
            yield chunk
        u = self.last_usage
        yield {"id": last.get("id", ""), "object": "chat.completion.chunk", "created": last.get("created", 0),
               "model": last.get("model", ""), "choices": [],
               "usage": {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
                         "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}}


def install(llama: llama_cpp.Llama, template: str) -> ChatHandler:
    """Make ``llama`` chat through :class:`ChatHandler` with ``template``; return the handler."""
    handler = ChatHandler(llama, template)
    llama.chat_handler = handler
    return handler

