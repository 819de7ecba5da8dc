"""Files: the HDF5 store, the input sources, the extraction work folder and atomic writes."""
