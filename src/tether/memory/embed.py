"""Offline embeddings: a hashing vectorizer (no fitting, no download), with a cache.

Word and character n-grams hashed into 2**dim_bits buckets, L2-normalised, so
cosine similarity is a dot product. Deterministic across processes, so vectors
stored today still match queries embedded tomorrow. A provider's embeddings can
replace it: anything with `name` and `embed(texts) -> np.ndarray` (rows normalised).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any


class HashingEmbedder:
    def __init__(self, dim_bits: int = 12, cache_size: int = 10_000) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.pipeline import make_union

        self.dim = 2**dim_bits
        self.name = f"hashing-{self.dim}/1"
        self._vec = make_union(
            HashingVectorizer(n_features=self.dim, ngram_range=(1, 2), alternate_sign=False, norm=None),
            HashingVectorizer(n_features=self.dim, analyzer="char_wb", ngram_range=(3, 4), alternate_sign=False, norm=None),
        )
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

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
        if todo:
            m = self._vec.transform([texts[i] for i in todo]).toarray().astype(np.float32)
            m = m[:, : self.dim] + m[:, self.dim :]  # fold word and character features into one space
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            m = m / np.where(norms == 0, 1, norms)
            for row, i in zip(m, todo, strict=True):
                out[i] = row
                self._cache[texts[i]] = row
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return np.vstack(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0
