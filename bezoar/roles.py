"""A run's model roles (teacher, judge, student, and any a step adds), each opened on first use.

A step that never judges never loads the judge or needs its key. Usage counters start where the run's
are (`carried`), so budgets count across steps; a role let go of (`close`) still counts what it spent.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from bezoar.config_base import ModelConfig
from bezoar.llm.cache import Budget, CachedModel, CallCache, Usage
from bezoar.llm.specs import open_model


def usage_from_json(data: Mapping[str, Mapping]) -> dict[str, Usage]:
    """Per-role usage as `Usage.to_json` wrote it (what a step's process is handed and hands back)."""
    return {role: Usage(**{k: v for k, v in values.items() if k in Usage.__dataclass_fields__})
            for role, values in data.items()}


def usage_to_json(usage: Mapping[str, Usage]) -> dict[str, dict]:
    return {role: u.to_json() for role, u in usage.items()}


class LazyModels(Mapping[str, CachedModel]):
    """Role → CachedModel, opened on first use (a run that never judges never needs the judge's key).

    `carried` is the run's usage so far per role: counters start there, so budgets span stages."""

    def __init__(self, roles: Mapping[str, ModelConfig], cache: CallCache, carried: dict[str, Usage] | None = None):
        self.roles, self.cache = dict(roles), cache
        self.opened: dict[str, CachedModel] = {}
        self.closed: dict[str, tuple[Usage, Budget, str]] = {}
        """Roles let go of by `close`: what they spent, their budget and identity (for `spent`)."""
        self.carried = carried or {}

    def __getitem__(self, role: str) -> CachedModel:
        if role not in self.roles:
            raise KeyError(role)
        return self.open_extra(role, self.roles[role])

    def open_extra(self, role: str, config: ModelConfig) -> CachedModel:
        """A role outside `models:` (e.g. eval.mt_bench.judge), counted in usage and budgets like the rest."""

        if role not in self.opened:
            model = open_model(config, role=role, cache=self.cache)
            usage = self.closed.pop(role)[0] if role in self.closed else self.carried.get(role, Usage())
            model.usage = usage.copy()
            self.opened[role] = model
        return self.opened[role]

    def close(self, role: str) -> None:
        """Stop holding a role's model (its weights go once nobody else uses them); its usage still counts."""
        model = self.opened.pop(role, None)
        if model is not None:
            self.closed[role] = (model.usage, model.budget, model.identity)

    def spent(self) -> dict[str, dict]:
        """Per role: what was spent since `carried`, with its cost and the model's identity."""
        accounts = {**self.closed, **{r: (m.usage, m.budget, m.identity) for r, m in self.opened.items()}}
        usage = {}
        for role, (used, budget, identity) in accounts.items():
            spent = used.minus(self.carried.get(role, Usage()))
            if spent.calls or spent.cache_hits:
                usage[role] = {**spent.to_json(), "cost_usd": round(budget.cost(spent), 4), "model": identity}
        return usage

    def totals(self) -> dict[str, Usage]:
        used = {role: usage for role, (usage, _, _) in self.closed.items()}
        return {**self.carried, **used, **{role: model.usage.copy() for role, model in self.opened.items()}}

    def __iter__(self) -> Iterator[str]:
        return iter(self.roles)

    def __len__(self) -> int:
        return len(self.roles)
