"""Fails when requirements.lock does not pin every dependency of pyproject.toml (and its dev extra)
to a version inside the range pyproject.toml allows: the one lock file stays true to the project."""

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
pins = {canonicalize_name(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", (ROOT / "requirements.lock").read_text(), re.M)}
problems = []
for requirement in wanted:
    pinned = pins.get(canonicalize_name(requirement.name))
    if pinned is None:
        problems.append(f"{requirement.name}: in pyproject.toml, not pinned in requirements.lock")
    elif not requirement.specifier.contains(pinned, prereleases=True):
        problems.append(f"{requirement.name}=={pinned} in requirements.lock is outside {requirement.specifier}")
for problem in problems:
    print(f"requirements.lock: {problem}", file=sys.stderr)
if problems:
    print("regenerate it: uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock",
          file=sys.stderr)
sys.exit(1 if problems else 0)
