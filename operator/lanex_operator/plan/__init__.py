"""What an experiment runs, decided once for the cluster and the laptop.

`steps` turns a validated spec into an `ExperimentPlan` (commands, images, mounts, child names);
`defaults` holds the cluster-level choices a spec may leave empty (image, classes, scheduler).
Imports nothing of lanex but `api`: the controller, the local runner and the CLI all build on it.
"""
