"""rckd: Relative Confidence Knowledge Distillation, end to end."""

__version__ = "0.1.0"
