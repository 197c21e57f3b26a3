"""The triage workflow's offline model: the intent classifier, trained on the train part only."""

from __future__ import annotations

from functools import cache

from tether.models.offline import TextClassifier
from tether.workflows.triage import data

MODEL_NAME = "offline:banking77-intent"


def _training_data() -> tuple[list[str], list[str]]:
    train, _ = data.split()
    return [e.text for e in train], [e.intent for e in train]


@cache
def classifier() -> TextClassifier:
    key = f"{data.data_digest()}|split={data.SPLIT_SEED}/{data.TEST_SHARE}"
    return TextClassifier.cached(key, _training_data, seed=data.SPLIT_SEED, name=MODEL_NAME)
