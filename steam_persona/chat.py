"""``steam-train chat``: talk to the persona in the terminal, like LLaMA-Factory's ``chat``.

Two back ends:

* **llama.cpp** for a GGUF, an export dir or the embedded default (``smollm2``): the GGUF's own chat
  template and persona, exactly as ``steam-train serve`` uses them (same handler and persona code);
* **transformers + peft** for a base model with ``--adapter_name_or_path`` (a run dir), optionally
  4/8-bit (``--quantization_bit``), loaded by :func:`steam_persona.trainer.model.load_for_inference`.

What the user types is text on both: a typed ``<|im_end|>`` is characters, never a control token
(:mod:`steam_persona.common.chat_contents`, as serve and training tokenize contents).

Commands at the prompt (:data:`COMMANDS`): ``clear`` forgets the history, ``exit`` or ``quit`` (or EOF) quits;
each also with a leading ``/``, in any case. Ctrl-C stops an answer; at the prompt it ends the chat (exit 130). The
oldest turns leave the history when prompt + ``--max_new_tokens`` would not fit the context; a line that cannot fit
alone is refused with one line.
When stdin is not a terminal, each line is one user turn. When stdout is not a terminal, each turn (a line that is
neither blank nor a command) writes exactly one stdout line (:class:`Answers`), and everything else goes to stderr,
so the command can be scripted: ``printf 'hi\\nexit\\n' | steam-train chat out/export``. With
``--input_format jsonl`` each input line is JSON (:func:`_jsonl_turn`), so that a prompt can hold line breaks.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from steam_persona.common import config
from steam_persona.common.arguments import (FALLBACK_N_CTX, DataArguments, FinetuningArguments,
                                             GeneratingArguments, InferenceArguments, LlamaCppArguments,
                                             ModelArguments, QuantizationArguments, n_threads)
from steam_persona.common.console import console, status
from steam_persona.common.errors import UserError

#: Sampling defaults when the model has no generation config (LLaMA-Factory's chat uses similar ones).
FALLBACK_GENERATION = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 512}

#: What a whole line (without a leading ``/``, in any case) does instead of being sent to the model.
COMMANDS = {"clear": "clear", "exit": "exit", "quit": "exit"}


@dataclass
class ChatConfig:
    """Settings of ``steam-train chat`` (LLaMA-Factory's flag names)."""

    model_name_or_path: str | None = ModelArguments.use("model_name_or_path", None, note="Also a finished export dir (its GGUF).")
    adapter_name_or_path: str | None = ModelArguments.use("adapter_name_or_path")
    quantization_bit: int | None = QuantizationArguments.use("quantization_bit")
    system: str | None = DataArguments.use(
        "system", unset="the run's (run_config.yaml), else none; a GGUF keeps the persona in its chat template")
    temperature: float | None = GeneratingArguments.use(
        "temperature", None,
        unset=f"the model's generation config when it samples, else {FALLBACK_GENERATION['temperature']}")
    top_p: float | None = GeneratingArguments.use(
        "top_p", None, unset=f"the model's generation config when it samples, else {FALLBACK_GENERATION['top_p']}")
    top_k: int | None = GeneratingArguments.use("top_k", None)
    repetition_penalty: float = GeneratingArguments.use("repetition_penalty")
    max_new_tokens: int | None = GeneratingArguments.use("max_new_tokens", None)
    n_ctx: int = LlamaCppArguments.use(
        "n_ctx", note="With base + adapter: 0 = the model's max_position_embeddings. The oldest turns leave the "
                      "history when prompt + --max_new_tokens would not fit.")
    n_threads: int = LlamaCppArguments.use("n_threads")
    n_gpu_layers: int = LlamaCppArguments.use("n_gpu_layers")
    n_batch: int = LlamaCppArguments.use("n_batch")
    flash_attn: bool = LlamaCppArguments.use("flash_attn")
    seed: int = DataArguments.use("seed", note="It seeds sampling.")
    # --- LLaMA-Factory's inference YAML keys (examples/inference/*.yaml)
    template: str | None = DataArguments.use(
        "template", None, unset="the chat template the adapter was trained with (or the GGUF "
        "carries); a named one is accepted and changes nothing")
    finetuning_type: str = FinetuningArguments.use("finetuning_type")
    infer_backend: str = InferenceArguments.use("infer_backend")
    trust_remote_code: bool = ModelArguments.use("trust_remote_code",
                                                 note="Chat: also when the adapter's run allowed it.")
    output_format: str = config.arg(
        "text", "How answers go to stdout. text: as written on a terminal; piped or redirected, one line a turn, "
        "its line breaks and backslashes escaped (\\n, \\r, \\\\: printf '%b' undoes them) and an empty line for a "
        "refused turn. jsonl: one JSON object a turn, {prompt, response, finish_reason, error}.",
        choices=("text", "jsonl"))
    input_format: str = config.arg(
        "text", "How input lines are read. text: each line is a turn as written, or a command. jsonl: each line is "
        "a JSON object {\"prompt\": \"...\"} (a jsonl answer line is one: its other keys are ignored) or a JSON "
        "string, so a prompt can hold line breaks; {\"command\": \"clear\"} or {\"command\": \"exit\"} for the "
        "commands. A line that is neither is a refused turn.", choices=("text", "jsonl"))


@dataclass
class Turn:
    """One answer: its text; its tokens, end-of-turn token excluded (what ``--max_new_tokens`` caps,
    counted the same way by both back ends); seconds in all and to the first token; whether it
    stopped by itself (end-of-turn) rather than at the limit."""

    text: str
    tokens: int
    seconds: float
    first_token_s: float
    stopped: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Backend:
    """A chat model: ``stream(messages, on_text) -> Turn`` with ``persona`` and sampling ``defaults``.

    ``persona``: the system message each request starts with; ``""`` (``--system ''``) sends an empty one, which
    drops the persona a chat template would add by default (as a request's empty system message does in
    ``serve``); ``None`` sends none, so the template's default system prompt applies."""

    name: str
    persona: str | None
    defaults: dict[str, Any]
    #: Context size in tokens: prompt and reply together.
    n_ctx: int

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt ``messages`` make, generation prompt included."""
        raise NotImplementedError

    def stream(self, messages: list[dict[str, str]], on_text: Callable[[str], None], *, temperature: float,
               top_p: float, top_k: int | None, repetition_penalty: float, max_new_tokens: int, seed: int) -> Turn:
        raise NotImplementedError


def generation_defaults(gen: dict[str, Any] | None) -> dict[str, Any]:
    """temperature / top_p / max_new_tokens from a generation config dict (``generation_config.json``).

    A config that samples (``do_sample: true``, e.g. Qwen2.5-Instruct's 0.7 / 0.8) gives its own
    temperature and top_p; one that does not (transformers' bare default) leaves
    :data:`FALLBACK_GENERATION`. ``max_new_tokens`` is taken whenever it is set.
    """
    out = dict(FALLBACK_GENERATION)
    gen = gen or {}
    if gen.get("do_sample"):
        for key in ("temperature", "top_p"):
            if isinstance(gen.get(key), (int, float)):
                out[key] = float(gen[key])
    if isinstance(gen.get("max_new_tokens"), int):
        out["max_new_tokens"] = gen["max_new_tokens"]
    return out


class GGUFBackend(Backend):
    """llama.cpp back end: the served code path (``steam_persona.serve.chat_handler``, ``steam_persona.serve.persona``)."""

    def __init__(self, model: str, cfg: ChatConfig) -> None:
        import llama_cpp

        from steam_persona.serve import chat_handler
        from steam_persona.serve.modelinfo import cache_may_sit_on_gpu, check_kv_fits, choose_n_ctx, read_model_info
        from steam_persona.serve.persona import resolve_persona

        info = read_model_info(model)
        if not info.chat_template:
            raise UserError(f"{info.path}: the GGUF has no chat template; re-export it from a tokenizer that has one")
        n_ctx, _ = choose_n_ctx(info, cfg.n_ctx)
        if not cache_may_sit_on_gpu(cfg.n_gpu_layers):
            check_kv_fits(info, n_ctx)
        threads = n_threads(cfg.n_threads, generate=True)
        self.llama = llama_cpp.Llama(str(info.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                     n_gpu_layers=cfg.n_gpu_layers, n_batch=cfg.n_batch, flash_attn=cfg.flash_attn,
                                     seed=cfg.seed, verbose=False)
        self.handler = chat_handler.install(self.llama, info.chat_template)
        self.n_ctx = self.llama.n_ctx()
        self.persona, _ = resolve_persona(cfg.system, info)
        self.name = info.path.name
        gen = next((f for f in (info.path.parent / "generation_config.json",  # written by steam-train export
                                info.path.parent / "merged" / "generation_config.json") if f.is_file()), None)
        self.defaults = generation_defaults(json.loads(gen.read_text(encoding="utf-8")) if gen else None)

    def prompt_tokens(self, messages) -> int:
        from steam_persona.serve.errors import RequestError

        try:
            return self.handler.prompt_tokens(messages)  # serve's count (context_length_exceeded)
        except RequestError as e:  # serve's invalid_messages
            raise LineRefused(e.message, e.code or "invalid_messages") from None

    def stream(self, messages, on_text, *, temperature, top_p, top_k, repetition_penalty, max_new_tokens,
               seed) -> Turn:
        start = time.perf_counter()
        first, finish = None, None
        parts = []
        chunks = self.llama.create_chat_completion(messages=messages, stream=True, temperature=temperature,
                                                   top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                                   repeat_penalty=repetition_penalty,
                                                   **({} if top_k is None else {"top_k": top_k}))
        with contextlib.closing(chunks):  # Ctrl-C: the generation ends here, not when the generator is collected
            for chunk in chunks:
                text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                finish = (chunk["choices"][0].get("finish_reason") if chunk["choices"] else None) or finish
                if text:
                    first = first or time.perf_counter() - start
                    parts.append(text)
                    on_text(text)
        elapsed = time.perf_counter() - start
        # the handler counts generated tokens without the end-of-generation one, as llama.cpp's max_tokens does
        return Turn("".join(parts), self.handler.last_usage["completion_tokens"], elapsed, first or elapsed,
                    stopped=finish == "stop")


class HFBackend(Backend):
    """transformers + peft back end (base + LoRA adapter, optional 4/8-bit)."""

    def __init__(self, cfg: ChatConfig) -> None:
        import torch

        from steam_persona.common import persona
        from steam_persona.trainer.model import load_for_inference
        from steam_persona.common.run_record import RunRecord

        torch.manual_seed(cfg.seed)
        base = cfg.model_name_or_path  # None with an adapter: load_for_inference takes the run's base
        self.model, self.tokenizer = load_for_inference(base, cfg.adapter_name_or_path,
                                                        quantization_bit=cfg.quantization_bit,
                                                        trust_remote_code=cfg.trust_remote_code)
        # no persona known: the model's chat template applies its own default system prompt
        self.persona = "" if cfg.system == "" else \
            persona.resolve(cfg.system, RunRecord.load(cfg.adapter_name_or_path), default=None) or None
        self.name = f"{base or 'run base'} + {cfg.adapter_name_or_path}" if cfg.adapter_name_or_path else str(base)
        gen = self.model.generation_config
        self.defaults = generation_defaults(gen.to_dict() if gen is not None else None)
        self.n_ctx = cfg.n_ctx or getattr(self.model.config, "max_position_embeddings", None) or FALLBACK_N_CTX

    def _inputs(self, messages) -> Any:
        from transformers import BatchEncoding

        ids = prompt_ids(self.tokenizer, messages)
        return BatchEncoding({"input_ids": [ids], "attention_mask": [[1] * len(ids)]}, tensor_type="pt")

    def prompt_tokens(self, messages) -> int:
        return self._inputs(messages)["input_ids"].shape[-1]

    def stream(self, messages, on_text, *, temperature, top_p, top_k, repetition_penalty, max_new_tokens,
               seed) -> Turn:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        inputs = self._inputs(messages).to(self.model.device)
        streamer = whole_chars_streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p,
                        **({} if top_k is None else {"top_k": top_k})) if temperature > 0 else dict(do_sample=False)
        result: dict[str, Any] = {}
        halt = threading.Event()

        class Halted(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return halt.is_set()

        def work() -> None:
            torch.manual_seed(seed)
            try:
                with torch.no_grad():
                    result["out"] = self.model.generate(**inputs, streamer=streamer, max_new_tokens=max_new_tokens,
                                                        pad_token_id=self.tokenizer.pad_token_id,
                                                        repetition_penalty=repetition_penalty,
                                                        stopping_criteria=StoppingCriteriaList([Halted()]), **sampling)
            except BaseException as e:  # surfaced in the main thread below
                result["error"] = e
                streamer.end()

        start = time.perf_counter()
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        first, parts = None, []
        try:
            for text in streamer:
                if text:
                    first = first or time.perf_counter() - start
                    parts.append(text)
                    on_text(text)
        except KeyboardInterrupt:  # stop the generation at its next token, then say so
            halt.set()
            thread.join()
            raise
        thread.join()
        if "error" in result:
            raise result["error"]
        elapsed = time.perf_counter() - start
        new = result["out"][0, inputs["input_ids"].shape[-1]:].tolist()
        eos = self.model.generation_config.eos_token_id
        stopped = bool(new) and new[-1] in (eos if isinstance(eos, list) else [eos])
        return Turn("".join(parts), len(new) - stopped, elapsed, first or elapsed, stopped=stopped)


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt ``tokenizer``'s chat template makes of ``messages`` (generation prompt included):
    the template's own text with its special tokens parsed, the contents as text, as serve and training
    tokenize them (a typed ``<|im_end|>`` is characters, never the end of a turn).

    Raises:
        LineRefused: the template changes contents, so they cannot be located, and one holds special-token text.
    """
    from steam_persona.common.chat_contents import SPECIAL_TEXT_REFUSED, content_parts, marked
    from steam_persona.trainer.encode import encode_parts
    from steam_persona.trainer.templates import special_pattern

    def render(msgs: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    text = render(messages)
    special = special_pattern(tokenizer)
    if special is None or not any(special.search(m["content"]) for m in messages):
        return encode_parts(tokenizer, [(text, False)])
    parts = content_parts(text, render(marked(messages)), messages)
    if parts is None:
        raise LineRefused(SPECIAL_TEXT_REFUSED)
    return encode_parts(tokenizer, parts)


class LineRefused(Exception):
    """The new line cannot be sent (its message says why; ``code`` as serve's error would name it); the chat goes
    on without it."""

    def __init__(self, message: str, code: str = "invalid_messages") -> None:
        super().__init__(message)
        self.message, self.code = message, code


def whole_chars_streamer(tokenizer: Any, **kwargs: Any) -> Any:
    """transformers' ``TextIteratorStreamer`` (``kwargs`` its own) that ends a reply without the U+FFFD of a
    character whose bytes ``max_new_tokens`` cut (its tokenizer decodes them so); llama-cpp-python leaves such
    bytes out too."""
    from transformers import TextIteratorStreamer

    class WholeChars(TextIteratorStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            super().on_finalized_text(text.rstrip("\ufffd") if stream_end else text, stream_end)

    return WholeChars(tokenizer, **kwargs)


def load_backend(cfg: ChatConfig) -> Backend:
    """Pick the back end: adapter → transformers; GGUF / export dir / embedded default → llama.cpp;
    any other model (HF folder or hub id) → transformers.

    Raises:
        UserError: a missing model path or a GGUF without a chat template.
    """
    from steam_persona.common.hub import resolve_model
    from steam_persona.serve.modelinfo import is_export_dir

    if cfg.adapter_name_or_path:
        return HFBackend(cfg)
    cfg.model_name_or_path = cfg.model_name_or_path or "smollm2"
    p = Path(cfg.model_name_or_path).expanduser()
    if p.is_dir() and (any(p.glob("*.gguf")) or is_export_dir(p)):
        return GGUFBackend(_llama_cpp_model(cfg, str(p)), cfg)
    src = resolve_model(cfg.model_name_or_path)
    if src.gguf_file:
        return GGUFBackend(_llama_cpp_model(cfg, str(Path(src.path) / src.gguf_file)), cfg)
    return HFBackend(cfg)


def _llama_cpp_model(cfg: ChatConfig, gguf: str) -> str:
    """``gguf``, which chat runs with llama.cpp: a given ``infer_backend`` (LLaMA-Factory's engine) is refused.

    Raises:
        UserError: ``infer_backend`` given.
    """
    if config.given(cfg, "infer_backend"):
        raise UserError(f"{config.source_of(cfg, 'infer_backend')}: --infer_backend {cfg.infer_backend}: {gguf} is "
                        "a GGUF, which chat runs with llama.cpp; delete the key, or chat with the adapter "
                        "(--adapter_name_or_path) for transformers")
    return gguf


def check_paths(cfg: ChatConfig) -> None:
    """Reject a missing adapter or model path, and an export or GGUF file that serve would refuse, at once,
    before torch or llama.cpp is imported.

    Raises:
        UserError: an adapter dir without ``adapter_config.json``, a model path that does not exist, or
            what :func:`~steam_persona.serve.modelinfo.find_gguf` refuses for an export dir or a file.
    """
    from steam_persona.common.hub import resolve_model
    from steam_persona.common.run_files import refuse_unfinished
    from steam_persona.serve.modelinfo import find_gguf, is_export_dir

    if cfg.adapter_name_or_path:
        ad = Path(cfg.adapter_name_or_path).expanduser()
        refuse_unfinished(ad)
        if not (ad / "adapter_config.json").is_file():
            raise UserError(f"{ad}: no adapter_config.json; pass a training output dir or one of its checkpoint-N "
                            "folders to --adapter_name_or_path")
    if cfg.model_name_or_path:
        p = Path(cfg.model_name_or_path).expanduser()
        if p.is_file() or is_export_dir(p):
            find_gguf(p)
        resolve_model(cfg.model_name_or_path)


def _lines(interactive: bool) -> Iterator[tuple[int, str]]:
    """The user's lines, numbered from 1 and stripped, each sent as written (no escapes are undone); bytes that are not text in stdin's encoding become U+FFFD, with a note. The
    prompt ``User: `` goes to stderr when stdout is not a terminal (``input`` would write it to stdout)."""
    number = 0
    while True:
        try:
            line = _read_line() if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and line == "":
            return
        number += 1
        text = _undecodable_replaced(line)
        if text != line:
            console.print(f"[dim]input line {number}: bytes that are not {_stdin_encoding()} were replaced by "
                          "\N{REPLACEMENT CHARACTER} (pipe UTF-8 text)[/]")
        yield number, text.strip()


def _turn(line: str, input_format: str) -> tuple[str, str | None]:
    """``(prompt, command)`` of one input line: as written, or a command (:data:`COMMANDS`, also with a leading
    ``/`` as other chat CLIs spell it); with ``--input_format jsonl``, :func:`_jsonl_turn`.

    Raises:
        LineRefused: see :func:`_jsonl_turn`.
    """
    if input_format == "jsonl":
        return _jsonl_turn(line)
    return line, COMMANDS.get(line.lower().removeprefix("/"))


def _jsonl_turn(line: str) -> tuple[str, str | None]:
    """``(prompt, command)`` of one ``--input_format jsonl`` line: a JSON string is the prompt; an object gives
    its ``prompt`` (a string, other keys ignored) or its ``command`` (a key of :data:`COMMANDS`), never both.

    Raises:
        LineRefused: the line is not JSON, or not such a string or object (its message names the fix).
    """
    fix = 'write one JSON object {"prompt": "..."} or JSON string a line (--input_format jsonl)'
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise LineRefused(f"not JSON ({e.msg} at column {e.colno}): {fix}", "invalid_json") from None
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        raise LineRefused(f"a JSON {type(value).__name__}, not an object: {fix}", "invalid_prompt")
    command, prompt = value.get("command"), value.get("prompt")
    if command is not None:
        if prompt is not None or not isinstance(command, str) or command.lower() not in COMMANDS:
            raise LineRefused(f"\"command\" is one of {sorted(COMMANDS)}, on a line without \"prompt\"",
                              "invalid_prompt")
        return "", COMMANDS[command.lower()]
    if not isinstance(prompt, str) or not prompt.strip():
        got = "no \"prompt\"" if prompt is None else f"\"prompt\" {json.dumps(prompt, ensure_ascii=False)[:40]}"
        raise LineRefused(f"{got}; a turn needs a non-empty string: {fix}", "invalid_prompt")
    return prompt, None


def _read_line() -> str:
    if sys.stdout.isatty():
        return input("User: ")
    sys.stderr.write("User: ")
    sys.stderr.flush()
    return input()


def _stdin_encoding() -> str:
    return getattr(sys.stdin, "encoding", None) or "utf-8"


def _undecodable_replaced(line: str) -> str:
    """``line`` with the undecodable bytes Python's stdin keeps as lone surrogates (``surrogateescape``)
    decoded with replacement: a tokenizer refuses lone surrogates."""
    if not any("\ud800" <= c <= "\udfff" for c in line):
        return line
    encoding = _stdin_encoding()
    try:
        return line.encode(encoding, "surrogateescape").decode(encoding, "replace")
    except UnicodeError:  # a surrogate that no byte stands for
        return line.encode("utf-8", "replace").decode("utf-8")


def fit_context(backend: Backend, history: list[dict[str, str]],
                max_new_tokens: int) -> tuple[list[dict[str, str]], int, int]:
    """The request for ``history`` (ending with the new user turn) that leaves ``max_new_tokens`` of the
    context for the reply, as llama.cpp's ``llama-cli`` and LLaMA-Factory's chat keep it: the oldest turns
    (a user line and its answer) dropped first, the system prompt kept.

    Returns:
        ``(messages, how many messages of history were left out, prompt tokens)``; the prompt tokens exceed
        ``backend.n_ctx - max_new_tokens`` only when the new line alone does not fit.
    """
    system = [] if backend.persona is None else [{"role": "system", "content": backend.persona}]
    dropped = 0
    while True:
        messages = system + history[dropped:]
        n = backend.prompt_tokens(messages)
        if n + max_new_tokens <= backend.n_ctx or len(history) - dropped <= 1:
            return messages, dropped, n
        dropped += 2


def run(cfg: ChatConfig) -> list[Turn]:
    """Chat until ``exit``, end of input or Ctrl-C at the prompt; return the answers (for tests and scripts).

    A Ctrl-C during an answer stops that answer only.

    Raises:
        UserError: see :func:`load_backend`; ``--max_new_tokens`` that leaves no room in the context.
        KeyboardInterrupt: Ctrl-C at the prompt (the CLI exits 130).
    """
    check_paths(cfg)
    if cfg.template not in (None, "auto"):
        console.print(f"[dim]template {cfg.template}: no effect here; chat uses the chat template the adapter was "
                      "trained with (a GGUF's own)[/dim]")
    interactive = sys.stdin.isatty()
    with status("loading model (first import of torch / llama.cpp: ~10–30 s)"):
        backend = load_backend(cfg)
    sampling = {k: getattr(cfg, k) if getattr(cfg, k) is not None else backend.defaults[k]
                for k in ("temperature", "top_p", "max_new_tokens")} | {"top_k": cfg.top_k,
                                                                          "repetition_penalty": cfg.repetition_penalty}
    if sampling["max_new_tokens"] >= backend.n_ctx:
        raise UserError(f"--max_new_tokens {sampling['max_new_tokens']} leaves no room for a prompt in the context of "
                        f"{backend.n_ctx} tokens; lower --max_new_tokens or raise --n_ctx")
    persona_line = "(none: --system '')" if backend.persona == "" else \
        (backend.persona or "(the model's default)").strip().splitlines()[0][:100]
    console.print(f"[bold]{backend.name}[/]  persona: {persona_line}")
    console.print(f"temperature {sampling['temperature']}, top_p {sampling['top_p']}, "
                  f"max_new_tokens {sampling['max_new_tokens']}, n_ctx {backend.n_ctx}. "
                  "Type 'clear' to forget the history, 'exit' or 'quit' to end (also /clear, /exit, /quit).")
    answers = Answers(sys.stdout, cfg.output_format, prefix=interactive)
    history: list[dict[str, str]] = []
    turns: list[Turn] = []
    try:
        for number, line in _lines(interactive):
            if not line:
                continue
            try:
                line, command = _turn(line, cfg.input_format)
            except LineRefused as e:
                answers.refused(line, LineRefused(f"input line {number}: {e.message}", e.code))
                continue
            if command == "exit":
                break
            if command == "clear":
                history = []
                console.print("History cleared.")
                continue
            history.append({"role": "user", "content": line})
            try:
                messages = _request(backend, history, sampling["max_new_tokens"])
            except LineRefused as e:
                answers.refused(line, LineRefused(f"input line {number}: {e.message}", e.code))
                continue
            text, turn = _answer(backend, messages, sampling, cfg.seed, answers, line)
            history.append({"role": "assistant", "content": text})
            if turn:
                turns.append(turn)
    except KeyboardInterrupt:
        console.print("\ninterrupted; chat ended")
        raise
    return turns


def _request(backend: Backend, history: list[dict[str, str]], max_new_tokens: int) -> list[dict[str, str]]:
    """The messages to send for ``history`` (:func:`fit_context`), its oldest turns removed from it with a dim
    line.

    Raises:
        LineRefused: the new line (then removed from ``history``) cannot fit even alone, or the chat template
            refuses it.
    """
    try:
        messages, dropped, n_prompt = fit_context(backend, history, max_new_tokens)
    except LineRefused as e:
        history.pop()
        raise LineRefused(f"this line is refused: {e.message}", e.code) from None
    if n_prompt + max_new_tokens > backend.n_ctx:
        history.pop()
        raise LineRefused(f"this line makes a prompt of {n_prompt} tokens; the context holds {backend.n_ctx} with "
                          f"{max_new_tokens} kept for the reply: shorten it, lower --max_new_tokens or raise --n_ctx",
                          "context_length_exceeded")
    if dropped:
        del history[:dropped]
        turns = "turn" if dropped == 2 else f"{dropped // 2} turns"
        console.print(f"[dim](the oldest {turns} left the history to fit the context of {backend.n_ctx} tokens)[/]")
    return messages


class Answers:
    """stdout's side of the chat. On a terminal (``text``): each answer streams after ``Assistant: `` (when the
    user types at a terminal too). Otherwise each turn writes exactly one line, so that a script pairs its input
    lines (blank lines and commands left out) with the output lines: ``text`` streams the answer with ``\\``,
    line feeds and carriage returns escaped (``\\\\``, ``\\n``, ``\\r``; ``printf '%b'`` undoes them) and writes an
    empty line for a refused turn; ``jsonl`` writes ``{"prompt", "response", "finish_reason", "error"}`` when the
    turn ends (``finish_reason`` "stop", "length" or ``null`` for a Ctrl-C; a refused turn has ``response`` and
    ``finish_reason`` ``null`` and ``error`` ``{"message", "code"}``, its message on stderr too)."""

    def __init__(self, out: Any, output_format: str, *, prefix: bool) -> None:
        self.out, self.jsonl = out, output_format == "jsonl"
        self.one_line = self.jsonl or not out.isatty()
        self.prefix = prefix and not self.one_line

    def start(self) -> None:
        if self.prefix:
            self._write("Assistant: ")

    def text(self, text: str) -> None:
        if not self.jsonl:
            self._write(escape_line_breaks(text) if self.one_line else text)

    def end(self, prompt: str, text: str, turn: Turn | None) -> None:
        if not self.jsonl:
            self._write("\n" if turn else " (stopped)\n")
            return
        finish = None if turn is None else "stop" if turn.stopped else "length"
        self._record(prompt, text, finish, None)

    def refused(self, prompt: str, e: LineRefused) -> None:
        console.print(e.message)
        if self.jsonl:
            self._record(prompt, None, None, {"message": e.message, "code": e.code})
        elif self.one_line:
            self._write("\n")

    def _record(self, prompt: str, response: str | None, finish: str | None, error: dict | None) -> None:
        record = json.dumps({"prompt": prompt, "response": response, "finish_reason": finish, "error": error},
                            ensure_ascii=False)
        self._write(_replaced(record, _JSON_BREAKS) + "\n")  # a JSON string may hold them escaped, never raw

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


#: the characters besides ``\n`` and ``\r`` that Python's ``str.splitlines`` takes for line ends (VT, FF, the
#: separators FS/GS/RS, NEL, LINE and PARAGRAPH SEPARATOR) as ``printf '%b'`` reads them back (NEL as its UTF-8 bytes:
#: printf's ``\u`` takes no code point below U+00A0)
_PRINTF_BREAKS = {"\x0b": "\\v", "\x0c": "\\f", "\x1c": "\\x1c", "\x1d": "\\x1d", "\x1e": "\\x1e",
                  "\x85": "\\xc2\\x85", "\u2028": "\\u2028", "\u2029": "\\u2029"}
#: those that JSON leaves raw (it escapes the C0 ones itself), as JSON escapes
_JSON_BREAKS = {c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


def escape_line_breaks(text: str) -> str:
    """``text`` on one line: backslashes, line feeds, carriage returns and the other line ends of
    :data:`_PRINTF_BREAKS` written as ``printf '%b'`` reads them."""
    return _replaced(text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r"), _PRINTF_BREAKS)


def _replaced(text: str, table: dict[str, str]) -> str:
    for c, escaped in table.items():
        text = text.replace(c, escaped)
    return text


def _answer(backend: Backend, messages: list[dict[str, str]], sampling: dict[str, Any], seed: int, answers: Answers,
            prompt: str) -> tuple[str, Turn | None]:
    """Stream one answer to ``answers`` and its statistics to stderr; return its text and :class:`Turn`, which
    is ``None`` when Ctrl-C stopped it (the text is then what was shown)."""
    shown: list[str] = []
    answers.start()

    def show(text: str) -> None:
        shown.append(text)
        answers.text(text)

    try:
        turn = backend.stream(messages, show, temperature=sampling["temperature"], top_p=sampling["top_p"],
                              top_k=sampling["top_k"], repetition_penalty=sampling["repetition_penalty"],
                              max_new_tokens=sampling["max_new_tokens"], seed=seed)
    except KeyboardInterrupt:
        answers.end(prompt, "".join(shown), None)
        return "".join(shown), None
    answers.end(prompt, turn.text, turn)
    ending = "ended by itself" if turn.stopped else f"cut at --max_new_tokens {sampling['max_new_tokens']}"
    console.print(f"[dim]{turn.tokens} tokens in {turn.seconds:.2f} s, {turn.tokens_per_s:.1f} tokens/s "
                  f"(first token after {turn.first_token_s:.2f} s; {ending})[/]")
    return turn.text, turn


command = config.command(ChatConfig, run, name="chat", config_option="option",
                         help="Chat in the terminal with a GGUF (llama.cpp) or a base + LoRA adapter (transformers). A line that "
                              "is 'clear' forgets the history; 'exit' or 'quit' (or end of input) ends the chat; also "
                              "with a leading '/', in any case. Piped, each line is a turn; with stdout not a terminal, "
                              "each turn (a line neither blank nor a command) is one stdout line (--output_format); "
                              "--input_format jsonl reads JSON lines, for prompts with line breaks.")
