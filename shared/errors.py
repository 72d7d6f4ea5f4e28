"""Error classes, named for what the caller should do next: give up, or retry later."""

from __future__ import annotations


class AppError(Exception):
    """Base class: carries a short machine-readable ``code`` beside the message."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class SettingError(AppError):
    """A setting is missing or malformed; the message names it and says how to fix it."""

    code = "SettingError"

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {name} {problem}")
        self.name = name


class PermanentError(AppError):
    """Retrying will not help: record the failure and move on."""

    code = "PermanentError"


class TransientError(AppError):
    """May succeed later (throttling, outage, timeout); ``retry_after`` is a hint in seconds."""

    code = "TransientError"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class InvalidImage(PermanentError):
    """The bytes are not an image the embedding service can take (format, size, sides)."""

    code = "InvalidImage"


class InvalidInput(PermanentError):
    """A caller's input (text, parameter) is malformed."""

    code = "InvalidInput"


class ProviderRejected(PermanentError):
    """The embedding service answered 400 for this input: the input itself is the problem."""

    code = "ProviderRejected"


class ProviderMisconfigured(PermanentError):
    """The embedding service refused us (401/403/404): endpoint, key or role is wrong.

    Retrying the same call will not help, but the input is not at fault either, so ingestion
    fails the invocation (the host retries and finally reports the blob) instead of recording
    the image as bad.
    """

    code = "ProviderMisconfigured"


class ProviderUnavailable(TransientError):
    """The embedding service throttled us or is down, and the retry budget is spent."""

    code = "ProviderUnavailable"


class ProviderResponseError(TransientError):
    """The embedding service answered something that breaks its contract (bad JSON, wrong size)."""

    code = "ProviderResponseError"


class DatabaseUnavailable(TransientError):
    """The database could not be reached or the connection broke."""

    code = "DatabaseUnavailable"


class ServiceRefused(PermanentError):
    """A backing service answered and refused the request itself, not its input: retrying unchanged will not
    help. Fix what the message names (a setting, a key, a role, a missing container), then run again."""

    code = "ServiceRefused"


class ResourceMissing(ServiceRefused):
    """What the settings name does not exist in the service (e.g. a container): create it or fix the name."""

    code = "ResourceMissing"


class AccessDenied(ServiceRefused):
    """The service refused our credentials or role (401/403): fix the key, the identity or its role."""

    code = "AccessDenied"
