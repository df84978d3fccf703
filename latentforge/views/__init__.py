"""Novel-view synthesis: one image of an object and its camera in, any other view of it out."""

from latentforge.views.nvist import NViST, NViSTConfig, to_batch

__all__ = ["NViST", "NViSTConfig", "to_batch"]
