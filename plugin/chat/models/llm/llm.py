"""The chat model: the SDK's OpenAI-compatible LLM, adapted to the persona's server.

HTTP, SSE parsing and chunking are the SDK's (``OAICompatLargeLanguageModel``). What we add:

* ``stream_options.include_usage`` on streamed requests (the SDK does not ask for it), and, for
  servers that ignore it (llama-cpp-python 0.3.36), usage counted with the server's tokenizer over
  the whole conversation instead of the SDK's GPT-2 estimate of the first message (which needs
  internet access to fetch the GPT-2 vocabulary);
* list-of-text-parts contents flattened to strings (some chat templates crash on lists);
* the optional persona system prompt when a conversation has none;
* errors mapped to Dify's invoke errors: refused/timeout → server unavailable, 401 →
  authorization, 400 (e.g. context overflow) → bad request with the server's message;
* credential validation bounded in time, with the Docker networking hint for localhost URLs;
* ``get_num_tokens`` through the server's ``/extras/tokenize``, falling back to an estimate.

The SDK base is imported as a module (not as a name) so that this module holds exactly one
``LargeLanguageModel`` subclass. Never print(): stdout is the daemon's channel; log instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Mapping
from typing import Any

import requests
from dify_plugin.config.logger_format import plugin_logger_handler
from dify_plugin.entities import I18nObject
from dify_plugin.entities.model import AIModelEntity, ParameterRule, ParameterType
from dify_plugin.entities.model.llm import LLMResult, LLMResultChunk
from dify_plugin.entities.model.message import (AssistantPromptMessage, PromptMessage, PromptMessageTool,
                                                SystemPromptMessage)
from dify_plugin.errors.model import (CredentialsValidateFailedError, InvokeAuthorizationError,
                                      InvokeBadRequestError, InvokeError, InvokeServerUnavailableError)
from dify_plugin.interfaces.model.openai_compatible import llm as oai_llm

import persona
import server_client

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)
logger.addHandler(plugin_logger_handler)

#: The SDK reports a non-200 answer as InvokeError("API request failed with status code N: BODY").
_SDK_STATUS = re.compile(r"status code (\d{3}):\s*(.*)", re.S)
_ERROR_CLASS = {"auth": InvokeAuthorizationError, "bad_request": InvokeBadRequestError,
                "unavailable": InvokeServerUnavailableError, "server": InvokeServerUnavailableError}


class SteamPersonaLargeLanguageModel(oai_llm.OAICompatLargeLanguageModel):
    """Dify LLM for the persona's OpenAI-compatible server (credentials: see provider YAML)."""

    # -- credentials ---------------------------------------------------------------------------
    @staticmethod
    def _credentials(credentials: Mapping, check_url: bool = True) -> dict:
        """Our form's credentials in the SDK's vocabulary (chat mode, no tool calls).

        Raises:
            server_client.ServerError: ``check_url`` and the endpoint URL is empty or not http(s).
        """
        c = dict(credentials)
        url = c.get("endpoint_url") or server_client.DEFAULT_ENDPOINT
        try:
            c["endpoint_url"] = server_client.normalize_endpoint(url)
        except server_client.ServerError:
            if check_url:
                raise
            c["endpoint_url"] = str(url)
        c["mode"] = "chat"
        c.setdefault("function_calling_type", "no_call")
        c.setdefault("stream_function_calling", "not_supported")
        if not str(c.get("endpoint_model_name") or "").strip():
            c.pop("endpoint_model_name", None)  # the SDK would send model "" instead of the Dify name
        return c

    @staticmethod
    def _with_persona(credentials: Mapping, prompt_messages: list[PromptMessage]) -> list[PromptMessage]:
        """Prepend :data:`persona.DEFAULT_SYSTEM` when the switch is on and no system turn exists."""
        if not server_client.is_on(credentials.get("persona_system_prompt")):
            return prompt_messages
        if any(isinstance(m, SystemPromptMessage) for m in prompt_messages):
            return prompt_messages
        return [SystemPromptMessage(content=persona.DEFAULT_SYSTEM), *prompt_messages]

    def validate_credentials(self, model: str, credentials: dict) -> None:
        """Check reachability, key and a one-token chat within bounded time
        (:data:`server_client.CONNECT_TIMEOUT` + :data:`server_client.VALIDATE_READ_TIMEOUT` per call).

        Raises:
            CredentialsValidateFailedError: one line; for localhost URLs it explains Docker networking.
        """
        try:
            c = self._credentials(credentials)
            server_client.validate(c["endpoint_url"], c.get("api_key"), c.get("endpoint_model_name") or model)
        except server_client.ServerError as e:
            raise CredentialsValidateFailedError(str(e)) from None

    # -- schema --------------------------------------------------------------------------------
    def get_customizable_model_schema(self, model: str, credentials: Mapping) -> AIModelEntity:
        """The SDK's rules (temperature, top_p, presence/frequency penalty, max_tokens) + seed, stop,
        response_format (the SDK sends ``{"type": value}``; the server constrains ``json_object``
        replies with llama.cpp's JSON grammar)."""
        entity = super().get_customizable_model_schema(model, self._credentials(credentials, check_url=False))
        entity.parameter_rules += [
            ParameterRule(name="seed", type=ParameterType.INT, required=False, min=0,
                          label=I18nObject(en_US="Seed", zh_Hans="随机种子"),
                          help=I18nObject(en_US="Same seed + same settings = same reply (llama.cpp sampling).",
                                          zh_Hans="相同的种子和参数会得到相同的回复。")),
            ParameterRule(name="stop", type=ParameterType.STRING, required=False,
                          label=I18nObject(en_US="Stop sequences", zh_Hans="停止词"),
                          help=I18nObject(en_US="Text that ends the reply; several: one per line.",
                                          zh_Hans="遇到即停止生成的文本；多个请每行一个。")),
            ParameterRule(name="response_format", type=ParameterType.STRING, required=False,
                          options=["text", "json_object"],
                          label=I18nObject(en_US="Response format", zh_Hans="回复格式"),
                          help=I18nObject(en_US="json_object: the reply is one JSON object (grammar-constrained).",
                                          zh_Hans="json_object：回复为一个 JSON 对象（语法约束生成）。")),
        ]
        return entity

    # -- invoke --------------------------------------------------------------------------------
    def _invoke(self, model: str, credentials: dict, prompt_messages: list[PromptMessage], model_parameters: dict,
                tools: list[PromptMessageTool] | None = None, stop: list[str] | None = None, stream: bool = True,
                user: str | None = None) -> LLMResult | Generator:
        try:
            c = self._credentials(credentials)
        except server_client.ServerError as e:
            raise InvokeBadRequestError(str(e)) from None
        params = dict(model_parameters)
        extra_stop = params.pop("stop", None)
        if isinstance(extra_stop, str):
            extra_stop = [s for s in extra_stop.splitlines() if s]
        stop = [*(stop or []), *(extra_stop or [])] or None
        if stream and server_client.is_on(c.get("stream_include_usage", "enabled")):
            params["stream_options"] = {"include_usage": True}
        messages = self._with_persona(c, prompt_messages)
        try:
            result = super()._invoke(model, c, messages, params, tools, stop, stream, user)
        except Exception as e:  # noqa: BLE001 - every failure becomes one of Dify's invoke errors
            raise self._map_error(e, c["endpoint_url"]) from None
        return self._mapped_stream(result, c["endpoint_url"]) if isinstance(result, Generator) else result

    def _mapped_stream(self, chunks: Generator, url: str) -> Generator[LLMResultChunk, None, None]:
        """Re-raise errors that happen mid-stream (server killed, read timeout) as invoke errors."""
        try:
            yield from chunks
        except InvokeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._map_error(e, url) from None

    @staticmethod
    def _map_error(error: Exception, url: str) -> InvokeError:
        """SDK/requests failures → InvokeServerUnavailableError / InvokeAuthorizationError /
        InvokeBadRequestError with a one-line description (server's own message for HTTP 4xx)."""
        if isinstance(error, InvokeError) and type(error) is not InvokeError:
            return error
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            what = "did not answer in time" if isinstance(error, requests.exceptions.Timeout) else "cannot be reached"
            return InvokeServerUnavailableError(server_client.unavailable_message(url, what))
        match = _SDK_STATUS.search(str(error)) if isinstance(error, InvokeError) else None
        if match:
            err = server_client.error_for_status(int(match.group(1)), match.group(2), url)
            return _ERROR_CLASS[err.kind](str(err))
        if isinstance(error, InvokeError):
            return error
        return InvokeError(f"{type(error).__name__}: {error}")

    def _transform_invoke_error(self, error: Exception) -> InvokeError:
        """Keep our already-mapped invoke errors as they are (the SDK would rewrap them)."""
        if isinstance(error, InvokeError) and type(error) is not InvokeError:
            return error
        return super()._transform_invoke_error(error)

    def _convert_prompt_message_to_dict(self, message: PromptMessage, credentials: dict | None = None) -> dict:
        """The SDK's conversion, with text-only part lists flattened to one string."""
        d = super()._convert_prompt_message_to_dict(message, credentials)
        if "content" in d:
            d["content"] = server_client.flatten_content(d["content"])
        return d

    # -- token counting ------------------------------------------------------------------------
    def _count_messages(self, credentials: dict, prompt_messages: list[PromptMessage]) -> int:
        """Prompt tokens of a conversation: counted by ``steam-train serve`` itself (its template, and
        the persona it adds when the conversation has no system turn), else ChatML rendering counted
        by the server's tokenizer, else :func:`server_client.estimate_tokens`."""
        messages = [self._convert_prompt_message_to_dict(m, credentials) for m in prompt_messages]
        n = server_client.count_chat_tokens(credentials["endpoint_url"], credentials.get("api_key"), messages,
                                            model=credentials.get("endpoint_model_name"))
        if n is not None:
            return n
        text = server_client.render_chatml(messages)
        n = server_client.count_tokens(credentials["endpoint_url"], credentials.get("api_key"), text,
                                       model=credentials.get("endpoint_model_name"))
        if n is None:
            logger.info("tokenize endpoint unavailable at %s; estimating tokens", credentials["endpoint_url"])
            return server_client.estimate_tokens(text)
        return n

    def get_num_tokens(self, model: str, credentials: dict, prompt_messages: list[PromptMessage],
                       tools: list[PromptMessageTool] | None = None) -> int:
        """Tokens of the prompt as the server will see it (persona system turn included when the
        switch adds it). Uses ``POST /extras/tokenize`` (llama_cpp.server); falls back to an estimate."""
        c = self._credentials(credentials, check_url=False)
        return self._count_messages(c, self._with_persona(c, prompt_messages))

    def _create_final_llm_result_chunk(self, index: int, message: AssistantPromptMessage, finish_reason: str,
                                       usage: dict, model: str, prompt_messages: list[PromptMessage],
                                       credentials: dict, full_content: str) -> LLMResultChunk:
        """The SDK's last chunk, with usage counted by the server's tokenizer when the stream had none."""
        usage = dict(usage or {})
        if usage.get("prompt_tokens") is None:
            usage["prompt_tokens"] = self._count_messages(credentials, prompt_messages)
        if usage.get("completion_tokens") is None:
            n = server_client.count_tokens(credentials["endpoint_url"], credentials.get("api_key"), full_content,
                                           model=credentials.get("endpoint_model_name"))
            usage["completion_tokens"] = n if n is not None else server_client.estimate_tokens(full_content)
        return super()._create_final_llm_result_chunk(index, message, finish_reason, usage, model, prompt_messages,
                                                      credentials, full_content)
