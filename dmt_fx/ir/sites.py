"""The analysed model: embedding sites, features, tables and the interaction site.

Part of the typed contract between the compiler (which builds them from a captured graph)
and the runtime (which lowers the towers they describe). Frozen dataclasses keyed by node
*names* and module paths, never by Node objects, so a plan built from them survives copies
of the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib


@dataclasses.dataclass(frozen=True)
class Table:
    name: str  # fully qualified path of the table's module
    param: str  # fully qualified name of its weight in the captured graph
    num_embeddings: int
    embedding_dim: int
    dtype_bytes: int
    # A field of a joint table (one weight for all fields, indexed with constant per-field
    # offsets): its rows are [row_offset, row_offset + num_embeddings) of `param`, and `joint`
    # names the whole table ("" for a table that is a whole weight).
    row_offset: int = 0
    joint: str = ""

    @property
    def memory_bytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * self.dtype_bytes


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    table: str
    dim: int
    pooling: str  # sum | mean | max | none
    weighted: bool
    site: str  # node name of the embedding site that looks it up
    key: str = ""  # the KJT key (TorchRec) or the module path (plain PyTorch)
    # The composite embedding this lookup is one table of ("" when none): the module of a
    # quotient-remainder bag, whose tables (one feature each) stay in one tower.
    unit: str = ""
    # The column of the ids this feature reads, for a field of a joint table (-1 otherwise):
    # its ids are ids[..., field] - the field's row offset.
    field: int = -1
    # An unpooled (sequence) read: a torchrec EmbeddingCollection's feature, or nn.Embedding on
    # [B, L > 1] ids; its mean ids per sample on the example batch (0.0 when not measured).
    sequence: bool = False
    mean_length: float = 0.0


SEQUENCE_KIND = "torchrec_ec"  # the site kind of a torchrec EmbeddingCollection (unpooled lookups)
TORCHREC_KINDS = ("torchrec_ebc", SEQUENCE_KIND)  # sites that read a KJT through a torchrec collection


@dataclasses.dataclass(frozen=True)
class EmbeddingSite:
    node: str
    kind: str  # torchrec_ebc | torchrec_ec | embedding_bag | embedding
    module: str
    features: tuple[str, ...]
    # export route only: the node holding the pooled output (getitem 0 of the aten op)
    output: str


NO_INTERACTION = "none"  # the kind of the site of a model whose embeddings never meet dense data


@dataclasses.dataclass(frozen=True)
class InteractionSite:
    node: str  # "" when there is none
    kind: str  # torchrec.InteractionArch | ... | pairwise_dot | concat | other:<op> | none
    module: str | None
    # For a sum of parts (DeepFM / Wide&Deep: a linear part + an FM part + a deep MLP added
    # into the logit): each summand, as the layers it comes from; () otherwise.
    parts: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        """Whether the model has one: the identity rewrite needs none, compressing towers do."""
        return self.kind != NO_INTERACTION


@dataclasses.dataclass(frozen=True)
class ModelSites:
    route: str
    sites: tuple[EmbeddingSite, ...]
    features: tuple[Feature, ...]
    tables: tuple[Table, ...]
    interaction: InteractionSite
    dense_inputs: tuple[str, ...] = ()  # placeholders carrying dense data (reaching the output without a lookup)
    # What the analysis could not do and why, for the plan and the CLI (e.g. a joint table
    # whose offsets are not constants stays whole).
    warnings: tuple[str, ...] = ()

    def feature(self, name: str) -> Feature:
        return self._feature_index[name]

    def table(self, name: str) -> Table:
        return self._table_index[name]

    def composites(self) -> dict[str, tuple[str, ...]]:
        """Composite embeddings: unit -> its tables in lookup order (e.g. a QR pair)."""
        units: dict[str, list[str]] = {}
        for f in self.features:
            if f.unit and f.table not in units.setdefault(f.unit, []):
                units[f.unit].append(f.table)
        return {u: tuple(t) for u, t in units.items()}

    def joint_tables(self) -> dict[str, tuple[Table, ...]]:
        """Joint tables split by field: the whole table -> its field tables in field order."""
        joint: dict[str, list[Table]] = {}
        for t in self.tables:
            if t.joint:
                joint.setdefault(t.joint, []).append(t)
        return {name: tuple(sorted(ts, key=lambda t: t.row_offset)) for name, ts in joint.items()}

    # cached_property writes the instance __dict__ directly, so it works on a frozen dataclass.
    @functools.cached_property
    def _feature_index(self) -> dict[str, Feature]:
        return {f.name: f for f in self.features}

    @functools.cached_property
    def _table_index(self) -> dict[str, Table]:
        return {t.name: t for t in self.tables}

    def fingerprint(self) -> str:
        """Identifies the model's embedding layout (features, tables, sizes)."""
        parts = [f"{f.name}|{f.table}|{f.dim}|{f.pooling}|{f.weighted}" for f in self.features]
        parts += [f"{t.name}|{t.num_embeddings}|{t.embedding_dim}" + (f"|{t.row_offset}" if t.joint else "")
                  for t in self.tables]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
