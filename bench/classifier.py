"""The offline intent classifier on the held-back 20% of Banking77 (never trained on).

    python bench/classifier.py

Prints accuracy (intent and queue), the share of tickets below the escalation
thresholds and the accuracy on the rest, expected calibration error, training
time and prediction cost. Then, on a validation split carved from the training
part (not the test part), the triage outcome for several threshold choices:
that is how the workflow's thresholds were chosen.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.model_selection import train_test_split

from tether.models.offline import TextClassifier
from tether.workflows.triage import data
from tether.workflows.triage.flow import CONFIDENCE_THRESHOLDS, confidence_threshold
from tether.workflows.triage.intents import ROUTES

CONSEQUENTIAL = ("refund", "freeze", "close")


def outcome(labels: list[str], confs: list[float], truth: list[str], low: float, high: float) -> tuple[float, float, float]:
    """(same route and playbook, escalated, wrong consequential action) shares for thresholds (low, high)."""
    ok = esc = bad = 0
    for label, c, t in zip(labels, confs, truth, strict=True):
        a, b = ROUTES[label], ROUTES[t]
        if c < (high if a.playbook in CONSEQUENTIAL else low):
            esc += 1
            continue
        same = (a.queue, a.priority, a.playbook, a.refund) == (b.queue, b.priority, b.playbook, b.refund)
        ok += same
        bad += (not same) and a.playbook in CONSEQUENTIAL and a.playbook != b.playbook
    n = len(labels)
    return ok / n, esc / n, bad / n


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
    kept = conf >= np.array([confidence_threshold(x) for x in label])
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
    print(f"  below threshold (escalated)        {(~kept).sum()} of {len(test)} = {(~kept).mean():.1%}   thresholds {CONFIDENCE_THRESHOLDS}")
    print(f"  intent accuracy on the rest        {right[kept].mean():.3f}")
    print(f"  queue accuracy on the rest         {queue_right[kept].mean():.3f}")
    print(f"  expected calibration error         {ece:.3f}")
    print(f"  training time                      {train_s:.1f} s")
    print(f"  prediction, batched                {per_msg_us:.0f} us per message")
    print(f"  prediction, one message            {single_ms:.2f} ms")

    tr, va = train_test_split(list(train), test_size=0.25, random_state=5, stratify=[e.intent for e in train])
    m = TextClassifier.train([e.text for e in tr], [e.intent for e in tr], seed=1)
    vp = m.predict([e.text for e in va])
    print(f"threshold choice on a validation split of the training part ({len(va)} messages):")
    print("  answer  consequential   right route+playbook   escalated   wrong consequential action")
    for low, high in ((0.5, 0.5), (0.4, 0.4), (0.3, 0.5), (0.3, 0.6), (0.3, 0.7), (0.25, 0.6)):
        ok, esc, bad = outcome([p.label for p in vp], [p.confidence for p in vp], [e.intent for e in va], low, high)
        print(f"  {low:>6}  {high:>13}   {ok:>20.1%}   {esc:>9.1%}   {bad:>25.2%}")


if __name__ == "__main__":
    main()
