"""Model provider of the chat plugin. Customizable-model only: each model's credentials are
checked by :meth:`models.llm.llm.SteamPersonaLargeLanguageModel.validate_credentials`."""

from collections.abc import Mapping

from dify_plugin import ModelProvider


class SteamPersonaProvider(ModelProvider):
    def validate_provider_credentials(self, credentials: Mapping) -> None:
        """No provider-level credentials: the URL, key and model live with each model."""
