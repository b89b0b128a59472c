"""What a role's calls cost online and as provider batches (`batch: true`: `batch_price_factor` of the
online price, 0.5 at OpenAI and Anthropic). The budget, the manifest's cost, `bezoar status` and the plan
price a batch role at the batch rate; the plan shows both prices for every remote role."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class PricedRole(Protocol):
    """A role's prices and batch settings (`bezoar.config_base.ModelConfig`)."""

    @property
    def input_price_per_mtok(self) -> float: ...

    @property
    def output_price_per_mtok(self) -> float: ...

    @property
    def batch(self) -> bool: ...

    @property
    def batch_price_factor(self) -> float: ...


@dataclass(frozen=True)
class Prices:
    """USD per million tokens that a role pays (the batch rate when it sends batches)."""

    input_per_mtok: float
    output_per_mtok: float


def role_prices(config: PricedRole) -> Prices:
    factor = config.batch_price_factor if config.batch else 1.0
    return Prices(config.input_price_per_mtok * factor, config.output_price_per_mtok * factor)


@dataclass(frozen=True)
class RoleCost:
    """One role's expected cost both ways, and which one it will pay."""

    online_usd: float
    batch_usd: float
    batch: bool

    @property
    def usd(self) -> float:
        """What the role will pay, as configured."""
        return self.batch_usd if self.batch else self.online_usd

    def to_json(self) -> dict:
        return {"cost_usd": round(self.usd, 2), "online_usd": round(self.online_usd, 2),
                "batch_usd": round(self.batch_usd, 2), "batch": self.batch}

    def text(self) -> str:
        """For a plan line: `$118.00 (batch; online $236.00)` or `$236.00 (batch would be $118.00)`."""
        if self.online_usd == 0:
            return "-"
        if self.batch:
            return f"${self.batch_usd:,.2f} (batch; online ${self.online_usd:,.2f})"
        return f"${self.online_usd:,.2f} (batch would be ${self.batch_usd:,.2f})"


def role_cost(config: PricedRole, prompt_tokens: int, completion_tokens: int) -> RoleCost:
    """The cost of these tokens for this role, online and at its batch rate (local roles cost nothing)."""
    online = (prompt_tokens * config.input_price_per_mtok + completion_tokens * config.output_price_per_mtok) / 1e6
    return RoleCost(online, online * config.batch_price_factor, config.batch)
