"""Entry point the Dify plugin daemon runs (``python -m main``). Never print() here: in local
mode stdout is the daemon's JSON-lines channel."""

from dify_plugin import DifyPluginEnv, Plugin

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=300))

if __name__ == "__main__":
    plugin.run()
