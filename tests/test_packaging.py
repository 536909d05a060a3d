"""pip and conda describe the same environment, and CI runs the README's test command."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def requirement(spec: str) -> tuple[str, str]:
    """('name', 'version spec') with the name normalised the way pip compares names."""
    name, version = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), version.replace(" ", "")


def test_conda_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = {requirement(s) for s in project["dependencies"]}
    for extra in ("course", "dev", "bench"):
        pip_side |= {requirement(s) for s in project["optional-dependencies"][extra]}
    conda_side = set()
    for dep in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]:
        if isinstance(dep, dict):
            conda_side |= {requirement(s) for s in dep["pip"] if not s.startswith("-e")}
        elif requirement(dep)[0] not in ("python", "pip"):
            conda_side.add(requirement(dep))
    assert conda_side == pip_side, (f"only in environment.yml: {sorted(conda_side - pip_side)}; "
                                    f"only in pyproject.toml: {sorted(pip_side - conda_side)}")


def test_ci_and_workflow_run_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(), re.M)
    assert "make test" in (ROOT / ".github" / "workflows" / "course.yml").read_text()


def test_torch_is_not_a_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {requirement(s)[0] for s in project["dependencies"]} == {"numpy", "numba", "pillow", "regex", "threadpoolctl"}
