"""Graph structures built from a Dataset (no training code here)."""
from recjax.graph.hetero import HeteroGraph, Relation

__all__ = ['HeteroGraph', 'Relation']
