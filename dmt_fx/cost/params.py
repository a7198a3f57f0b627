"""The step model's parameters: today's constants by default, or fitted by a sweep and loaded.

`CostParams()` is the model as written (every term at face value): what plan="auto" used
before fitted parameters existed. `benchmarks/cost_sweep.py --save-params PATH` writes the
parameters fitted on its training points; `AutoOptions(cost_params=PATH)` (or a CostParams)
makes plan="auto" rank its candidates with them.

The file (JSON, one object; fields may be added, never renamed):

    {"schema": "dmt_fx.cost_params/1",
     "kappa_compute": 0.84,              # x the compute terms (dense step, lookup, tower modules)
     "kappa_inter": 0.89,                # x the cross-host sparse exchanges
     "overhead_per_collective_s": 4.5e-3, # seconds per collective call
     "tiers": null | {"intra": {"alpha_s", "beta_Bps"[, "alpha_collective_s"]}, "inter": {...}},
     "source": {...}}                    # free-form: how they were fitted (sweep, split, errors)

`tiers` (optional): measured links that replace the Topology's link fields; alpha_s is
charged per message, alpha_collective_s per collective call (the probe measures the latter).
Numbers must be finite and >= 0 (a bandwidth > 0, Infinity allowed: the probe's fit gives it
when bytes cost nothing measurable). Anything else is a DMTError naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Union

from dmt_fx.cost.links import Tiers, tier_from
from dmt_fx.ir.errors import DMTError

__all__ = ["DEFAULT_PARAMS", "SCHEMA", "CostParams", "load_params", "params_of"]

SCHEMA = "dmt_fx.cost_params/1"
_NUMBERS = ("kappa_compute", "kappa_inter", "overhead_per_collective_s")
_FIELDS = {"schema", *_NUMBERS, "tiers", "source"}


@dataclasses.dataclass(frozen=True)
class CostParams:
    """kappa_compute x compute terms + kappa_inter x cross-host exchanges + overhead per
    collective call; `tiers`, when given, in place of the Topology's links."""

    kappa_compute: float = 1.0
    kappa_inter: float = 1.0
    overhead_per_collective_s: float = 0.0
    tiers: Tiers | None = None
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in _NUMBERS:
            _check_number(name, getattr(self, name), "CostParams")

    @classmethod
    def of(cls, numbers: Mapping[str, float], tiers: Tiers | None = None,
           source: Mapping[str, Any] | None = None) -> "CostParams":
        """From the three numbers by name (a fit's `params`); a missing one keeps its default."""
        get = (lambda name: float(numbers.get(name, getattr(DEFAULT_PARAMS, name))))
        return cls(kappa_compute=get("kappa_compute"), kappa_inter=get("kappa_inter"),
                   overhead_per_collective_s=get("overhead_per_collective_s"), tiers=tiers, source=source or {})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **{n: getattr(self, n) for n in _NUMBERS},
                "tiers": None if self.tiers is None else self.tiers.to_dict(), "source": dict(self.source)}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=1)


def _check_number(name: str, value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DMTError(f"{where}: {name}={value!r}", "a finite number >= 0",
                       [f"write e.g. \"{name}\": 1.0, or refit with benchmarks/cost_sweep.py --save-params"])


DEFAULT_PARAMS = CostParams()  # the model at face value: what plan="auto" uses unless told


def _tiers(data: Any, where: str) -> Tiers | None:
    if data is None:
        return None
    try:
        tiers = Tiers(tier_from(data["intra"]), tier_from(data["inter"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DMTError(f"{where}: tiers={data!r} ({exc!r})",
                       '{"intra": {"alpha_s": .., "beta_Bps": ..}, "inter": {..}} or null',
                       ["drop \"tiers\" to use the Topology's link fields"]) from None
    for tier_name, tier in (("intra", tiers.intra), ("inter", tiers.inter)):
        for field in ("alpha_s", "alpha_collective_s"):
            _check_number(f"tiers.{tier_name}.{field}", getattr(tier, field), where)
        if not tier.beta_Bps > 0:  # zero never delivers a byte; infinity (bytes measured free) is allowed
            raise DMTError(f"{where}: tiers.{tier_name}.beta_Bps={tier.beta_Bps!r}",
                           "a bandwidth > 0 in bytes per second (Infinity: bytes cost nothing)",
                           ["write the measured rate, e.g. \"beta_Bps\": 25e6 for 200 Mbit/s"])
    return tiers


def params_of(data: Any, where: str = "cost params") -> CostParams:
    """CostParams from the file's object (see the module doc); DMTError when malformed."""
    if not isinstance(data, Mapping):
        raise DMTError(f"{where}: a JSON {type(data).__name__}", f'an object with "schema": "{SCHEMA}"',
                       ["write it with benchmarks/cost_sweep.py --save-params PATH"])
    if data.get("schema") != SCHEMA:
        raise DMTError(f"{where}: schema {data.get('schema')!r}", repr(SCHEMA),
                       ["refit with benchmarks/cost_sweep.py --save-params PATH"])
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise DMTError(f"{where}: unknown field(s) {unknown}", f"only {sorted(_FIELDS)}",
                       ["check the spelling (a misspelt field would silently keep its default)"])
    for name in _NUMBERS:
        _check_number(name, data.get(name, getattr(DEFAULT_PARAMS, name)), where)
    source = data.get("source") or {}
    if not isinstance(source, Mapping):
        raise DMTError(f"{where}: source={source!r}", "an object (or absent)", ['drop "source"'])
    return CostParams.of(data, _tiers(data.get("tiers"), where), source)


def load_params(params: Union["CostParams", str, os.PathLike, Mapping[str, Any], None]) -> CostParams:
    """CostParams as given, read from a JSON file path, or from its object; None: the defaults."""
    if params is None:
        return DEFAULT_PARAMS
    if isinstance(params, CostParams):
        return params
    if isinstance(params, Mapping):
        return params_of(params)
    if not isinstance(params, (str, os.PathLike)):
        raise DMTError(f"cost_params={params!r}", "a CostParams, a JSON file path or None",
                       ["pass cost_params='fit.json' (benchmarks/cost_sweep.py --save-params writes one)"])
    path = os.fspath(params)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise DMTError(f"cost_params={path!r}: {exc.strerror or exc}", "a readable JSON file",
                       ["check the path; benchmarks/cost_sweep.py --save-params PATH writes one"]) from None
    except json.JSONDecodeError as exc:
        raise DMTError(f"cost_params={path!r}: not JSON ({exc.msg}, line {exc.lineno})", "one JSON object",
                       ["rewrite it with benchmarks/cost_sweep.py --save-params PATH"]) from None
    return params_of(data, f"cost_params={path!r}")


