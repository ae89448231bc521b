"""The server layer's exception (bad serve settings, refused start-up) and the HTTP error every route
answers with: one JSON envelope, `{"error": {"message", "type", "param", "code", "fix", ...}}`, the shape
OpenAI clients parse, so both the agent routes and the OpenAI-compatible route fail the same way."""

from __future__ import annotations

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
