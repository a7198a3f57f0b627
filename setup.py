"""Package discovery for dmt_fx (the rest of the metadata is in pyproject.toml).

Every package is found automatically, so a new subpackage cannot be left out of the wheel:
everything under dmt_fx/, plus passes/, which sits at the top of the repository and is
installed as dmt_fx.passes.
"""

from setuptools import find_packages, setup

PASSES = ["dmt_fx.passes"] + [f"dmt_fx.passes.{p}" for p in find_packages("passes")]

setup(
    packages=find_packages(include=["dmt_fx", "dmt_fx.*"]) + PASSES,
    package_dir={p: p.replace("dmt_fx.passes", "passes", 1).replace(".", "/") for p in PASSES},
)
