"""The Dify plugins' sources, shipped as data and read through :func:`steam_persona.resources.shipped`
(``steam-train plugin package`` builds the ``.difypkg`` files from them). The host imports one file
as code: ``steam_persona.plugin.common.server_client``, the HTTP client both plugins are packaged with.
Beside them, the host-side code: :mod:`.package` (build and check ``.difypkg`` files), :mod:`.sign`
(keys and signatures) and :mod:`.call` (run a packaged plugin's function from the host)."""
