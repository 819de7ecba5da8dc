"""Documentation that is generated or promised stays true."""

import pathlib
import re

from sdetool import clidocs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == clidocs.render(), "docs/cli.md is stale: run `python -m sdetool.clidocs > docs/cli.md`"


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
