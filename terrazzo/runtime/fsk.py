"""TEST CODEC, NOT SPEECH: text ⇄ WAV by frequency-shift keying, one 40 ms tone per UTF-8 byte.

No speech model can be downloaded here, yet the STT/TTS client paths must run against real
OpenAI-compatible audio endpoints. `serve.create_audio_app()` serves this codec behind
`/v1/audio/speech` and `/v1/audio/transcriptions`: the "speech" it writes is a tone sequence, and
"transcribing" it recovers the text exactly (tones sit on FFT bins, so decoding is lossless).
"""

from __future__ import annotations

import io
import wave

import numpy as np

RATE_HZ = 16_000
FRAME = 640                      # 40 ms at 16 kHz: FFT bins 25 Hz apart
BASE_BIN = 12                    # byte b is a tone on bin 12 + b: 300 Hz … 6,675 Hz, under Nyquist
LABEL = "terrazzo FSK test codec (not speech)"


def encode(text: str) -> bytes:
    """Text → mono 16-bit WAV."""
    t = np.arange(FRAME) / RATE_HZ
    tones = [np.sin(2 * np.pi * (BASE_BIN + b) * RATE_HZ / FRAME * t) for b in text.encode()]
    pcm = (np.concatenate(tones) * 0.5 * 32767).astype("<i2") if tones else np.zeros(0, "<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def decode(wav: bytes) -> str:
    """WAV written by `encode` → the text (raises ValueError for audio this codec did not write)."""
    try:
        with wave.open(io.BytesIO(wav), "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, RATE_HZ):
                raise ValueError(f"expected mono 16-bit {RATE_HZ} Hz WAV")
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a WAV file: {exc}") from None
    if len(pcm) % FRAME:
        raise ValueError(f"length {len(pcm)} samples is not a whole number of {FRAME}-sample tones")
    bins = np.abs(np.fft.rfft(pcm.reshape(-1, FRAME), axis=1)).argmax(axis=1) - BASE_BIN
    if ((bins < 0) | (bins > 255)).any():
        raise ValueError("tones outside the codec's band")
    return bytes(bins.astype(np.uint8).tolist()).decode("utf-8", errors="replace")
