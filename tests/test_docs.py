"""Documentation that is generated or promised stays true."""

import pathlib
import re

import typer

from sdetool.cli import app
from sdetool.cli import docs as clidocs
from sdetool.cli import help as clihelp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == clidocs.render(), "docs/cli.md is stale: run `python -m sdetool.cli.docs > docs/cli.md`"


def test_option_details_name_real_options():
    commands = typer.main.get_command(app).commands
    for name, entries in clidocs.option_details().items():
        assert name in commands, f"OPTION_DETAILS names no command {name!r}"
        params = commands[name].params
        known = {clihelp.long_name(p) for p in params if p.param_type_name == "option"}
        known |= {(p.metavar or p.name).upper() for p in params if p.param_type_name == "argument"}
        assert set(entries) <= known, f"{name}: no such option or argument {sorted(set(entries) - known)}"


def test_cli_reference_names_values_as_typed():
    reference = clidocs.render()
    assert "INPUT......" not in reference and "list[str]" not in reference and " range |" not in reference
    assert "sdetool plot [OPTIONS] KIND INPUT...\n" in reference


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|examples|benchmarks)/[^)#]+)\)", readme)
    assert "docs/figures/" in " ".join(links), "the README opens with a figure from the reproduction"
    assert links, "the README links to the docs"
    for link in links:
        assert (ROOT / link).exists(), link


def test_readme_commands_name_the_test_runner_and_the_main_job():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pytest -q" in readme and "python3 -m pytest -q" in ci
    assert "python3 -m pip install torch==2.13.0 -e . && sdetool reproduce --out results" in readme
