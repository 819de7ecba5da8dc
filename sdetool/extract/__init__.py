"""Stage 1: models over images and texts into an HDF5 store (models/, data/, the loop)."""
