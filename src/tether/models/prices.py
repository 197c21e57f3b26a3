"""The price table: USD per million tokens, per model, versioned by date.

Every metered call records the version of the price it was charged at, so a
later price change never rewrites past spend. Add or override prices with a
YAML or JSON file named by `$TETHER_PRICES`:

    version: "2026-12-01"
    models:
      my-vllm-llama: {input: 0.05, output: 0.10}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tether.errors import TetherError
from tether.models.base import Usage

BUILTIN_VERSION = "2026-11-01"

# List prices of the providers' public pages, USD per 1M tokens (input, output).
_BUILTIN: dict[str, tuple[float, float]] = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    # Stand-ins used by bench/economics.py and tests, priced as the model they stand in for.
    "scripted:large": (2.00, 8.00),  # as gpt-4.1
    "scripted:small": (0.40, 1.60),  # as gpt-4.1-mini
}


class PriceError(TetherError):
    pass


@dataclass(frozen=True)
class Price:
    model: str
    input_per_mtok: float
    output_per_mtok: float
    version: str

    def cost(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok) / 1_000_000


class PriceTable:
    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = prices

    def get(self, model: str) -> Price | None:
        """The price of `model`; offline models (`offline:*`) are free; None when unknown."""
        if model.startswith("offline"):
            return Price(model, 0.0, 0.0, BUILTIN_VERSION)
        if model in self._prices:
            return self._prices[model]
        bare = model.split(":", 1)[-1]  # "openai:gpt-4o" and "gpt-4o" are priced alike
        return self._prices.get(bare)

    def cost(self, model: str, usage: Usage) -> tuple[float, str | None]:
        """(USD, price version); an unknown model costs 0 with version None (reported as unpriced)."""
        price = self.get(model)
        return (price.cost(usage), price.version) if price else (0.0, None)


def load_prices(path: str | None = None) -> PriceTable:
    prices = {m: Price(m, i, o, BUILTIN_VERSION) for m, (i, o) in _BUILTIN.items()}
    path = path if path is not None else os.environ.get("TETHER_PRICES")
    if path:
        prices.update(_read(Path(path)))
    return PriceTable(prices)


def _read(path: Path) -> dict[str, Price]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise PriceError(f"price file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), str) or not isinstance(data.get("models"), dict):
        raise PriceError(f"price file {path}: needs `version: <text>` and `models: {{name: {{input: N, output: N}}}}`")
    out = {}
    for name, p in data["models"].items():
        if not isinstance(p, dict) or set(p) != {"input", "output"} or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in p.values()
        ):
            raise PriceError(f"price file {path}: model {name!r} needs input and output, USD per 1M tokens, >= 0")
        out[str(name)] = Price(str(name), float(p["input"]), float(p["output"]), data["version"])
    return out


@cache
def default_prices() -> PriceTable:
    return load_prices()
