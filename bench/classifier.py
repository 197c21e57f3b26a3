"""The offline intent classifier on the held-back 20% of Banking77 (never trained on).

    python bench/classifier.py

Prints accuracy (intent and queue), the share of tickets below the escalation
threshold and the accuracy on the rest, expected calibration error, training
time and prediction cost per message.
"""

from __future__ import annotations

import time

import numpy as np

from tether.models.offline import TextClassifier
from tether.workflows.triage import data
from tether.workflows.triage.flow import CONFIDENCE_THRESHOLD
from tether.workflows.triage.intents import ROUTES


def main() -> None:
    train, test = data.split()
    t0 = time.perf_counter()
    model = TextClassifier.train([e.text for e in train], [e.intent for e in train], seed=data.SPLIT_SEED)
    train_s = time.perf_counter() - t0
    texts = [e.text for e in test]
    truth = np.array([e.intent for e in test])
    t0 = time.perf_counter()
    preds = model.predict(texts)
    per_msg_us = (time.perf_counter() - t0) / len(texts) * 1e6
    label = np.array([p.label for p in preds])
    conf = np.array([p.confidence for p in preds])
    right = label == truth
    kept = conf >= CONFIDENCE_THRESHOLD
    queue_right = np.array([ROUTES[a].queue == ROUTES[b].queue for a, b in zip(label, truth, strict=True)])
    bins = np.minimum((conf * 10).astype(int), 9)
    ece = sum(abs(conf[bins == b].mean() - right[bins == b].mean()) * (bins == b).mean() for b in range(10) if (bins == b).any())
    t0 = time.perf_counter()
    for t in texts[:200]:
        model.predict([t])
    single_ms = (time.perf_counter() - t0) / 200 * 1000

    print(f"Banking77 split: {len(train)} train / {len(test)} held-back test (seed {data.SPLIT_SEED})")
    print(f"  intent accuracy (77 classes)       {right.mean():.3f}")
    print(f"  queue accuracy (routing)           {queue_right.mean():.3f}")
    print(f"  below threshold {CONFIDENCE_THRESHOLD} (escalated)     {(~kept).sum()} of {len(test)} = {(~kept).mean():.1%}")
    print(f"  intent accuracy on the rest        {right[kept].mean():.3f}")
    print(f"  queue accuracy on the rest         {queue_right[kept].mean():.3f}")
    print(f"  expected calibration error         {ece:.3f}")
    print(f"  training time                      {train_s:.1f} s")
    print(f"  prediction, batched                {per_msg_us:.0f} us per message")
    print(f"  prediction, one message            {single_ms:.2f} ms")


if __name__ == "__main__":
    main()
