"""Speech nodes. With an OpenAI-compatible audio endpoint configured they call it; otherwise they are a
clearly labelled text pass-through (input text stands for the transcript / the spoken answer)."""

from __future__ import annotations

from pathlib import Path

from terrazzo.runtime.failures import ExecutionError

PASS_THROUGH = "text pass-through (no audio endpoint configured)"


def transcribe(text_or_path: str, endpoint: str | None, model: str, timeout_s: float) -> tuple[str, str]:
    """Returns (transcript, mode)."""
    if not endpoint:
        return text_or_path, PASS_THROUGH
    import httpx

    path = Path(text_or_path)
    if not path.is_file():
        raise ExecutionError(f"STT input '{text_or_path[:60]}' is not an audio file",
                             fix="pass an audio file path as --input when stt_endpoint is set")
    with path.open("rb") as f:
        resp = httpx.post(f"{endpoint.rstrip('/')}/audio/transcriptions", files={"file": (path.name, f)},
                          data={"model": model}, timeout=timeout_s)
    if resp.status_code != 200:
        raise ExecutionError(f"STT endpoint answered HTTP {resp.status_code}: {resp.text[:200]}",
                             fix="check audio.stt_endpoint and stt_model in the run config")
    return resp.json().get("text", ""), f"stt via {endpoint}"


def synthesize(text: str, endpoint: str | None, model: str, voice: str, out_dir: Path, name: str,
               timeout_s: float, audio_format: str = "mp3") -> tuple[str, str]:
    """Returns (text or path of the audio file written, mode). The file is named by request and node,
    so a retried call overwrites it rather than adding another."""
    if not endpoint:
        return text, PASS_THROUGH
    import httpx

    resp = httpx.post(f"{endpoint.rstrip('/')}/audio/speech", timeout=timeout_s,
                      json={"model": model, "voice": voice, "input": text, "response_format": audio_format})
    if resp.status_code != 200:
        raise ExecutionError(f"TTS endpoint answered HTTP {resp.status_code}: {resp.text[:200]}",
                             fix="check audio.tts_endpoint, tts_model and tts_format in the run config")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.{audio_format}"
    path.write_bytes(resp.content)
    return str(path), f"tts via {endpoint}"
