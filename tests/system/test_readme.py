"""The READMEs document what the code and recipes offer.

``README.md`` mentions every command-line option and shows the Apptainer commands that
``singularity.def``'s ``%help`` also gives; ``workflows/README.md`` describes every recipe under
``workflows/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bids_denoise.cli.parser import _build_parser
from tests.system.test_container_recipes import needs_recipes, parse_definition

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / "workflows"


@pytest.fixture(scope="module")
def definition():
    return parse_definition()


def test_readme_documents_every_option():
    readme = (REPO_ROOT / "README.md").read_text()
    options = {option for action in _build_parser()._actions for option in action.option_strings}
    undocumented = sorted(option for option in options if f"`{option}" not in readme and f" {option}" not in readme)
    assert not undocumented, f"README.md does not mention {undocumented}"


@needs_recipes
def test_help_and_readme_document_the_apptainer_commands(definition):
    readme = (REPO_ROOT / "README.md").read_text()
    assert "apptainer build" in readme
    run = re.search(r"apptainer run --cleanenv --nv (.*)", readme)
    assert run, "README must show: apptainer run --cleanenv --nv -B ... IMAGE.sif /data /out participant -w /work"
    command = run.group(1)
    for part in ("-B", ":/data:ro", ":/out", ":/work", "/data /out participant", "-w /work"):
        assert part in command or part in readme, part
    assert "--cleanenv" in definition.sections["help"] and ":/data:ro" in definition.sections["help"]


def test_workflows_readme_describes_every_recipe():
    readme = (WORKFLOWS / "README.md").read_text()
    recipes = [p for p in WORKFLOWS.rglob("*") if p.is_file() and p.name != "README.md" and "__pycache__" not in p.parts]
    assert recipes
    for recipe in recipes:
        assert recipe.relative_to(WORKFLOWS).as_posix() in readme, f"workflows/README.md does not mention {recipe}"


def test_readme_states_the_registry_defaults():
    """The README's tables agree with the registry the CLI reads (no 'paper (default)' drift)."""
    from bids_denoise.denoise.methods import all_options

    readme = (REPO_ROOT / "README.md").read_text()
    preset = all_options()["ddm2_preset"].default
    assert f"| `{preset}` (default) |" in readme
    assert readme.count("(default) |") == 1


def test_makefile_offers_and_documents_the_torch_index_switch():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "TORCH_INDEX_URL ?=" in makefile and '--index-url "$(TORCH_INDEX_URL)"' in makefile
    assert "TORCH_INDEX_URL" in (REPO_ROOT / "README.md").read_text()
