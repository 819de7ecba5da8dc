"""House rules that a test can check: pure math modules stay pure; the CLI starts without heavy imports."""

import os
import subprocess
import sys

import pytest

import sdetool

SPECTRAL = sorted(f"sdetool.spectral.{name[:-3]}" for name in os.listdir(os.path.join(os.path.dirname(sdetool.__file__), "spectral"))
                  if name.endswith(".py") and name not in ("__init__.py", "gram_torch.py"))  # torch backend: torch by design
PURE = SPECTRAL + [
    "sdetool.analysis.checks", "sdetool.io.atomic", "sdetool.io.checkpoint", "sdetool.extract.data.fashion_mnist",
    "sdetool.extract.data.items", "sdetool.extract.models", "sdetool.extract.models.base", "sdetool.extract.models.parts",
    "sdetool.finetune.sde", "sdetool.finetune.evaluation", "sdetool.finetune.pairs", "sdetool.finetune.runfolder",
    "sdetool.finetune.trainloop",
]
FORBIDDEN = ["h5py", "typer", "rich", "matplotlib", "torch", "pandas"]


def _loaded_after(statement: str) -> set:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {name.split(".")[0] for name in output.split()}


@pytest.mark.parametrize("module", PURE)
def test_math_modules_import_no_io_ui_or_framework(module):
    loaded = _loaded_after(f"import {module}")
    assert not loaded & set(FORBIDDEN), f"{module} pulls in {sorted(loaded & set(FORBIDDEN))}"


@pytest.mark.parametrize("command", ["analyze", "extract", "finetune", "compare", "plot", "reproduce", "models", "export"])
def test_cli_help_imports_no_numerics(command):
    loaded = _loaded_after(f"from sdetool.cli import app; from typer.testing import CliRunner; CliRunner().invoke(app, ['{command}', '--help'])")
    assert not loaded & {"numpy", "scipy", "h5py", "torch", "pandas", "matplotlib", "transformers"}


def test_results_modules_import_matplotlib_and_torch_lazily():
    loaded = _loaded_after("import sdetool.results.plots, sdetool.results.figures, sdetool.results.compare, sdetool.results.reproduce, sdetool.results.reproduce_report")
    assert not loaded & {"matplotlib", "torch", "transformers", "h5py"}


def test_model_modules_import_torch_and_transformers_lazily():
    loaded = _loaded_after("import sdetool.extract.models.lit, sdetool.extract.models.hf, sdetool.extract.models.st, sdetool.extract.models.openclip, sdetool.extract.extraction, "
                           "sdetool.finetune.run, sdetool.finetune.targets")
    assert not loaded & {"torch", "transformers", "h5py"}


def test_python_dash_m_runs_the_cli():
    completed = subprocess.run([sys.executable, "-m", "sdetool", "--version"], capture_output=True, text=True, check=True)
    assert completed.stdout.startswith("sdetool ")


def test_the_documented_train_lit_command_keeps_its_old_name():
    """``python -m sdetool.models.train_lit`` (issue 13's fresh-machine command) survives the move to finetune."""
    completed = subprocess.run([sys.executable, "-m", "sdetool.models.train_lit", "--help"], capture_output=True,
                               text=True, check=True)
    assert "Train the image tower" in completed.stdout
