"""Prompt formats: the tokenizer's own chat template (``--template auto``) or a named one.

A conversation is rendered into *segments*: ``("prompt", text)`` (never learned), ``("reply",
text)`` (the assistant's content, learned), ``("eot", text)`` (the end-of-turn token closing a
reply, learned) and ``("trailer", text)`` (what the template writes after the end-of-turn token,
e.g. ChatML's newline; not learned). :mod:`steam_persona.trainer.encode` tokenizes the segments.

``auto`` renders the tokenizer's Jinja chat template incrementally (conversation prefixes with and
without the generation prompt), so any template whose renderings are prefixes of each other works.
Named templates follow LLaMA-Factory's ``src/llamafactory/data/template.py`` (slots, default systems)
and come with an equivalent Jinja chat template that is saved with the adapter's tokenizer, so chat,
export and serve format prompts exactly as training did.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from steam_persona.common.chat_contents import Part, content_parts, marked
from steam_persona.common.errors import UserError

Segment = tuple[str, str]  # (kind, text); kind in prompt | reply | eot | trailer


@dataclass(frozen=True)
class NamedTemplate:
    """A fixed prompt format. ``{content}`` is the message text; ``{eos}`` the tokenizer's eos token.

    Attributes:
        system / user: text of a system / user turn.
        header: what opens an assistant turn (also the generation prompt).
        eot: the end-of-turn marker closing a reply (learned with the reply).
        trailer: text after ``eot`` (not learned).
        prefix: text at the very start (e.g. Llama 3's ``<|begin_of_text|>``).
        default_system: used when a conversation has no system turn.
        system_in_user: the format has no system turn; the system text is prepended to the first user
            turn, separated by a blank line (Gemma, Mistral).
    """

    name: str
    user: str
    header: str
    eot: str
    system: str = ""
    trailer: str = ""
    prefix: str = ""
    default_system: str = ""
    system_in_user: bool = False

    def segments(self, messages: list[dict[str, str]], eos: str) -> list[Segment]:
        sub = lambda s, content="": s.replace("{eos}", eos).replace("{content}", content)  # noqa: E731
        msgs = list(messages)
        if (not msgs or msgs[0]["role"] != "system") and self.default_system:
            msgs.insert(0, {"role": "system", "content": self.default_system})
        out: list[Segment] = [("prompt", sub(self.prefix))] if self.prefix else []
        system = ""
        for m in msgs:
            if m["role"] == "system":
                if self.system_in_user:
                    system = m["content"]
                else:
                    out.append(("prompt", sub(self.system, m["content"])))
            elif m["role"] == "user":
                content = f"{system}\n\n{m['content']}" if system else m["content"]
                system = ""
                out.append(("prompt", sub(self.user, content)))
            else:
                out += [("prompt", sub(self.header)), ("reply", m["content"]), ("eot", sub(self.eot))]
                if self.trailer:
                    out.append(("trailer", sub(self.trailer)))
        return out

    def generation_header(self, eos: str) -> str:
        return self.header.replace("{eos}", eos)

    def jinja(self, eos: str) -> str:
        """An equivalent Jinja chat template (HF ``apply_chat_template`` conventions)."""
        q = lambda s: "{{ " + json.dumps(s.replace("{eos}", eos), ensure_ascii=False) + " }}"  # noqa: E731

        def wrap(s: str, var: str) -> str:
            pre, _, post = s.partition("{content}")
            return q(pre) + "{{ " + var + " }}" + q(post)

        sys_default = json.dumps(self.default_system, ensure_ascii=False)
        parts = [q(self.prefix) if self.prefix else "",
                 "{% set msgs = messages %}{% set sys = '' %}",
                 "{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
                 "{% set msgs = messages[1:] %}",
                 "{% else %}{% set sys = " + sys_default + " %}{% endif %}"]
        if not self.system_in_user:
            parts.append("{% if sys %}" + wrap(self.system, "sys") + "{% endif %}")
        parts.append("{% for m in msgs %}")
        if self.system_in_user:
            parts.append("{% if loop.first and sys and m['role'] == 'user' %}{% set text = sys + '\\n\\n' + m['content'] %}"
                         "{% else %}{% set text = m['content'] %}{% endif %}")
        else:
            parts.append("{% set text = m['content'] %}")
        parts.append("{% if m['role'] == 'user' %}" + wrap(self.user, "text")
                     + "{% elif m['role'] == 'assistant' %}" + q(self.header) + "{{ text }}" + q(self.eot)
                     + (q(self.trailer) if self.trailer else "") + "{% endif %}{% endfor %}")
        parts.append("{% if add_generation_prompt %}" + q(self.header) + "{% endif %}")
        return "".join(parts)


_CHATML = dict(system="<|im_start|>system\n{content}<|im_end|>\n", user="<|im_start|>user\n{content}<|im_end|>\n",
               header="<|im_start|>assistant\n", eot="<|im_end|>", trailer="\n")

#: Named templates (LLaMA-Factory names). ``default`` is LLaMA-Factory's own "Human:/Assistant:" format.
TEMPLATES: dict[str, NamedTemplate] = {t.name: t for t in [
    NamedTemplate("default", system="System: {content}{eos}\n", user="Human: {content}{eos}\n",
                  header="Assistant:", eot="{eos}", trailer="\n"),
    NamedTemplate("chatml", **_CHATML),
    NamedTemplate("qwen", **_CHATML, default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    NamedTemplate("llama3", prefix="<|begin_of_text|>",
                  system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
                  user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
                  header="<|start_header_id|>assistant<|end_header_id|>\n\n", eot="<|eot_id|>"),
    NamedTemplate("gemma", prefix="<bos>", user="<start_of_turn>user\n{content}<end_of_turn>\n",
                  header="<start_of_turn>model\n", eot="<end_of_turn>", trailer="\n", system_in_user=True),
    NamedTemplate("mistral", prefix="<s>", user="[INST] {content}[/INST]", header="", eot="</s>",
                  system_in_user=True),
    NamedTemplate("alpaca", system="{content}\n\n", user="### Instruction:\n{content}\n\n", header="### Response:\n",
                  eot="{eos}", trailer="\n\n",
                  default_system="Below is an instruction that describes a task. Write a response that "
                                 "appropriately completes the request.\n\n"),
]}


class ChatTemplate:
    """A conversation formatter bound to a tokenizer: ``auto`` or a :class:`NamedTemplate`.

    Attributes:
        name: ``"auto"`` or the named template's name.
        eot_token: the end-of-turn token string (``<|im_end|>`` for ChatML); the adapter's tokenizer
            is saved with it as eos so generation stops there.
        jinja: the chat template to save with the tokenizer.
    """

    def __init__(self, name: str, tokenizer: Any) -> None:
        self.name = name
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token or ""
        if name == "auto":
            if not getattr(tokenizer, "chat_template", None):
                raise UserError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat template; "
                                f"pass --template with one of: {', '.join(TEMPLATES)}")
            self.named = None
            self.jinja = tokenizer.chat_template
            self.eot_token = self._auto_eot()
        else:
            if name not in TEMPLATES:
                raise UserError(f"--template: unknown template '{name}'; use auto or one of: {', '.join(TEMPLATES)}")
            self.named = TEMPLATES[name]
            self.eot_token = self.named.eot.replace("{eos}", eos)
            if not self.eot_token:
                raise UserError(f"--template {name} ends replies with the eos token, but the tokenizer has none; "
                                "pick another --template")
            self.jinja = self.named.jinja(eos)

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja raises TemplateError / exceptions raised by the template itself
            raise UserError(f"the tokenizer's chat template failed on a conversation ({e}); pass a named --template "
                            f"({', '.join(TEMPLATES)})") from None

    def _auto_eot(self) -> str:
        msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "X7q"}]
        full = self._render(msgs, False)
        after = full[full.rfind("X7q") + 3:]
        special = sorted({str(t) for t in self.tokenizer.all_special_tokens}
                         | {str(t) for t in getattr(self.tokenizer, "added_tokens_encoder", {})}, key=len, reverse=True)
        for tok in special:
            if after.lstrip(" ").startswith(tok):
                return tok
        raise UserError("the tokenizer's chat template does not close a reply with a special end-of-turn token; "
                        f"pass a named --template ({', '.join(TEMPLATES)})")

    def segments(self, messages: list[dict[str, str]]) -> list[Segment]:
        """Render a conversation (ending with an assistant turn) into labelled text segments.

        Raises:
            UserError: the tokenizer's template cannot be rendered incrementally.
        """
        if self.named is not None:
            return self.named.segments(messages, self.tokenizer.eos_token or "")
        out: list[Segment] = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self._render(messages[:i], True)
            full = self._render(messages[: i + 1], False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise UserError("the tokenizer's chat template renders earlier turns differently in later ones; "
                                f"pass a named --template ({', '.join(TEMPLATES)})")
            tail = full[len(prompt):]
            at = tail.find(m["content"])
            end_at = at + len(m["content"])
            if at < 0 or not tail[end_at:].lstrip(" ").startswith(self.eot_token):
                raise UserError("the tokenizer's chat template changes the reply text; pass a named --template "
                                f"({', '.join(TEMPLATES)})")
            eot_at = tail.index(self.eot_token, end_at)
            out.append(("prompt", prompt[len(done):] + tail[:at]))
            out += [("reply", tail[at:eot_at]), ("eot", self.eot_token)]
            rest = tail[eot_at + len(self.eot_token):]
            if rest:
                out.append(("trailer", rest))
            done = full
        return out

    @functools.cached_property
    def special(self) -> re.Pattern[str] | None:
        """What finds the tokenizer's special tokens (those ``encode`` reads as control tokens) in a text;
        ``None`` for a tokenizer without any."""
        return special_pattern(self.tokenizer)

    def parts(self, messages: list[dict[str, str]]) -> list[tuple[str, list[Part]]]:
        """:meth:`segments`, each split into the template's own text and the messages' contents
        (``(text, True)``), so contents can be tokenized as text; a segment is one part of the template's
        text when no content holds special-token text or the template changes contents (they cannot be
        located then)."""
        segments = self.segments(messages)
        whole = [(kind, [(text, False)]) for kind, text in segments]
        if self.special is None or not any(self.special.search(m["content"]) for m in messages):
            return whole
        framed = self.segments(marked(messages))
        if [kind for kind, _ in framed] != [kind for kind, _ in segments]:
            return whole
        out = []
        for (kind, text), (_, frame) in zip(segments, framed):
            split = content_parts(text, frame, messages)
            if split is None:
                return whole
            out.append((kind, split))
        return out

    def saved_jinja(self, system: str | None) -> str:
        """The chat template to save with the adapter's tokenizer: a named template gets ``system``
        (the persona) as its default system prompt, so chatting without a system turn uses the
        persona as trained; the tokenizer's own template (``auto``) is kept unchanged."""
        if self.named is None or not system:
            return self.jinja
        return dataclasses.replace(self.named, default_system=system).jinja(self.tokenizer.eos_token or "")

    def generation_header(self) -> str:
        """The text that opens an assistant turn (what ``add_generation_prompt`` appends)."""
        if self.named is not None:
            return self.named.generation_header(self.tokenizer.eos_token or "")
        msgs = [{"role": "user", "content": "Hi"}]
        with_gen, without = self._render(msgs, True), self._render(msgs, False)
        return with_gen[len(without):] if with_gen.startswith(without) else ""


def special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A pattern finding ``tokenizer``'s special tokens in a text (``<|im_end|>``, ``</s>``: the tokens that
    ``encode`` reads as control tokens unless told ``split_special_tokens``), longest first; ``None`` when it
    has none."""
    texts = {str(t) for t in tokenizer.all_special_tokens}
    texts |= {str(t.content) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    texts.discard("")
    if not texts:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)))
