"""lanex control plane: LaneExperiment API, kopf operator, local runner and the `lanex` CLI.

Importable without torch.
"""

__version__ = "0.1.0"
