"""Graph passes of dmt_fx, one per file, installed as `dmt_fx.passes`.

Contract: `x_pass(gm, *, config...) -> gm`, mutating `gm` in place; every node a pass
inserts carries provenance in `node.meta["dmt"]`. Numerics-preserving passes run by
default; passes that change the model are opt-in and say so.
"""
