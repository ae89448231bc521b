"""Request and response bodies of the API (pydantic), so validation errors name the field and the
OpenAPI document describes every route exactly."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REQUEST_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    fix: str | None = None
    fields: list[dict[str, str]] | None = None
    retry_after_s: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class InvokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, description="the user's request text")
    session: str | None = Field(default=None, max_length=128, pattern=REQUEST_ID,
                                description="conversation key for the agent's memory nodes")
    request_id: str | None = Field(default=None, pattern=REQUEST_ID,
                                   description="client-chosen id, echoed back; one request per id at a time")
    stream: bool = Field(default=False, description="answer with Server-Sent Events (also: Accept: text/event-stream)")
    timeout_s: float | None = Field(default=None, ge=1.0, description="deadline for the whole request, seconds")


class OpRecord(BaseModel):
    op: str
    pool: str
    device: str
    latency_s: float
    exec_s: float | None = None
    tokens: int = 0
    worker: str = ""


class InvokeResponse(BaseModel):
    request_id: str
    agent: str
    ok: bool
    text: str
    e2e_s: float
    path: list[str]
    decisions: list[dict[str, Any]]
    ops: list[OpRecord]
    random_weights: bool = Field(default=False, description="true when the agent's LLM is a random-weight "
                                 "checkpoint (terrazzo models make-tiny): the text is gibberish")


# --- OpenAI-compatible chat completions -------------------------------------------------------------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send more (temperature, user, ...): decoding here is greedy

    model: str = Field(min_length=1, description="the agent's name (GET /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "terrazzo"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: str
    agents: dict[str, str] = {}
    upstream_down: dict[str, list[str]] | None = None  # per agent: models whose server does not answer
