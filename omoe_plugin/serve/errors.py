"""The one error type of omoe-serve's request handling: an HTTP status and a message the
client gets as {"error": message}, so every refusal reads the same whatever raised it."""

from typing import Iterable, Optional


class Problem(Exception):
    """A request that is answered with `status` and {"error": message} (and `headers`, such
    as Retry-After on a 503)."""

    def __init__(self, status: int, message: str,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def bad_request(message: str) -> Problem:
    """400: the request is not one this model can answer."""
    return Problem(400, message)


def quoted(names: Iterable[str]) -> str:
    """Names as a message lists them: 'text', 'text_pair'."""
    return ", ".join(f"'{name}'" for name in names)
