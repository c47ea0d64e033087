"""A real Kubernetes control plane on 127.0.0.1 for lanex's tests and `make cluster`.

The components are the upstream programs (kube-apiserver, etcd, kube-controller-manager,
kube-scheduler, kwok, mpi-operator, the CSI snapshot and provisioning machinery, Kueue), built
from their Go modules by the consumer modules in `tools/k8s/` (`build.py`) and started the way
controller-runtime's envtest and kwokctl's binary runtime start them: one module per program,
flags built from a typed config, a health check each, free ports, one state directory per run.
Nothing here imports lanex: the control plane knows nothing of the operator it serves.
"""
