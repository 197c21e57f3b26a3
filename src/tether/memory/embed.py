"""Embeddings: offline (a hashing vectorizer, no download) or from a provider, each with a cache.

The offline embedder hashes word and character n-grams into 2**dim_bits buckets,
L2-normalised, so cosine similarity is a dot product. Deterministic across
processes, so vectors stored today still match queries embedded tomorrow.

A provider's embeddings come through the official `openai` SDK: OpenAI itself, or
any OpenAI-compatible server (vLLM, Ollama, llama.cpp) by base URL. Chosen by

    TETHER_EMBEDDINGS=offline                         the hashing embedder (the default)
    TETHER_EMBEDDINGS=openai:text-embedding-3-small   key OPENAI_API_KEY (OPENAI_BASE_URL if set)
    TETHER_EMBEDDINGS=compatible:nomic-embed-text     at TETHER_EMBEDDINGS_BASE_URL

Vectors are stored with the embedder's name: a store searches only vectors made by
the embedder it has, so changing embedders never mixes two spaces.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from tether.errors import TetherError


class _CachedEmbedder:
    """Embeds each text once: later asks are answered from an LRU cache (hits and misses counted)."""

    name: str
    dim: int | None
    batch: int = 10_000  # texts computed (or sent to a provider) at once

    def __init__(self, cache_size: int) -> None:
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

    def _compute(self, texts: list[str]) -> list[Any]:
        """One L2-normalised float32 row per text."""
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        out: list[Any] = [None] * len(texts)
        todo = []
        for i, t in enumerate(texts):
            if t in self._cache:
                self._cache.move_to_end(t)
                out[i] = self._cache[t]
                self.hits += 1
            else:
                todo.append(i)
                self.misses += 1
        for start in range(0, len(todo), self.batch):  # cached batch by batch: a later failure loses none
            chunk = todo[start : start + self.batch]
            for row, i in zip(self._compute([texts[i] for i in chunk]), chunk, strict=True):
                out[i] = row
                self._cache[texts[i]] = row
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return np.vstack(out) if out else np.zeros((0, self.dim or 1), dtype=np.float32)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


def _normalised(m: Any) -> list[Any]:
    import numpy as np

    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return list(m / np.where(norms == 0, 1, norms))


class HashingEmbedder(_CachedEmbedder):
    def __init__(self, dim_bits: int = 12, cache_size: int = 10_000) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.pipeline import make_union

        super().__init__(cache_size)
        self.dim = 2**dim_bits
        self.name = f"hashing-{self.dim}/1"
        self._vec = make_union(
            HashingVectorizer(n_features=self.dim, ngram_range=(1, 2), alternate_sign=False, norm=None),
            HashingVectorizer(n_features=self.dim, analyzer="char_wb", ngram_range=(3, 4), alternate_sign=False, norm=None),
        )

    def _compute(self, texts: list[str]) -> list[Any]:
        import numpy as np

        m = self._vec.transform(texts).toarray().astype(np.float32)
        return _normalised(m[:, : self.dim] + m[:, self.dim :])  # fold word and character features into one space


class EmbeddingError(TetherError):
    pass


class ProviderEmbedder(_CachedEmbedder):
    """Embeddings from an OpenAI-style `/embeddings` endpoint, rows L2-normalised, cached by text."""

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None, name: str | None = None,
                 timeout_s: float = 30.0, max_retries: int = 2, cache_size: int = 10_000, batch: int = 256) -> None:  # fmt: skip
        from openai import OpenAI

        super().__init__(cache_size)
        self.model = model
        self.name = name or f"openai:{model}"
        self._client = OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)
        self.batch = batch
        self.dim = None

    def _compute(self, texts: list[str]) -> list[Any]:
        import numpy as np
        import openai

        try:
            resp = self._client.embeddings.create(model=self.model, input=texts)
        except openai.APIError as e:
            raise EmbeddingError(f"embeddings from {self.name} failed: {type(e).__name__}: {str(e)[:200]}") from None
        rows = sorted(resp.data, key=lambda d: d.index)
        if len(rows) != len(texts):
            raise EmbeddingError(f"embeddings from {self.name}: asked for {len(texts)} vectors, got {len(rows)}")
        m = np.asarray([r.embedding for r in rows], dtype=np.float32)
        if m.ndim != 2 or (self.dim is not None and m.shape[1] != self.dim):
            raise EmbeddingError(f"embeddings from {self.name}: vectors of {m.shape[-1]} dimensions, expected {self.dim}")
        self.dim = int(m.shape[1])
        return _normalised(m)


def embedder_from_env(env: Mapping[str, str] | None = None, *, secrets: Any = None) -> Any:
    """The embedder configuration names (see the module's docstring); offline when none is set."""
    from tether.models.config import _KeyStore, _number, local_key

    env = os.environ if env is None else env
    spec = env.get("TETHER_EMBEDDINGS", "").strip()
    if not spec or spec == "offline":
        return HashingEmbedder()
    kind, _, model = spec.partition(":")
    if not model or kind not in ("openai", "compatible"):
        raise EmbeddingError(f"$TETHER_EMBEDDINGS={spec!r}: write offline, openai:MODEL or compatible:MODEL")
    secrets = secrets or _KeyStore()
    opts = {"timeout_s": _number(env, "TETHER_MODEL_TIMEOUT_S", 30.0), "max_retries": int(_number(env, "TETHER_MODEL_RETRIES", 2))}
    if kind == "openai":
        return ProviderEmbedder(model, api_key=secrets.get("OPENAI_API_KEY"), base_url=env.get("OPENAI_BASE_URL") or None,
                                name=spec, **opts)  # fmt: skip
    base = env.get("TETHER_EMBEDDINGS_BASE_URL")
    if not base:
        raise EmbeddingError(f"$TETHER_EMBEDDINGS={spec!r} needs TETHER_EMBEDDINGS_BASE_URL (e.g. http://127.0.0.1:8000/v1)")
    return ProviderEmbedder(model, api_key=local_key(secrets, "TETHER_EMBEDDINGS_API_KEY"), base_url=base, name=spec, **opts)
