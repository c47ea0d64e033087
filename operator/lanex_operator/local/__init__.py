"""The local backend: an experiment's volume is a directory, its steps are processes."""
