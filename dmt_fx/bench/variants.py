"""Variant names, typed: what `dmt-fx run`, the benches, the demo and the worker train.

A variant name is a CLI contract (`--variants`, `--baseline`, the `variant` field of every
record), so the names stay as they are; this module is the one place that reads them:

    NAME      := BASE [ "+fp16" | "+bf16" ] [ "+pipeline" ]
    BASE      := "dmt"                  DMT, tower module and compression from the flags
               | "dmt-identity"         DMT, identity towers (c = 1)
               | "dmt-c" N              DMT, linear tower modules of compression N
               | "dmt-seqmean-c" N      DMT, sequence tower modules seq_mean of compression N
               | "dmt-seqattn-c" N      DMT, sequence tower modules seq_attention of compression N
               | "flat-" SHARDING       the original model under TorchRec DMP over the world
               | any other baseline     (torchrec-2d, torchrec-towers, a user's)

`+fp16` is TorchRec's qcomms for the pooled embeddings (FP16 forward, BF16 backward),
`+bf16` BF16 both ways (`dmt_fx.runtime.qcomms`); `+pipeline` trains through a
sparse-dist train pipeline (`dmt_fx.jobs.steps`). A flat baseline with a precision is a
registered baseline of its own (`flat-table_wise+fp16`, family "flat": counted in "best
flat"); a DMT variant with one runs `distribute(..., comm_precision=...)`.
"""

from __future__ import annotations

import dataclasses

from dmt_fx.ir.errors import DMTError
from dmt_fx.jobs.steps import PIPELINED as PIPELINE_SUFFIX  # one owner of the suffix: the worker's steps
from dmt_fx.runtime.qcomms import FP32, PRECISIONS

__all__ = ["DMT", "FLAT", "OTHER", "PIPELINE_SUFFIX", "QCOMMS", "Variant", "is_dmt", "of_precision", "parse",
           "with_qcomms"]

DMT, FLAT, OTHER = "dmt", "flat", "baseline"  # families
_COMPRESSED = "dmt-c"
# sequence tower modules (compiler/tower_modules/sequence.py): name prefix -> kind
SEQUENCE_KINDS = {"dmt-seqmean-c": "seq_mean", "dmt-seqattn-c": "seq_attention"}
QCOMMS = "fp16"  # the precision the default variant lists add: TorchRec's usual production qcomms


@dataclasses.dataclass(frozen=True)
class Variant:
    """One variant: `family` dmt | flat | baseline; `kind` the flat sharding, the DMT tower
    module ("identity", "linear"; None for plain "dmt": the worker's flags decide) or the
    baseline's name; `compression` c of DMT's tower modules; `precision` of the pooled
    embeddings on the wire; `pipelined` through a train pipeline."""

    family: str
    kind: str | None = None
    compression: int = 1
    precision: str = FP32
    pipelined: bool = False

    @property
    def base(self) -> str:
        """The name without its suffixes: the registered baseline / DMT variant it trains."""
        if self.family == FLAT:
            return f"flat-{self.kind}"
        if self.family == OTHER:
            return str(self.kind)
        if self.kind is None:
            return "dmt"
        prefix = next((p for p, k in SEQUENCE_KINDS.items() if k == self.kind), _COMPRESSED)
        return "dmt-identity" if self.kind == "identity" else f"{prefix}{self.compression}"

    @property
    def unpipelined(self) -> str:
        """The name without `+pipeline`: a baseline's registry name (`flat-table_wise+fp16`)."""
        return self.base + ("" if self.precision == FP32 else f"+{self.precision}")

    @property
    def name(self) -> str:
        return self.unpipelined + (PIPELINE_SUFFIX if self.pipelined else "")

    def with_precision(self, precision: str) -> Variant:
        return dataclasses.replace(self, precision=precision)

    def __str__(self) -> str:
        return self.name


def parse(name: str) -> Variant:
    """The typed variant of `name`; DMTError for a malformed DMT or precision part."""
    text, pipelined = name.strip(), False
    if text.endswith(PIPELINE_SUFFIX):
        text, pipelined = text[:-len(PIPELINE_SUFFIX)], True
    precision = FP32
    base, plus, suffix = text.rpartition("+")
    if plus and suffix in PRECISIONS and suffix != FP32:
        text, precision = base, suffix
    elif plus and text.startswith(("dmt", "flat-")):
        raise DMTError(f"variant {name!r}", f"NAME[+{'|+'.join(p for p in PRECISIONS if p != FP32)}][+pipeline]",
                       [f"e.g. {text.partition('+')[0]}+fp16"])
    return dataclasses.replace(_base(text, name), precision=precision, pipelined=pipelined)


def _base(text: str, name: str) -> Variant:
    if text == "dmt":
        return Variant(DMT)
    if text == "dmt-identity":
        return Variant(DMT, "identity")
    for prefix, kind in SEQUENCE_KINDS.items():
        if text.startswith(prefix):
            digits = text[len(prefix):]
            if not digits.isdigit() or int(digits) < 1:
                raise DMTError(f"variant {name!r}", f"{prefix}<N> with N a positive integer (the compression)",
                               [f"e.g. {prefix}4"])
            return Variant(DMT, kind, int(digits))
    if text.startswith(_COMPRESSED):
        digits = text[len(_COMPRESSED):]
        if not digits.isdigit() or int(digits) < 1:
            raise DMTError(f"variant {name!r}", "dmt-c<N> with N a positive integer (the compression)",
                           ["e.g. dmt-c4"])
        return Variant(DMT, "linear", int(digits))
    if text.startswith("dmt-"):
        raise DMTError(f"variant {name!r}", "dmt, dmt-identity, dmt-c<N>, dmt-seqmean-c<N> or dmt-seqattn-c<N>",
                       ["e.g. dmt-identity or dmt-c4"])
    if text.startswith("flat-"):
        return Variant(FLAT, text[len("flat-"):])
    return Variant(OTHER, text)


def is_dmt(name: str) -> bool:
    """Whether `name` trains DMT (`distribute`) rather than a baseline (False for a name
    `parse` refuses: it is no DMT variant)."""
    try:
        return parse(name).family == DMT
    except DMTError:
        return False


def of_precision(names: tuple[str, ...] | list[str], precision: str = FP32) -> tuple[str, ...]:
    """The names among `names` whose pooled embeddings travel in `precision`."""
    return tuple(n for n in names if parse(n).precision == precision)


def with_qcomms(names: tuple[str, ...] | list[str], precision: str = QCOMMS) -> tuple[str, ...]:
    """Each name followed by itself with `precision` (`dmt-c4` -> `dmt-c4`, `dmt-c4+fp16`)."""
    return tuple(x for n in names for x in (n, parse(n).with_precision(precision).name))
