"""lanex trainer: TuSimple data tools, SCNN, (distributed) training, evaluation, inference.

Importable without kopf; heavy modules (torch) are imported by the functions that need them.
"""

__version__ = "0.1.0"
