"""Stage 3: SDE and InfoNCE fine-tuning: the loss, the loop, targets, pairs, evaluation, run folders."""
