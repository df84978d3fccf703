"""Encoders that turn a condition (class, caption, scene graph, ...) into context tokens [B, L, D]."""

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.conditioning.caption import CaptionConditioner, CaptionConfig
from latentforge.conditioning.class_label import ClassConditioner, ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConditioner, SceneGraphConfig

__all__ = ["CaptionConditioner", "CaptionConfig", "Conditioner", "ConditionerConfig", "Context", "ClassConditioner",
           "ClassConfig", "SceneGraphConditioner", "SceneGraphConfig"]
