"""The one owner of the names the compiler writes and the runtime reads.

Where the rewritten graph keeps each tower's modules, which role each inserted node plays,
and which process groups a collective runs on. The compiler writes these; the runtime finds
modules and nodes through the same functions, never by parsing a path back.
"""

from __future__ import annotations

from typing import Iterator

import torch.fx as fx

TOWERS_ATTR = "dmt_towers"  # the tower collections (they hold the original tables)
TOWER_MODULES_ATTR = "dmt_tower_modules"
LOGICAL_ATTRS = (TOWERS_ATTR, TOWER_MODULES_ATTR)  # replaced by the runtime's modules on a rank
RUNTIME_ATTR = "dmt_dist"  # the runtime's per-rank modules (host exchanges, the host tower block)
HOST_TOWER_BLOCK_PATH = f"{RUNTIME_ATTR}.towers"


def tower_collection_path(tower: int, site_module: str) -> str:
    """The tower's slice of the collection at `site_module` (dots escaped: one attribute)."""
    return f"{TOWERS_ATTR}.tower_{tower}.{site_module.replace('.', '__')}"


def tower_module_path(tower: int) -> str:
    return f"{TOWER_MODULES_ATTR}.tower_{tower}"


def host_exchange_path(collection: int) -> str:
    """The runtime's exchange for the `collection`-th embedding site (identity tower modules)."""
    return f"{RUNTIME_ATTR}.collection_{collection}"


def table_path(collection: str, table: str) -> str:
    """The module path of table `table` of the EmbeddingBagCollection at `collection`."""
    return f"{collection}.embedding_bags.{table}"


def sequence_table_path(collection: str, table: str) -> str:
    """The module path of table `table` of the (unpooled) EmbeddingCollection at `collection`."""
    return f"{collection}.embeddings.{table}"


def table_name(collection: str, table_fqn: str) -> str:
    """The inverse of `table_path` (or `sequence_table_path`): the table's name inside its collection."""
    prefix = table_path(collection, "")
    if not table_fqn.startswith(prefix):
        prefix = sequence_table_path(collection, "")
    assert table_fqn.startswith(prefix), f"{table_fqn} is not a table of {collection}"
    return table_fqn[len(prefix):]


class Role:
    """`node.meta["dmt"]["role"]` of the nodes the passes insert (plain strings in JSON)."""

    SELECT_FEATURES = "select_features"
    PEER_INPUT_EXCHANGE = "peer_input_exchange"
    RECEIVED_IDS = "received_ids"
    TOWER_LOOKUP = "tower_lookup"
    LOOKUP_OUTPUT = "lookup_output"
    PEER_OUTPUT_EXCHANGE = "peer_output_exchange"
    RECEIVED_EMBEDDINGS = "received_embeddings"
    MERGE = "merge"
    TOWER_MODULE = "tower_module"
    TOWER_OUTPUT = "tower_output"
    VALIDATE_INPUTS = "validate_inputs"
    # a joint field's rows of the weight (a narrow view), or, for a sparse-gradient table, its
    # received ids plus the field's row offset (the lookup then reads the whole weight)
    FIELD_ROWS = "field_rows"
    # inserted by the runtime's lowering
    HOST_TOWER_EXCHANGE = "host_tower_exchange"
    HOST_TOWER_BLOCK = "host_tower_block"


EXCHANGE_ROLES = (Role.PEER_INPUT_EXCHANGE, Role.PEER_OUTPUT_EXCHANGE)


class GroupKind:
    """The process groups of a (host x local) world."""

    PEER = "peer"  # cross-host: the ranks with the same local rank on every host
    INTRA_HOST = "intra_host"  # the ranks of one host
    ALL = (PEER, INTRA_HOST)


def exchange_group(node: fx.Node) -> str:
    """The group kind a collective node runs on: its `group=` argument (ops' default: peer)."""
    return str(node.kwargs.get("group", GroupKind.PEER))


def role_of(node: fx.Node) -> str | None:
    return node.meta.get("dmt", {}).get("role")


def nodes_with_role(graph: fx.Graph, role: str, *, origin: str | None = None) -> Iterator[fx.Node]:
    """Inserted nodes of `role`, optionally only those made for the site `origin`."""
    for node in graph.nodes:
        meta = node.meta.get("dmt", {})
        if meta.get("role") == role and (origin is None or meta.get("origin") == origin):
            yield node
