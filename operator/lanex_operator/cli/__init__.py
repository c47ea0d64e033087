"""The `lanex` command line: every command that is not the trainer's, a thin layer over the `lanex` API.

`main` is the entry point; the command modules (`local_commands`, `cluster_commands`,
`snapshot_commands`, `compare`, `render`) never import one another: what they share is in
`plumbing` (exit codes, errors), `views`, `local_views` and `sweep_views` (how things are shown) and
`submit` (the submit flags). What the commands do goes through `lanex` (`lanex.Workspace`,
`lanex.Cluster`), never straight to `lanex_operator.local` or `lanex_operator.client`.
"""
