"""The documented default target `dmt_fx.zoo:default_dlrm` (the model lives in dmt_fx.models.zoo)."""

from dmt_fx.models.zoo import DEFAULT_TARGET, default_dlrm, make_inputs

__all__ = ["DEFAULT_TARGET", "default_dlrm", "make_inputs"]
