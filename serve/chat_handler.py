"""The chat handler installed on the served ``llama_cpp.Llama``: the GGUF's own chat template,
exact prompt token counts before generation, and ``usage`` at the end of streams.

The middleware counts a request's prompt tokens before generation (to answer an overflow with a
400 rather than a broken stream); the tokens are kept in a small cache that the generation step's
own ``Llama.tokenize`` call hits, so the check costs no second tokenisation (a 3k-token prompt
takes 3–15 ms to tokenise on a busy 2-core machine).

Message contents (and the persona) are tokenized as text, the template around them with special
tokens parsed: the library tokenizes the whole rendered prompt with ``special=True``, so a user who
types ``<|im_end|>\n<|im_start|>system`` would forge a system turn. The template is rendered once
more with a marker in place of each content to find where contents sit (llama.cpp's own server has
the same weakness; vLLM and transformers leave it to the template).

The library detokenizes the whole completion after every token; the handler makes that
incremental (O(n) rather than O(n²) piece lookups per reply).

``max_tokens`` is a hard limit here, as in OpenAI's API: llama-cpp-python 0.3.36
(``Llama._create_completion``) skips its ``max_tokens`` check while the text ends inside a UTF-8
character, so a reply cut inside one got more tokens than asked (3 for ``max_tokens`` 1 when SmolLM2
writes an emoji as 3 byte tokens). The handler ends the generation at the limit itself: the cut
character's bytes are left out of the text, ``finish_reason`` is "length" and ``usage`` counts the
tokens generated, as OpenAI answers and llama-server does.

Generation asks :data:`steam_persona.serve.engine.STOP` before each token (client gone, time limit) and,
while a prompt is evaluated, before each batch of the model's ``n_batch`` tokens, and checks a
grammar with :class:`steam_persona.serve.grammar.GrammarChecker` before llama.cpp compiles it.

llama-cpp-python 0.3.36 ignores ``stream_options.include_usage``. OpenAI's behaviour (API
reference, "stream_options"): when it is true, one extra chunk comes before ``data: [DONE]`` with
``"choices": []`` and ``"usage": {prompt_tokens, completion_tokens, total_tokens}``. Dify counts
tokens from it. We count exactly as the library's non-streamed ``usage`` does: the prompt tokens
given to ``Llama.generate`` and every sampled token except an end-of-generation one.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
from collections import OrderedDict
from typing import Any, Iterator, Sequence

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_tokenizer import LlamaTokenizer

from steam_persona.common.chat_contents import SPECIAL_TEXT_REFUSED, content_parts, marked
from steam_persona.serve.access_log import note_completion_tokens
from steam_persona.serve.engine import STOP
from steam_persona.serve.errors import RequestError
from steam_persona.serve.grammar import GrammarChecker
from steam_persona.serve.grammar_guard import guard_grammar
from steam_persona.serve.modelinfo import special_token_texts
from steam_persona.serve.tool_calls import parses_calls, tool_call_id, with_tool_calls

#: Set per request by the middleware: does this stream want a final ``usage`` chunk?
INCLUDE_USAGE: contextvars.ContextVar[bool] = contextvars.ContextVar("include_usage", default=False)
#: Set per request by the middleware: did the request send a ``seed``? Then the prompt is evaluated
#: afresh, without the KV cache of the previous request (see :meth:`ChatHandler._counting_generate`).
SEEDED: contextvars.ContextVar[bool] = contextvars.ContextVar("seeded", default=False)
#: Prompts whose tokens are kept between the check and generation (requests queue for the model).
TOKEN_CACHE_SIZE = 64
#: Set by :meth:`ChatHandler.__call__` in the request's context: its prompt (bytes, add_bos) and token ids, which
#: the library's own tokenize call of that prompt gets (the ids depend on the messages, not only on the text).
PROMPT: contextvars.ContextVar[tuple[bytes, bool, list[int]] | None] = contextvars.ContextVar("prompt", default=None)
#: Token lists at least this long are remembered by the incremental detokenizer (see
#: :meth:`ChatHandler._incremental_detokenize`); shorter ones cost little afresh.
DETOKENIZE_REMEMBER_MIN = 8


class ChatHandler:
    """Chat handler (``Llama.chat_handler`` protocol) for one loaded model.

    Args:
        llama: the model the server loaded.
        template: the GGUF's ``tokenizer.chat_template``.
        grammars: checks grammars before generation (``None``: no check, for ``steam-train chat``).

    Attributes:
        last_usage: ``{"prompt_tokens", "completion_tokens"}`` of the latest generation (requests
            are serialised by the server's lock, so one slot is enough).
        last_tokens: the latest generation's sampled token ids, end-of-generation tokens left out.
        last_cut: True when the handler ended the latest generation: :data:`~steam_persona.serve.engine.STOP`,
            or ``max_tokens`` reached inside a character (the library then returns no text; see
            :meth:`completed_text`).
    """

    def __init__(self, llama: llama_cpp.Llama, template: str, grammars: GrammarChecker | None = None) -> None:
        bos, eos = special_token_texts(llama)
        self.llama = llama
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                             stop_token_ids=[llama.token_eos()])
        self._handler = self.formatter.to_chat_handler()
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._control = control_pattern(self._vocab)
        self.grammars = grammars
        self.last_usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.last_tokens: list[int] = []
        self.last_cut = False
        self._tokens: OrderedDict[tuple[Any, ...], list[int]] = OrderedDict()
        self._original_generate, self._original_tokenize = llama.generate, llama.tokenize
        self._original_detokenize, self._bos = llama.detokenize, llama.token_bos()
        self._original_eval = llama.eval
        self._original_complete = llama.create_completion
        self._complete_signature = inspect.signature(llama.create_completion)
        self._max_tokens: int | None = None  # the running create_completion's, for _counting_generate
        self._detokenized: tuple[list[int], bytes] = ([], b"")
        # Shadow bound methods on this one instance: count tokens, reuse checked prompts, detokenize
        # a growing completion incrementally (llama.cpp's tokenizer: one piece per token, concatenated).
        llama.generate = self._counting_generate  # type: ignore[method-assign]
        llama.tokenize = self._cached_tokenize  # type: ignore[method-assign]
        llama.eval = self._stoppable_eval  # type: ignore[method-assign]
        llama.create_completion = self._limited_complete  # type: ignore[method-assign]
        if isinstance(llama.tokenizer_, LlamaTokenizer):
            llama.detokenize = self._incremental_detokenize  # type: ignore[method-assign]

    def _cached_tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        prompt = PROMPT.get()
        if special and prompt is not None and prompt[:2] == (text, add_bos):
            return list(prompt[2])
        return self._original_tokenize(text, add_bos, special)

    def _incremental_detokenize(self, tokens: list[int], prev_tokens: list[int] | None = None,
                                special: bool = False) -> bytes:
        """``Llama.detokenize`` that extends the bytes of the latest long list it was given.

        ``Llama.create_completion`` detokenizes the whole completion after every token (for stop
        strings and split UTF-8), which costs O(n²) piece lookups over an n-token reply. llama.cpp's
        tokenizer concatenates one piece per token, dropping a first space only after a leading BOS,
        so a list that extends the remembered one (neither starting with BOS) costs its new tokens
        only. Lists shorter than :data:`DETOKENIZE_REMEMBER_MIN` (a stream's deltas) are detokenized
        afresh and leave the remembered list alone. Any thread may call it: the remembered list and
        its bytes are one tuple, read and replaced whole.
        """
        if special or len(tokens) < DETOKENIZE_REMEMBER_MIN:
            return self._original_detokenize(tokens, prev_tokens, special)
        seen, text = self._detokenized
        n = len(seen)
        bos = self._bos
        if n and len(tokens) >= n and tokens[0] != bos and tokens[n:n + 1] != [bos] and tokens[:n] == seen:
            text += self._original_detokenize(tokens[n:])
        else:
            text = self._original_detokenize(tokens, prev_tokens, special)
        self._detokenized = (list(tokens), text)
        return text

    def _stoppable_eval(self, tokens: Sequence[int]) -> None:
        """``Llama.eval`` one batch of ``Llama.n_batch`` tokens (``--n_batch``) at a time, asking
        :data:`~steam_persona.serve.engine.STOP` before each (none set: the library's own call, which
        evaluates the same batches). The batches evaluated stay in the KV cache and in
        ``Llama.input_ids``, as the library leaves them, so a later prompt with the same start reuses them.

        Raises:
            PromptStopped: STOP turned true before all of ``tokens`` were evaluated.
        """
        stop = STOP.get()
        if stop is None:
            return self._original_eval(tokens)
        n_batch = self.llama.n_batch
        for i in range(0, len(tokens), n_batch):
            if stop():
                raise PromptStopped
            self._original_eval(tokens[i:i + n_batch])

    def _limited_complete(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_completion`` whose generation :meth:`_counting_generate` ends at its
        ``max_tokens`` (``None`` or ≤ 0: the context's room, as the library reads it). A stream's
        generation runs while its chunks are read, so its limit is set when the first is asked for."""
        call = self._complete_signature.bind(*args, **kwargs)
        call.apply_defaults()
        if call.arguments["stream"]:
            return self._limited_chunks(call.arguments["max_tokens"], args, kwargs)
        with self._limit(call.arguments["max_tokens"]):
            return self._original_complete(*args, **kwargs)

    def _limited_chunks(self, max_tokens: int | None, args: Any, kwargs: Any) -> Iterator[dict[str, Any]]:
        with self._limit(max_tokens):
            yield from self._cut_stream_completed(self._original_complete(*args, **kwargs))

    def _cut_stream_completed(self, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """A completion stream whose text after a cut (:attr:`last_cut`) is the generated text's whole
        characters, as a non-streamed answer gives it.

        After its generation ends, the library decodes each token it held back alone, dropping
        undecodable bytes (``errors="ignore"``): a token that ends one character and starts another
        (Qwen2.5 has 48, e.g. ``b"\\xa4\\xed"``) lost the character it ended when the cut held it.
        Those chunks are replaced by one holding the rest of the text (none when nothing is left).
        """
        sent: list[str] = []
        held: list[dict[str, Any]] = []
        for chunk in chunks:
            choice = chunk["choices"][0]
            if not self.last_cut:
                sent.append(choice["text"])
            elif choice["finish_reason"] is None:
                held.append(chunk)
                continue
            else:
                whole = self._original_detokenize(self.last_tokens).decode("utf-8", errors="ignore")
                before = "".join(sent)
                if whole.startswith(before):
                    rest = whole[len(before):]
                    held = [{**chunk, "choices": [{**choice, "text": rest, "finish_reason": None}]}] if rest else []
                yield from held
            yield chunk

    @contextlib.contextmanager
    def _limit(self, max_tokens: int | None) -> Iterator[None]:
        self._max_tokens = -1 if max_tokens is None else max_tokens
        try:
            yield
        finally:
            self._max_tokens = None

    def _generation_limit(self, n_prompt: int) -> int | None:
        """Most tokens the running generation may sample after an ``n_prompt``-token prompt, counted as
        :attr:`last_usage` counts them: the library's ``max_tokens`` rule (``Llama._create_completion``:
        ≤ 0 means until the context is full; never past it); ``None`` outside ``create_completion``."""
        if self._max_tokens is None:
            return None
        room = self.llama.n_ctx() - n_prompt
        return room if self._max_tokens <= 0 else min(self._max_tokens, room)

    def _counting_generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        grammar = kwargs.get("grammar")
        if grammar is not None and self.grammars is not None:
            # grammars built by the library (response_format schemas, tool_choice) meet llama.cpp here
            why = self.grammars.error(grammar._grammar)
            if why:
                raise RequestError(f"The grammar cannot be used: {why}", param="response_format",
                                   code="invalid_grammar")
        if SEEDED.get():
            # the library reuses the cached prefix of the previous prompt (all but the last token when
            # it is the same): logits of a shorter batch differ in the last bits, and the same seed
            # sampled another reply; a full evaluation makes a seed repeat its reply
            self.llama.reset()
        guard = guard_grammar(self.llama, kwargs)  # llama.cpp's own grammar sampler can abort the process
        usage = self.last_usage = {"prompt_tokens": len(tokens), "completion_tokens": 0}
        note_completion_tokens(lambda: usage["completion_tokens"], prompt_tokens=len(tokens))
        sampled = self.last_tokens = []
        self.last_cut = self.last_eog = False
        stop, limit = STOP.get(), self._generation_limit(len(tokens))
        try:
            for token in self._original_generate(tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    usage["completion_tokens"] += 1
                    sampled.append(token)
                else:
                    self.last_eog = True
                    if guard is not None:
                        guard.check()
                yield token
                if (stop is not None and stop()) or len(sampled) == limit:
                    self.last_cut = True
                    return
        except PromptStopped:  # the library then ends the generation as at max_tokens: no text, "length"
            self.last_cut = True

    def completed_text(self, stop: str | list[str] | None) -> str | None:
        """The latest non-streamed generation's text where the library's differs from OpenAI's, else ``None``.

        Two cases (llama-cpp-python 0.3.36, ``Llama._create_completion``): a generation the handler
        ended (:attr:`last_cut`: time limit, shutdown, ``max_tokens`` inside a character) returns ``""``,
        so the text so far is given; and with several stop strings the library cuts at the first one
        *in list order* that the text contains, where OpenAI (and llama-server) cut at the earliest
        match in the text. Bytes are cut before decoding (as the library does), undecodable ends dropped.
        """
        stops = [s.encode("utf-8") for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        if not self.last_cut and len(stops) < 2:
            return None
        text = self._original_detokenize(self.last_tokens)
        found = [text.find(s) for s in stops if s in text]
        return text[:min(found, default=len(text))].decode("utf-8", errors="ignore")

    def prompt_tokens(self, messages: list[dict[str, Any]], tools: Any = None, tool_choice: Any = None) -> int:
        """Number of tokens the prompt for ``messages`` takes (exactly what generation will see).

        Raises:
            RequestError: 400 ``invalid_messages`` when the chat template rejects the messages.
        """
        return len(self.prompt_token_ids(messages, tools, tool_choice))

    def prompt_token_ids(self, messages: list[dict[str, Any]], tools: Any = None, tool_choice: Any = None) -> list[int]:
        """The prompt's token ids for ``messages`` (cached: the latest :data:`TOKEN_CACHE_SIZE` prompts).

        Raises:
            RequestError: 400 ``invalid_messages`` when the chat template rejects the messages.
        """
        return list(self._prompt(messages, tools, tool_choice)[2])

    def _prompt(self, messages: list[dict[str, Any]], tools: Any, tool_choice: Any) -> tuple[bytes, bool, list[int]]:
        """``(prompt, add_bos, token ids)`` for ``messages``: the whole rendering tokenized with special tokens
        parsed, as training tokenizes a conversation (``trainer.templates.ChatTemplate.parts``), unless a content
        holds control-token text; then the template's text and the contents apart, contents as plain text. The
        cache key is the split, not only the text: a content holding ``<|im_end|>`` can render the very text of
        another conversation's turns.

        Raises:
            RequestError: see :meth:`prompt_token_ids`; 400 when a content holds control-token text and the
                template changes contents (so they cannot be located).
        """
        try:
            result = self.formatter(messages=messages, tools=tools, tool_choice=tool_choice)
        except Exception as e:  # jinja2 errors and the template's raise_exception (ValueError)
            raise RequestError(f"Invalid messages for the chat template: {e}", param="messages",
                               code="invalid_messages") from None
        prompt, add_bos = result.prompt.encode("utf-8"), not result.added_special
        pieces = self._content_pieces(result.prompt, messages, tools, tool_choice)
        key = (prompt, add_bos, None if pieces is None else tuple((len(t), c) for t, c in pieces))
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = self._tokens[key] = self._original_tokenize(prompt, add_bos, True) if pieces is None \
                else self._tokenize_pieces(pieces, add_bos)
            while len(self._tokens) > TOKEN_CACHE_SIZE:
                self._tokens.popitem(last=False)
        return prompt, add_bos, tokens

    def _content_pieces(self, prompt: str, messages: list[dict[str, Any]], tools: Any,
                        tool_choice: Any) -> list[tuple[str, bool]] | None:
        """``prompt`` split into the template's text and the contents (:func:`content_parts`) when a content holds
        control-token text; ``None`` when none does (the prompt is tokenized whole).

        Raises:
            RequestError: 400 when the template changes contents, so they cannot be located.
        """
        if self._control is None or not any(self._control.search(m["content"]) for m in messages
                                            if isinstance(m.get("content"), str)):
            return None
        frame = self.formatter(messages=marked(messages), tools=tools, tool_choice=tool_choice).prompt
        pieces = content_parts(prompt, frame, messages)
        if pieces is None:
            raise RequestError(SPECIAL_TEXT_REFUSED, param="messages", code="invalid_messages")
        return pieces

    def _tokenize_pieces(self, pieces: list[tuple[str, bool]], add_bos: bool) -> list[int]:
        """Token ids of ``pieces``: the template's text with special tokens parsed, contents as plain text."""
        tokens: list[int] = []
        frames: dict[tuple[str, bool], list[int]] = {}  # the template's pieces repeat per message
        for text, content in pieces:
            bos = add_bos and not tokens
            if content:
                tokens += self._tokenize_piece(text.encode("utf-8"), bos, False)
                continue
            if (text, bos) not in frames:
                frames[text, bos] = self._tokenize_piece(text.encode("utf-8"), bos, True)
            tokens += frames[text, bos]
        return tokens

    def _tokenize_piece(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        """``llama_tokenize`` with a buffer sized for ``text`` (the library allocates ``n_ctx_train``
        ids per call: 32 KB for SmolLM2, which dominated prompts of thousands of short messages)."""
        size = len(text) + 2  # at most one token per byte, plus BOS/EOS
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self._vocab, text, len(text), buf, size, add_bos, special)
        if n < 0:
            return self._original_tokenize(text, add_bos, special)
        return buf[:n]

    def __call__(self, **kwargs: Any) -> Any:
        PROMPT.set(self._prompt(kwargs["messages"], kwargs.get("tools"), kwargs.get("tool_choice")))
        result = self._handler(**kwargs)
        if parses_calls(kwargs, self.formatter.template):
            result = with_tool_calls(result, bool(kwargs.get("stream")))
        if isinstance(kwargs.get("tool_choice"), dict) or isinstance(kwargs.get("function_call"), dict):
            stream = bool(kwargs.get("stream"))
            result = self._forced_tool_finish(result, stream, kwargs.get("max_tokens"))
            result = openai_tool_calls(result, stream, legacy=kwargs.get("functions") is not None)
        if kwargs.get("stream") and INCLUDE_USAGE.get():
            return self.with_usage(result)
        return result

    def _forced_tool_finish(self, result: Any, stream: bool, max_tokens: int | None) -> Any:
        """A forced tool call's answer with ``finish_reason`` ``"length"`` when its generation was cut
        (``max_tokens`` reached, time limit) before the model ended it: the library always says
        ``"tool_calls"``, so clients parsed the cut ``arguments`` as complete (OpenAI says ``"length"``).
        The generation's end is read after it ran (at a stream's last chunk)."""
        def fix(chunk: dict[str, Any]) -> dict[str, Any]:
            cut = self.last_cut or (max_tokens is not None and 0 < max_tokens <= self.last_usage["completion_tokens"])
            for choice in chunk["choices"]:
                if choice.get("finish_reason") == "tool_calls" and cut and not self.last_eog:
                    choice["finish_reason"] = "length"
            return chunk

        return (fix(chunk) for chunk in result) if stream else fix(result)

    def with_usage(self, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``chunks`` (a chat or completion stream) then OpenAI's usage chunk: ``"choices": []`` and the
        generation's ``usage``, its ``object`` that of the stream's chunks."""
        last: dict[str, Any] = {}
        for chunk in chunks:
            last = chunk
            yield chunk
        u = self.last_usage
        yield {"id": last.get("id", ""), "object": last.get("object", "chat.completion.chunk"),
               "created": last.get("created", 0),
               "model": last.get("model", ""), "choices": [],
               "usage": {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
                         "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}}


def openai_tool_calls(result: Any, stream: bool, legacy: bool) -> Any:
    """A forced tool call's answer (a ``chat.completion``, or an iterator of ``chat.completion.chunk``
    dicts) in OpenAI's shape.

    llama-cpp-python 0.3.36 (``_convert_completion_to_chat_function``) repeats ``id``, ``type`` and
    ``function.name`` in every streamed delta and copies the call into the legacy ``function_call``.
    OpenAI (API reference, "The chat completion chunk object", ``delta.tool_calls``) sends ``id``,
    ``type`` and ``function.name`` only in the first delta of each tool call ``index``; later deltas
    carry ``index`` and ``function.arguments`` only. Clients that join deltas (the openai SDK's
    ``chat.completions.stream()``, LangChain) append every string they see, so repeated names came out
    as "RateRateRate". The role delta is ``{"role": "assistant", "content": null}``, the last one
    (with ``finish_reason``) ``{}``. ``function_call`` is kept only when the request used the legacy
    ``functions`` (``legacy``), its ``name`` likewise in its first delta only. Each call's ``id`` is
    OpenAI's short ``call_…`` (:func:`~steam_persona.serve.tool_calls.tool_call_id`), not the library's
    ``call__<index>_<name>_<completion id>`` (a long name made it thousands of characters).
    """
    if not stream:
        for choice in result["choices"]:
            for call in choice["message"].get("tool_calls") or []:
                call["id"] = tool_call_id()
            if not legacy:
                choice["message"].pop("function_call", None)
        return result
    return _openai_tool_chunks(result, legacy)


def _openai_tool_chunks(chunks: Iterator[dict[str, Any]], legacy: bool) -> Iterator[dict[str, Any]]:
    """The chunks of :func:`openai_tool_calls`, each ``delta`` rewritten in place."""
    named: set[Any] = set()  # tool call indexes (and "function_call") whose header was sent
    for chunk in chunks:
        for choice in chunk["choices"]:
            choice["delta"] = _openai_delta(choice["delta"], named, legacy)
        yield chunk


def _openai_delta(delta: dict[str, Any], named: set[Any], legacy: bool) -> dict[str, Any]:
    """One streamed delta without ``null`` fields (but the role delta's ``content``) and without tool
    call headers already in ``named`` (updated)."""
    out = {k: v for k, v in delta.items()
           if k not in ("tool_calls", "function_call") and (v is not None or (k == "content" and delta.get("role")))}
    calls = []
    for call in delta.get("tool_calls") or []:
        if call["index"] in named:
            call = {"index": call["index"], "function": {"arguments": call["function"]["arguments"]}}
        else:
            call = {**call, "id": tool_call_id()}
        named.add(call["index"])
        calls.append(call)
    if calls:
        out["tool_calls"] = calls
    function_call = delta.get("function_call")
    if legacy and function_call is not None:
        out["function_call"] = {"arguments": function_call["arguments"]} if "function_call" in named else function_call
        named.add("function_call")
    return out


class PromptStopped(Exception):
    """:data:`~steam_persona.serve.engine.STOP` turned true while a prompt was evaluated."""


def control_pattern(vocab: Any) -> re.Pattern[str] | None:
    """A pattern finding the texts of ``vocab``'s control tokens (``<|im_end|>``: those llama.cpp's tokenizer reads
    as one token when told to parse special tokens), longest first; ``None`` when it has none. The GGUF's
    counterpart of :func:`steam_persona.trainer.templates.special_pattern`."""
    texts = {llama_cpp.llama_vocab_get_text(vocab, t).decode("utf-8", errors="replace")
             for t in range(llama_cpp.llama_vocab_n_tokens(vocab))
             if llama_cpp.llama_vocab_get_attr(vocab, t) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL}
    texts.discard("")
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))) if texts else None


def install(llama: llama_cpp.Llama, template: str, grammars: GrammarChecker | None = None) -> ChatHandler:
    """Make ``llama`` chat through :class:`ChatHandler` with ``template``; return the handler."""
    handler = ChatHandler(llama, template, grammars)
    llama.chat_handler = handler
    return handler

