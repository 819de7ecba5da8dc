"""Where the work runs: devices and torch.distributed."""
