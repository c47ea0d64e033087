"""The kopf operator: reconciles LaneExperiments into PVCs, Jobs, MPIJobs and VolumeSnapshots.

`runtime` starts kopf, `handlers` registers the event handlers, `reconciler` decides each step,
`builders` turns a plan into manifests, `kube` talks to the API server, `children` caches what the
watches saw; `preflight`, `retention`, `status`, `metrics`, `config` and `tier_steps` each own one
concern around them. Never imports `local` or `cli`.
"""
