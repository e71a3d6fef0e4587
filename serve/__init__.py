"""``steam-train serve``: the persona GGUF behind an OpenAI-compatible API.

The model is llama-cpp-python's ``Llama``, loaded from its own ``ModelSettings``; requests are its
pydantic request models and its ``create_chat_completion`` / ``create_completion``. Around them we
keep what the library's FastAPI app does not do safely (:mod:`serve.routes` says why): every llama
call on one dedicated thread (:mod:`serve.engine`), every client value checked before it reaches
llama.cpp (:mod:`serve.validate`, :mod:`serve.grammar`), and what Dify and the OpenAI SDK need
(message normalisation, persona, stream usage, constant-time auth, ``/health``, OpenAI-shaped 4xx).
:mod:`serve.cli` is the command.
"""
