"""The built wheel carries the packaged recipes and works from another directory, without the
checkout on the path. (`.ci/run` also installs it into a fresh virtualenv and runs the demo.)"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from unifashion_core.config import packaged_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_the_recipes_and_loads_them_from_elsewhere(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("unifashion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"unifashion_core/recipes/{name}.yaml" for name in packaged_recipes()} <= names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "UNIFASHION_HOME": str(elsewhere / "ws")}
    code = ("import unifashion_core; from unifashion_core.config import load_recipe, packaged_recipes; "
            "print(unifashion_core.__file__); print(sorted(packaged_recipes())); load_recipe('demo')")
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    location, recipes = result.stdout.splitlines()[:2]
    assert location.startswith(str(tmp_path / "site"))  # the installed copy, not the checkout
    assert recipes == str(sorted(packaged_recipes()))
    shown = subprocess.run([sys.executable, "-m", "unifashion_cli.main", "recipes", "show", "demo"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "preset: small" in shown.stdout
