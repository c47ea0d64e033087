"""The `lanex` command line: every command that is not the trainer's.

`main` is the entry point; `local_commands` drive the local runner, `cluster_commands` the cluster
(through `cluster_client`), with `views` for what they print and `submit` for the submit flags.
May import every other part of lanex_operator.
"""
