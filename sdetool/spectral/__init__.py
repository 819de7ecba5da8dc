"""Pure numerics of the spectrum: no files, no CLI, torch only in the torch Gram backend."""
