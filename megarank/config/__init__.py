"""Experiment configuration: schema (dataclasses), loading/composition (OmegaConf), cross-section checks."""

from megarank.config.load import compose, load_config, to_yaml
from megarank.config.schema import (AnalysisConfig, CheckpointConfig, DataConfig, ExperimentConfig, ModelConfig,
                                    OptimConfig, ParallelConfig, TrainConfig, ZeroConfig)
from megarank.config.validate import data_parallel_size, gradient_accumulation_steps, validate

__all__ = ["compose", "load_config", "to_yaml", "validate", "data_parallel_size", "gradient_accumulation_steps",
           "ExperimentConfig", "ModelConfig", "DataConfig", "OptimConfig", "TrainConfig", "ZeroConfig",
           "CheckpointConfig", "ParallelConfig", "AnalysisConfig"]
