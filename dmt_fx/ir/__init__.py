"""The typed contract between the compiler and the runtime, owned by neither side.

`Topology`, the analysed `ModelSites`, the `TowerPlan`, the `DMTResult` recorded in
`gm.meta["dmt"]`, the graph vocabulary (`ops`), the names of tower submodules, node roles
and process-group kinds (`names`), and the state-dict key renaming (`state_dict`).
"""
