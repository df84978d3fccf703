"""Modalities: how each kind of data is stored, fed to networks, previewed and scored (base.py)."""

from latentforge.modalities.base import Modality
from latentforge.modalities.image import ImageModality

__all__ = ["ImageModality", "Modality"]
