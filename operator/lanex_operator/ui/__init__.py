"""`lanex ui`: a web view of the experiments and sweeps that `lanex get` prints, updated live.

The pages are rendered on the server from the same records as the CLI (`records` shapes them for
the templates); `local_source` reads a `lanex run` workspace, `cluster_source` watches the
LaneExperiment API; `live` turns their changes into server-sent events; `routes` and `app` serve it
all, with `security` guarding non-loopback binds. Nothing is loaded from the internet: the one
charting library (uPlot) is vendored into `static/vendor` from `ui/package-lock.json`.
"""
