"""The server layer's exception (bad serve settings, refused start-up) and the HTTP error every route
answers with: one JSON envelope, `{"error": {"message", "type", "param", "code", "fix", ...}}`, the shape
OpenAI clients parse, so both the agent routes and the OpenAI-compatible route fail the same way."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.exceptions import HTTPException

from terrazzo.errors import TerrazzoError


class ServeError(TerrazzoError):
    """`terrazzo serve` cannot start as asked: the message names the setting and the fix."""

    def __init__(self, message: str, *, fix: str = "") -> None:
        super().__init__(message + (f" — fix: {fix}" if fix else ""))
        self.fix = fix


class ApiError(HTTPException):
    """An HTTP error answer, rendered by the app's handler. An HTTPException, so FastAPI passes it through
    untouched even when it is raised while the body is read (the body-size limit)."""

    def __init__(self, status: int, message: str, *, type: str, code: str | None = None, fix: str = "",
                 param: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status, message, headers)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.fix, self.param, self.headers, self.extra = fix, param, headers or {}, extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.fix:
            err["fix"] = self.fix
        return {"error": err | self.extra}


# What a client must not see of the server's insides: worker tracebacks, file paths, internal URLs.
_TRACE_TAIL = re.compile(r"\s*(— fix: )?see the worker traceback:.*", re.S)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.S)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\]]+")
_PATH = re.compile(r"(?<![\w.])(?:~|\.{1,2})?(?:/[\w.@+~-]+){2,}/?")
MAX_PUBLIC_CHARS = 400


def public_message(text: str) -> str:
    """`text` without tracebacks, file paths or URLs, on one line and bounded, for an error body."""
    text = _TRACEBACK.sub("", _TRACE_TAIL.sub("", text))
    text = _PATH.sub("<path>", _URL.sub("<url>", text))
    text = " ".join(text.split())
    return text if len(text) <= MAX_PUBLIC_CHARS else text[: MAX_PUBLIC_CHARS - 1] + "…"


def correlation_id() -> str:
    """Ties an error body to the full trace in the server log."""
    return uuid.uuid4().hex[:16]
