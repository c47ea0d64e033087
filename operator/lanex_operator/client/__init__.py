"""The cluster side of the `lanex` Python API: a synchronous Kubernetes client and what it reads.

`cluster` talks to the API server (plain dicts in and out, one-line `ClusterError`s); `pods` finds
the pod whose log to show. Used by `lanex.Cluster` (and so by the CLI); never by the operator,
which has its own asynchronous client (`controller.kube`). Nothing here imports kopf or torch.
"""
