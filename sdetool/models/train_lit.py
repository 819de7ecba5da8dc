"""``python -m sdetool.models.train_lit``: kept for the command's old name; runs :mod:`sdetool.finetune.train_lit`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("sdetool.finetune.train_lit", run_name="__main__", alter_sys=True)
