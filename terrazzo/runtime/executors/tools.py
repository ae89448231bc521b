"""Tools: Python callables ('pkg.module:fn' or 'path/file.py:fn') and HTTP endpoints via httpx.

HTTP calls have a timeout, bounded retries with backoff on connect errors, 5xx and 429 (honouring
Retry-After up to the timeout), and a response-size limit checked while streaming, so a misbehaving
endpoint can neither hang a worker past its budget nor fill its memory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import time
from pathlib import Path
from typing import Any

from terrazzo.runtime.failures import ExecutionError

_FUNCS: dict[str, Any] = {}


def resolve_callable(spec: str, base_dir: str = ".") -> Any:
    """Import 'pkg.module:fn' or 'relative/or/absolute/file.py:fn' once per process."""
    if spec in _FUNCS:
        return _FUNCS[spec]
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not attr:
        raise ExecutionError(f"python tool '{spec}' is not 'module:callable'", fix="write e.g. mypkg.tools:search")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name) if Path(mod_name).is_absolute() else Path(base_dir) / mod_name
            mod_id = "tz_tool_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            mspec = importlib.util.spec_from_file_location(mod_id, path)
            if mspec is None or mspec.loader is None or not path.exists():
                raise FileNotFoundError(path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        fn = getattr(module, attr)
    except (ImportError, FileNotFoundError, AttributeError) as exc:
        raise ExecutionError(f"cannot load python tool '{spec}': {exc}",
                             fix="check the module path and function name") from None
    if not callable(fn):
        raise ExecutionError(f"python tool '{spec}' is not callable", fix="point at a function")
    _FUNCS[spec] = fn
    return fn


def call_python(spec: str, base_dir: str, query: str, args: dict[str, Any]) -> str:
    """Call fn(query, **args) (args it does not accept are dropped); non-str results become JSON."""
    fn = resolve_callable(spec, base_dir)
    params = inspect.signature(fn).parameters
    args = {k: v for k, v in args.items() if k != "query"}  # the query is the first positional argument
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        args = {k: v for k, v in args.items() if k in params}
    out = fn(query, **args)
    return out if isinstance(out, str) else json.dumps(out, default=str)


# Answers that say the request was not processed, so even a non-idempotent call may be sent again.
_NOT_PROCESSED = {429, 503}


def call_http(url: str, query: str, args: dict[str, Any], *, timeout_s: float, retries: int,
              max_response_bytes: int, method: str = "POST", idempotent: bool = False) -> str:
    """POST {"query", "arguments"} as JSON (GET: as URL parameters); returns the body text. Raises
    ExecutionError when out of tries. A non-idempotent call is sent again only when it surely was not
    processed (connection refused, 429, 503); an idempotent one also after timeouts and other 5xx."""
    import httpx

    body = {"query": query, "arguments": args}
    send: dict[str, Any] = ({"params": {"query": query, "arguments": json.dumps(args)}} if method == "GET"
                            else {"json": body})
    last = ""
    deadline = time.monotonic() + timeout_s * (retries + 1)
    with httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False) as client:
        for attempt in range(retries + 1):
            wait_s = min(0.05 * 2**attempt, 1.0)
            try:
                with client.stream(method, url, **send) as resp:
                    if resp.status_code in _NOT_PROCESSED or (resp.status_code >= 500 and idempotent):
                        last = f"HTTP {resp.status_code}"
                        retry_after = resp.headers.get("retry-after", "")
                        if retry_after.replace(".", "", 1).isdigit():
                            wait_s = min(float(retry_after), timeout_s)
                    elif resp.status_code >= 500:
                        raise ExecutionError(f"tool endpoint {url} answered HTTP {resp.status_code}; not sent again "
                                             "because the tool is not declared idempotent (it may have acted)",
                                             fix="set idempotent: true for the tool in the run config if a "
                                                 "second call is safe")
                    elif resp.status_code >= 400:
                        raise ExecutionError(f"tool endpoint {url} answered HTTP {resp.status_code}",
                                             fix="check the endpoint URL and request format")
                    else:
                        chunks, size = [], 0
                        for chunk in resp.iter_bytes():
                            size += len(chunk)
                            if size > max_response_bytes:
                                raise ExecutionError(f"tool response from {url} exceeds {max_response_bytes} bytes",
                                                     fix="raise max_response_bytes for this tool or page results")
                            chunks.append(chunk)
                        return b"".join(chunks).decode(resp.encoding or "utf-8", errors="replace")
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the server
                last = f"{type(exc).__name__}: {exc}"
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"timed out after {timeout_s:g} s" if isinstance(exc, httpx.TimeoutException) else \
                    f"{type(exc).__name__}: {exc}"
                if not idempotent:
                    raise ExecutionError(f"tool endpoint {url} failed: {last}; not sent again because the tool is "
                                         "not declared idempotent (the request may have been processed)",
                                         fix="set idempotent: true for the tool in the run config if a second call "
                                             "is safe, or raise its timeout_s") from None
            if attempt < retries and time.monotonic() + wait_s < deadline:
                time.sleep(wait_s)
    raise ExecutionError(f"tool endpoint {url} failed after {retries + 1} tries: {last}",
                         fix="check the endpoint is up, or raise timeout_s/retries in the run config's tools:")
