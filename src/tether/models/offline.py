"""The offline model: a trained text classifier that needs no API key.

Word and character TF-IDF features, a linear SVM, and temperature scaling
(fitted by cross-validation inside scikit-learn's CalibratedClassifierCV) so
the confidence it reports is close to how often it is right. A decision point
whose observation holds `text` gets the most likely label among the options.

Training takes seconds; the fitted model is cached on disk under a key of the
training data, the settings and the scikit-learn version.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.models.base import Choice, DecisionRequest

_VERSION = "tfidf-svm-temp/1"  # bump when the pipeline below changes


def cache_dir() -> Path:
    """Per user, never the working directory: a cached model is a pickle, and loading a
    pickle someone else could write would run their code."""
    if os.environ.get("TETHER_CACHE_DIR"):
        return Path(os.environ["TETHER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tether" / "models"


def _pipeline(seed: int) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    svm = LinearSVC(C=0.5, random_state=seed)
    return make_pipeline(features, CalibratedClassifierCV(svm, cv=5, method="temperature"))


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    alternatives: list[tuple[str, float]]


class TextClassifier:
    """A `Model` for decision points that pick a label for a piece of text."""

    def __init__(self, pipeline: Any, name: str) -> None:
        self._pipeline = pipeline
        self.name = name
        self.labels: list[str] = [str(c) for c in pipeline.classes_]

    @classmethod
    def train(cls, texts: Sequence[str], labels: Sequence[str], *, seed: int = 0, name: str = "offline") -> TextClassifier:
        return cls(_pipeline(seed).fit(list(texts), list(labels)), name)

    @classmethod
    def cached(
        cls, key: str, data: Callable[[], tuple[Sequence[str], Sequence[str]]], *, seed: int = 0, name: str = "offline"
    ) -> TextClassifier:
        """Load the model trained for `key`, training and saving it on a miss."""
        import joblib
        import sklearn

        tag = hashlib.sha256(f"{key}|{seed}|{_VERSION}|{sklearn.__version__}".encode()).hexdigest()[:20]
        path = cache_dir() / f"{name.replace(':', '_')}-{tag}.joblib"
        if path.exists():
            try:
                return cls(joblib.load(path), name)
            except Exception:  # noqa: BLE001 - a damaged cache file is retrained, not fatal
                path.unlink(missing_ok=True)
        texts, labels = data()
        model = cls.train(texts, labels, seed=seed, name=name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        joblib.dump(model._pipeline, tmp)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
        return model

    def predict(self, texts: Sequence[str], top: int = 3) -> list[Prediction]:
        import numpy as np

        proba = self._pipeline.predict_proba(list(texts))
        out = []
        for row in proba:
            order = np.argsort(row)[::-1][:top]
            alts = [(self.labels[i], float(row[i])) for i in order]
            out.append(Prediction(alts[0][0], alts[0][1], alts))
        return out

    def choose(self, request: DecisionRequest) -> Choice:
        text = request.observation.get("text")
        if not isinstance(text, str):
            raise ValueError(f"decision point {request.point!r}: the offline classifier needs observation['text']")
        import numpy as np

        proba = self._pipeline.predict_proba([text])[0]
        allowed = {o for o in request.options}
        ranked = [(self.labels[i], float(proba[i])) for i in np.argsort(proba)[::-1] if self.labels[i] in allowed]
        if not ranked:
            raise ValueError(f"decision point {request.point!r}: none of the options is a label this model knows")
        option, confidence = ranked[0]
        return Choice(point=request.point, option=option, confidence=round(confidence, 6), model=self.name,
                      alternatives=[(o, round(c, 6)) for o, c in ranked[:3]])  # fmt: skip
