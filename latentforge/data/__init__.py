"""Data sets. Recipes pick one by `data.name` (sets.py); `shapes` is the embedded default."""

from latentforge.data.base import DataConfig, DataSet, build_dataset
from latentforge.data.folder import ImageFolderConfig
from latentforge.data.sets import DigitsDataConfig, PhotosDataConfig, ShapesDataConfig

__all__ = ["DataConfig", "DataSet", "DigitsDataConfig", "ImageFolderConfig", "PhotosDataConfig", "ShapesDataConfig",
           "build_dataset"]
