"""Tool provider of the review plugin: checks the server credentials with ``GET /v1/models``."""

from typing import Any

from dify_plugin import ToolProvider
from dify_plugin.errors.tool import ToolProviderCredentialValidationError

from tools.review_client import ReviewError, check_credentials


class SteamReviewProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        """Raises ToolProviderCredentialValidationError (one line) when the server is unreachable
        within the bounded timeouts or rejects the API key."""
        try:
            check_credentials(credentials)
        except ReviewError as e:
            raise ToolProviderCredentialValidationError(str(e)) from None
