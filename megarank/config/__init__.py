"""Experiment configuration: schema (dataclasses), loading/composition (OmegaConf), what comes from the data
(resolve), cross-section checks (validate), and the read-only form a run uses (frozen)."""

from megarank.config.frozen import frozen
from megarank.config.load import compose, load_config, parse_overrides, to_yaml
from megarank.config.resolve import DataInfo, resolve
from megarank.config.schema import (AnalysisConfig, CheckpointConfig, DataConfig, ExperimentConfig, ModelConfig,
                                    OptimConfig, ParallelConfig, TrainConfig, ZeroConfig)
from megarank.config.validate import data_parallel_size, gradient_accumulation_steps, validate

__all__ = ["compose", "load_config", "parse_overrides", "to_yaml", "resolve", "DataInfo", "validate", "frozen",
           "data_parallel_size", "gradient_accumulation_steps", "ExperimentConfig", "ModelConfig", "DataConfig",
           "OptimConfig", "TrainConfig", "ZeroConfig", "CheckpointConfig", "ParallelConfig", "AnalysisConfig"]
