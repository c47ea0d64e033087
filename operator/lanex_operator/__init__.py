"""lanex control plane: LaneExperiment API, kopf operator, local runner and the `lanex` CLI.

Importable without torch. The packages are layered: `api` (the models) and `plan` (the steps)
import nothing above them; `controller` (the operator) and `local` (the laptop runner) build on
them and never on each other or on `cli`; `cli` may use everything. `azure` serves the controller.
tests/test_layout.py keeps these rules.
"""

__version__ = "0.1.0"
