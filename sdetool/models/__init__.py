"""Moved: the model backends are :mod:`sdetool.extract.models`. This package only keeps the documented command
``python -m sdetool.models.train_lit`` working (now :mod:`sdetool.finetune.train_lit`)."""
