"""CachedToken: one scope's Microsoft Entra token, cached, refreshed early, failures made actionable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError

from shared.auth import COGNITIVE_SERVICES_SCOPE, POSTGRES_SCOPE, CachedToken, TokenCredentialLike
from shared.errors import SettingError


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCredential:
    """Hands out token-1, token-2, ... each valid for ``lifetime`` seconds; counts calls and scopes."""

    def __init__(self, clock: Callable[[], float], lifetime: float = 3600, fail: BaseException | None = None) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.fail = fail
        self.scopes: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.scopes)

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        with self.lock:
            self.scopes.append(scopes)
            if self.fail is not None:
                raise self.fail
            return AccessToken(f"token-{len(self.scopes)}", int(self.clock() + self.lifetime))


def test_scopes_are_the_documented_ones() -> None:
    assert COGNITIVE_SERVICES_SCOPE == "https://cognitiveservices.azure.com/.default"
    assert POSTGRES_SCOPE == "https://ossrdbms-aad.database.windows.net/.default"


def test_token_is_cached_until_the_refresh_margin() -> None:
    clock = Clock()
    cred = FakeCredential(clock, lifetime=3600)
    token = CachedToken(cred, COGNITIVE_SERVICES_SCOPE, clock=clock)

    assert token.get() == "token-1"
    assert cred.scopes == [(COGNITIVE_SERVICES_SCOPE,)]
    clock.now += 3600 - 301  # 301 s left: more than the 5-minute margin
    assert token.get() == "token-1"
    assert cred.calls == 1
    clock.now += 2  # 299 s left: refresh
    assert token.get() == "token-2"
    assert cred.calls == 2


def test_refresh_margin_is_configurable() -> None:
    clock = Clock()
    cred = FakeCredential(clock, lifetime=3600)
    token = CachedToken(cred, POSTGRES_SCOPE, refresh_margin=60, clock=clock)
    token.get()
    clock.now += 3600 - 61
    assert token.get() == "token-1"
    clock.now += 2
    assert token.get() == "token-2"
    assert cred.scopes[-1] == (POSTGRES_SCOPE,)


def test_invalidate_forces_a_new_token() -> None:
    clock = Clock()
    cred = FakeCredential(clock)
    token = CachedToken(cred, COGNITIVE_SERVICES_SCOPE, clock=clock)
    assert token.get() == "token-1"
    token.invalidate()
    assert token.get() == "token-2"


def test_concurrent_callers_share_one_fetch() -> None:
    clock = Clock()
    cred = FakeCredential(clock)
    slow_get = cred.get_token

    def get_token(*scopes: str, **kwargs: object) -> AccessToken:
        time.sleep(0.05)  # every thread arrives while the first fetch is in flight
        return slow_get(*scopes, **kwargs)

    cred.get_token = get_token  # type: ignore[method-assign]
    token = CachedToken(cred, COGNITIVE_SERVICES_SCOPE, clock=clock)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(token.get())) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["token-1"] * 16
    assert cred.calls == 1


def test_no_identity_is_a_setting_error_naming_vision_key_and_the_fix() -> None:
    clock = Clock()
    cred = FakeCredential(clock, fail=CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token"))
    token = CachedToken(cred, COGNITIVE_SERVICES_SCOPE, clock=clock)
    with pytest.raises(SettingError) as info:
        token.get()
    message = str(info.value)
    assert info.value.name == "VISION_KEY"
    assert COGNITIVE_SERVICES_SCOPE in message
    assert "DefaultAzureCredential failed to retrieve a token" in message
    assert "Cognitive Services User" in message and "set VISION_KEY" in message
    assert "cognitiveservices.azure.com" in message  # the custom-subdomain requirement


def test_database_scope_failure_names_database_auth() -> None:
    clock = Clock()
    cred = FakeCredential(clock, fail=ClientAuthenticationError("ManagedIdentityCredential: no identity"))
    with pytest.raises(SettingError) as info:
        CachedToken(cred, POSTGRES_SCOPE, clock=clock).get()
    assert info.value.name == "DATABASE_AUTH"
    assert "DATABASE_AUTH=password" in str(info.value)
    assert "no identity" in str(info.value)


def test_setting_and_advice_can_be_overridden() -> None:
    cred = FakeCredential(time.time, fail=ClientAuthenticationError("nope"))
    token = CachedToken(cred, "api://other/.default", setting="OTHER_AUTH", advice="do the thing")
    with pytest.raises(SettingError, match=r"setting OTHER_AUTH .*api://other/\.default.*nope.*do the thing"):
        token.get()


def test_multiline_credential_errors_become_one_line() -> None:
    cred = FakeCredential(time.time, fail=ClientAuthenticationError("first line\n  EnvironmentCredential: x\n  more"))
    with pytest.raises(SettingError) as info:
        CachedToken(cred, COGNITIVE_SERVICES_SCOPE).get()
    assert "\n" not in str(info.value)
    assert "first line EnvironmentCredential: x more" in str(info.value)


def test_failed_early_refresh_keeps_using_a_still_valid_token() -> None:
    clock = Clock()
    cred = FakeCredential(clock, lifetime=3600)
    token = CachedToken(cred, COGNITIVE_SERVICES_SCOPE, clock=clock)
    assert token.get() == "token-1"
    cred.fail = ClientAuthenticationError("token endpoint unreachable")
    clock.now += 3600 - 100  # inside the margin, not yet expired
    assert token.get() == "token-1"
    clock.now += 101  # expired: now the failure surfaces
    with pytest.raises(SettingError, match="token endpoint unreachable"):
        token.get()
    cred.fail = None
    assert token.get().startswith("token-")


def test_unexpected_exceptions_are_not_disguised() -> None:
    cred = FakeCredential(time.time, fail=RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):
        CachedToken(cred, COGNITIVE_SERVICES_SCOPE).get()


def test_azure_identity_credentials_satisfy_the_protocol() -> None:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    assert isinstance(FakeCredential(time.time), TokenCredentialLike)
    assert isinstance(DefaultAzureCredential(), TokenCredentialLike)
    assert isinstance(ManagedIdentityCredential(), TokenCredentialLike)
    assert not isinstance(object(), TokenCredentialLike)
