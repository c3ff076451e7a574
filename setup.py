"""Package list for setuptools; everything else is in pyproject.toml.

The built-in circuits live in the repository's top-level ``circuits/`` folder, and the wheel
installs them as the package ``mapflow_tl.builtin_circuits`` (so no top-level ``circuits`` package
lands in site-packages). pyproject.toml alone cannot say "every package under mapflow_tl/, plus
circuits/ under another name": ``packages.find`` only finds folders by their own names, and an
explicit list would silently drop the next new sub-package from the wheel. Hence these lines.
"""

from setuptools import find_namespace_packages, setup

# namespace packages too, as pyproject's packages.find would: the SynthTV checkpoint folders hold
# data only and setuptools warns about data folders that are not packages
packages = find_namespace_packages(include=["mapflow_tl", "mapflow_tl.*"], exclude=["*.__pycache__"])

setup(
    packages=packages + ["mapflow_tl.builtin_circuits"],
    package_dir={"mapflow_tl.builtin_circuits": "circuits"},
)
