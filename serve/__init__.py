"""``steam-train serve``: the persona GGUF behind an OpenAI-compatible API (llama-cpp-python's server).

We do not write a server: :func:`serve.app.build_app` creates ``llama_cpp.server``'s FastAPI app
in-process from its own ``ServerSettings`` / ``ModelSettings`` and wraps it with what Dify and the
OpenAI SDK need (message normalisation, persona, stream usage, constant-time auth, ``/health``,
OpenAI-shaped 4xx errors). :mod:`serve.cli` is the command.
"""
