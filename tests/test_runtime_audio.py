"""STT/TTS nodes against OpenAI-compatible audio endpoints served for real on loopback. The server is
terrazzo's labelled TEST audio server (an FSK codec, not speech), so the client path — multipart upload
to /audio/transcriptions, JSON to /audio/speech, the WAV written to state_dir — runs end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

uvicorn = pytest.importorskip("uvicorn")

from loopback import serve  # noqa: E402

from terrazzo.runtime import fsk  # noqa: E402
from terrazzo.runtime.config import RunConfig  # noqa: E402
from terrazzo.runtime.executors.speech import synthesize, transcribe  # noqa: E402
from terrazzo.runtime.failures import ExecutionError  # noqa: E402
from terrazzo.runtime.orchestrator import Runtime  # noqa: E402
from terrazzo.runtime.pool_layout import load_plan  # noqa: E402
from terrazzo.runtime.serve import create_audio_app  # noqa: E402
from terrazzo.spec.spec_loader import agent_from_text  # noqa: E402

VOICE = """
name: echo-voice
nodes:
  - {id: hear, kind: stt, audio_s: 2 s}
  - {id: say, kind: tts, input_tokens: 16}
edges:
  - {from: hear, to: say}
"""


@pytest.fixture(scope="module")
def audio_url() -> Iterator[str]:
    with serve(create_audio_app()) as url:
        yield f"{url}/v1"


def test_codec_round_trip_and_rejects_other_audio() -> None:
    text = "où est ma commande? 42"
    assert fsk.decode(fsk.encode(text)) == text
    with pytest.raises(ValueError, match="not a WAV"):
        fsk.decode(b"ID3 an mp3 header")


def test_client_against_the_loopback_endpoints(audio_url: str, tmp_path: Path) -> None:
    path, mode = synthesize("where is my parcel", audio_url, "tts-1", "alloy", tmp_path, "a", 10, "wav")
    assert mode == f"tts via {audio_url}" and path.endswith("a.wav")
    assert transcribe(path, audio_url, "whisper-1", 10) == ("where is my parcel", f"stt via {audio_url}")
    with pytest.raises(ExecutionError, match=r"HTTP 400.*only response_format 'wav'"):
        synthesize("x", audio_url, "tts-1", "alloy", tmp_path, "b", 10, "mp3")
    with pytest.raises(ExecutionError, match="is not an audio file"):
        transcribe("no such file.wav", audio_url, "whisper-1", 10)


def test_voice_nodes_use_the_audio_endpoints(audio_url: str, tmp_path: Path) -> None:
    spoken = tmp_path / "question.wav"
    spoken.write_bytes(fsk.encode("is shipping free?"))
    config = RunConfig(state_dir=str(tmp_path), audio={"stt_endpoint": audio_url, "tts_endpoint": audio_url,
                                                      "tts_format": "wav"})

    async def go():
        async with Runtime(agent_from_text(VOICE), load_plan(None), config) as rt:
            return await rt.run(str(spoken), request_id="q1")

    r = asyncio.run(go())
    assert r.ok, r.error
    assert r.output["stt_mode"] == r.output["tts_mode"].replace("tts", "stt") == f"stt via {audio_url}"
    assert r.output["input"] == "is shipping free?"  # the transcript replaced the audio path
    answer = Path(r.text)
    assert answer.parent == tmp_path / "audio" and answer.suffix == ".wav"
    assert fsk.decode(answer.read_bytes()) == "is shipping free?"
