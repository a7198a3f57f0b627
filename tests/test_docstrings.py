"""The public entry points document Args / Returns / Raises / Example, and the examples run.

The examples are run with doctest; the registrations they make are undone afterwards, so
they do not leak into other tests.
"""

from __future__ import annotations

import contextlib
import doctest

import pytest

import dmt_fx
from dmt_fx.baselines import BASELINES, register_baseline
from dmt_fx.compiler.interactions import INTERACTIONS
from dmt_fx.compiler.partitioners import PARTITIONERS
from dmt_fx.compiler.tower_modules import TOWER_MODULES
from dmt_fx.runtime.shardings import SHARDINGS, register_sharding

ENTRY_POINTS = {
    "transform": dmt_fx.transform,
    "tower_plan": dmt_fx.tower_plan,
    "distribute": dmt_fx.distribute,
    "Topology": dmt_fx.Topology,
    "TowerPlan": dmt_fx.TowerPlan,
    "AutoOptions": dmt_fx.AutoOptions,
    "register_interaction": dmt_fx.register_interaction,
    "register_partitioner": dmt_fx.register_partitioner,
    "register_tower_module": dmt_fx.register_tower_module,
    "register_sharding": register_sharding,
    "register_baseline": register_baseline,
    "DMTError": dmt_fx.DMTError,
    "shutdown": dmt_fx.shutdown,
}
# A class documents its constructor, so it has no Returns: section.
CLASSES = {"Topology", "TowerPlan", "AutoOptions", "DMTError"}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_documents_its_sections(name):
    doc = ENTRY_POINTS[name].__doc__ or ""
    wanted = ["Args:", "Raises:", "Example:"] + ([] if name in CLASSES else ["Returns:"])
    missing = [section for section in wanted if section not in doc]
    assert not missing, f"{name}'s docstring lacks {missing}"


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_example_runs(name):
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(ENTRY_POINTS[name], name, globs={})
    assert tests and tests[0].examples, f"{name} has no doctest example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with contextlib.ExitStack() as undo:  # registrations made by the examples are undone
        for registry in (BASELINES, INTERACTIONS, PARTITIONERS, TOWER_MODULES, SHARDINGS):
            undo.enter_context(registry.scoped())
        for test in tests:
            runner.run(test)
    assert runner.failures == 0, f"{name}'s example failed (see the doctest output above)"
