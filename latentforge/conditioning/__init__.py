"""Encoders that turn a condition (class, scene graph, ...) into context tokens [B, L, D]."""

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.conditioning.class_label import ClassConditioner, ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConditioner, SceneGraphConfig

__all__ = ["Conditioner", "ConditionerConfig", "Context", "ClassConditioner", "ClassConfig",
           "SceneGraphConditioner", "SceneGraphConfig"]
