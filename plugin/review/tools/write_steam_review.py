"""Dify tool ``write_steam_review``: a Steam review in the persona's voice.

The work is in :mod:`tools.review_client` (no ``dify_plugin`` import, so the demo reuses it); this
class only maps Dify's tool parameters and turns the result into a text and a JSON message.
"""

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.review_client import write_review


class WriteSteamReviewTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        """Yield the review text, then ``{game, verdict, review, model, usage}`` as JSON, then the
        ``game``, ``verdict`` (``""`` when unknown) and ``review`` variables of the YAML's ``output_schema``.

        Raises:
            ReviewError: one-line message (missing game name, server down, rejected key…); Dify
                shows it on the tool node.
        """
        p = tool_parameters
        result = write_review(
            self.runtime.credentials, p.get("game_name"), tags=p.get("tags"), verdict=p.get("verdict"),
            language=p.get("language"), length=p.get("length"), extra_instructions=p.get("extra_instructions"),
            max_tokens=p.get("max_tokens"))
        yield self.create_text_message(result["review"])
        yield self.create_json_message(result)
        for name in ("game", "verdict", "review"):
            yield self.create_variable_message(name, result.get(name, ""))
