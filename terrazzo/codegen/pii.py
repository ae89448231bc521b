"""A small privacy filter: does a text contain personal data (an e-mail address, a phone number, a
card-like number)? A byte-level CNN, trained in a few seconds on synthetic examples generated here
with a fixed seed. It is a demonstration filter for the code-generation path, not a vetted PII
detector: its accuracy is measured on held-out synthetic texts only, and printed where it is used.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

MAX_BYTES = 128
SEED = 7
_WORDS = ("order", "refund", "shipping", "package", "delivery", "account", "invoice", "please", "thanks", "when",
          "where", "status", "return", "item", "size", "colour", "store", "price", "cancel", "update", "address",
          "help", "today", "tomorrow", "week", "charge")
_NAMES = ("ana", "li", "sam", "omar", "kim", "jo", "maria", "dev", "noor", "alex")
_DOMAINS = ("example.com", "mail.org", "corp.net", "post.io")


class PiiNet(nn.Module):
    """Bytes [batch, 128] (int64, 0 = padding) → probability of personal data [batch]."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 16)
        self.conv = nn.Conv1d(16, width, kernel_size=7, padding=3)
        self.head = nn.Linear(width, 1)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(self.embed(data).transpose(1, 2)))  # [batch, width, bytes]
        return torch.sigmoid(self.head(x.amax(dim=2)).squeeze(-1))


def encode(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), MAX_BYTES), dtype=np.int64)
    for i, t in enumerate(texts):
        raw = t.encode("utf-8", "replace")[:MAX_BYTES]
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def synthetic(n: int, rng: random.Random) -> tuple[list[str], list[int]]:
    """Half ordinary sentences, half with one e-mail, phone or card-like number at a random place."""
    texts, labels = [], []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        if i % 2:
            kind = rng.choice(("email", "phone", "card"))
            if kind == "email":
                item = f"{rng.choice(_NAMES)}{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}"
            elif kind == "phone":
                parts = (rng.randint(1, 49), rng.randint(100, 999), rng.randint(100, 999), rng.randint(1000, 9999))
                item = "+{} {} {} {}".format(*parts)
            else:
                item = " ".join(f"{rng.randint(0, 9999):04d}" for _ in range(4))
            words.insert(rng.randint(0, len(words)), item)
        else:
            if rng.random() < 0.5:  # numbers that are not personal data: order ids, quantities
                words.insert(rng.randint(0, len(words)), f"#{rng.randint(10, 99999)}")
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


@dataclass(frozen=True)
class Trained:
    net: PiiNet
    heldout_accuracy: float
    weights_sha256: str


def train(cache_dir: str | Path | None = None, steps: int = 300) -> Trained:
    """Train (or load from `cache_dir`) the filter; deterministic for the seed."""
    path = Path(cache_dir) / f"pii-seed{SEED}-steps{steps}.pt" if cache_dir else None
    torch.manual_seed(SEED)
    net = PiiNet()
    rng = random.Random(SEED)
    heldout_x, heldout_y = synthetic(1000, random.Random(SEED + 1))
    if path is not None and path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(steps):
            texts, labels = synthetic(64, rng)
            loss = nn.functional.binary_cross_entropy(net(torch.from_numpy(encode(texts))),
                                                      torch.tensor(labels, dtype=torch.float32))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), path)
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(encode(heldout_x))).numpy() > 0.5
    accuracy = float((pred == np.asarray(heldout_y, dtype=bool)).mean())
    digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in net.state_dict().values())).hexdigest()
    return Trained(net, accuracy, digest)
