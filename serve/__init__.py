"""``steam-train serve``: the persona GGUF behind an OpenAI-compatible API.

The model is llama-cpp-python's ``Llama``, loaded from its own ``ModelSettings``; requests are its
pydantic request models and its ``create_chat_completion`` / ``create_completion``. Around them we
keep what the library's FastAPI app does not do safely (:mod:`steam_persona.serve.routes` says why): every llama
call on one dedicated thread (:mod:`steam_persona.serve.engine`), every client value checked before it reaches
llama.cpp (:mod:`steam_persona.serve.validate`, :mod:`steam_persona.serve.grammar`), and what Dify and the OpenAI SDK need
(message normalisation, persona, stream usage, constant-time auth, ``/health``, OpenAI-shaped 4xx).
:mod:`steam_persona.serve.cli` is the command.
"""
