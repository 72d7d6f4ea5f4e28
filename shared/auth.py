"""Microsoft Entra tokens for one scope, cached and refreshed before they expire.

The Vision client (when no ``VISION_KEY`` is set) and the database layer (``DATABASE_AUTH=entra``)
each hold one :class:`CachedToken`. The credential is passed in (``DefaultAzureCredential`` at the
edge, a fake in tests), never created here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

from azure.core.exceptions import AzureError

from .errors import SettingError

log = logging.getLogger(__name__)

COGNITIVE_SERVICES_SCOPE: Final = "https://cognitiveservices.azure.com/.default"
POSTGRES_SCOPE: Final = "https://ossrdbms-aad.database.windows.net/.default"

DEFAULT_REFRESH_MARGIN_SECONDS: Final = 300.0

# For each scope: the setting that made a token necessary, why, and what the operator can do.
_GUIDANCE: Final[dict[str, tuple[str, str, str]]] = {
    COGNITIVE_SERVICES_SCOPE: (
        "VISION_KEY",
        "is not set, so a Microsoft Entra token is needed",
        "set VISION_KEY, or give the app an identity (a managed identity in Azure, `az login` locally) "
        "with the Cognitive Services User role on the Vision resource, and use the resource's "
        "custom-subdomain endpoint https://<name>.cognitiveservices.azure.com/",
    ),
    POSTGRES_SCOPE: (
        "DATABASE_AUTH",
        "is 'entra', so a Microsoft Entra token is needed",
        "give the app an identity (a managed identity in Azure, `az login` locally) that is a Microsoft "
        "Entra administrator or role of the PostgreSQL server, or set DATABASE_AUTH=password",
    ),
}
_OTHER_SCOPE: Final = (
    "credential",
    "needs a Microsoft Entra token",
    "give the app an identity that may use this scope",
)


class AccessTokenLike(Protocol):
    """What ``get_token`` returns: azure.core's ``AccessToken`` (token, expires_on in Unix seconds)."""

    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


@runtime_checkable
class TokenCredentialLike(Protocol):
    """Any azure-identity credential: ``DefaultAzureCredential``, ``ManagedIdentityCredential``, a fake."""

    def get_token(self, *scopes: str) -> AccessTokenLike: ...


class CachedToken:
    """A thread-safe cache of one scope's token; ``get()`` refreshes it ``refresh_margin`` seconds early."""

    def __init__(
        self,
        credential: TokenCredentialLike,
        scope: str,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN_SECONDS,
        setting: str | None = None,
        advice: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self.scope = scope
        self._margin = refresh_margin
        default_setting, self._why, default_advice = _GUIDANCE.get(scope, _OTHER_SCOPE)
        self._setting = setting or default_setting
        self._advice = advice or default_advice
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessTokenLike | None = None

    def get(self) -> str:
        """The cached token, fetched anew when fewer than ``refresh_margin`` seconds remain."""
        token = self._token
        if token is not None and token.expires_on - self._clock() > self._margin:
            return token.token
        with self._lock:
            token = self._token  # another thread may have refreshed while we waited
            if token is not None and token.expires_on - self._clock() > self._margin:
                return token.token
            try:
                fresh = self._credential.get_token(self.scope)
            except (AzureError, ValueError) as exc:
                if token is not None and token.expires_on > self._clock():
                    # Early refresh failed but the old token still works: use it, try again next call.
                    log.warning("refreshing the Microsoft Entra token for %s failed; using the current one", self.scope)
                    return token.token
                raise SettingError(
                    self._setting,
                    f"{self._why}, but none could be got for {self.scope} ({_reason(exc)}); {self._advice}",
                ) from exc
            self._token = fresh
            return fresh.token

    def invalidate(self) -> None:
        """Forget the cached token so the next ``get()`` fetches a new one (e.g. after a 401)."""
        with self._lock:
            self._token = None


def _reason(exc: BaseException) -> str:
    # azure-identity's messages span lines (one per credential tried); one line reads better in logs.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."
