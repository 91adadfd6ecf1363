"""dinov3_us: DINOv3 self-supervised pretraining and evaluation for fetal ultrasound."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="dinov3_us",
    version="0.1.0",
    description="DINOv3 pretraining and evaluation pipeline for fetal ultrasound",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dinov3_us", "dinov3_us.*"]),
    package_data={"dinov3_us": ["configs/*.yaml"]},
    # torch is deliberately unpinned here: `make install` pins torch==2.13.0 (CPU) only where no
    # torch >= 2.6 is importable, so a cluster's own CUDA build is kept.
    install_requires=[
        "torch>=2.6",
        "numpy>=1.24",
        "pillow>=9.0",
        "pyyaml>=6.0",
        "submitit>=1.5",
        "tensorboard>=2.14",
        "scikit-learn>=1.3",
        "scipy>=1.10",  # also a dependency of scikit-learn; the data stage labels connected components
        "fvcore>=0.1.5",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "safetensors>=0.4",
    ],
    extras_require={
        # webdataset: the tests read our shards back through wds.WebDataset to prove compatibility; the
        # package itself reads and writes tars with tarfile (why: dinov3_us/data/shards/__init__.py).
        # transformers: tests/interop checks that exported backbones load in DINOv3ViTModel with the same outputs.
        "test": ["pytest>=7.4", "pytest-timeout>=2.1", "ruff>=0.5", "webdataset>=0.2.86", "transformers>=5,<6"],
        "xformers": ["xformers>=0.0.28"],
        # interop: dinov3_us.interop reads/writes Hugging Face folders without these; they are for loading the
        # exported backbones in transformers / timm.
        "interop": ["transformers>=5,<6", "timm>=1.0.20"],
    },
)
