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
    # The same commands as launchers/*.py and tools/*.py (which stay the documented way to run them).
    entry_points={
        "console_scripts": [
            "dinov3us-pretrain = dinov3_us.launch.submit_pretrain:main",  # launchers/submit_pretrain.py
            "dinov3us-eval = dinov3_us.launch.submit_eval:main",  # launchers/submit_eval.py
            "dinov3us-status = dinov3_us.launch.status:main",  # launchers/status.py
            "dinov3us-train = dinov3_us.launch.cli_train:main",  # tools/train.py
            "dinov3us-build-dataset = dinov3_us.launch.cli_build_dataset:main",  # tools/build_dataset.py
            "dinov3us-convert = dinov3_us.launch.cli_convert:main",  # tools/convert_checkpoint.py
            "dinov3us-compare = dinov3_us.launch.cli_compare:main",  # tools/compare_results.py
            "dinov3us-eval-linear = dinov3_us.launch.cli_eval:linear",  # tools/eval_linear.py
            "dinov3us-eval-knn = dinov3_us.launch.cli_eval:knn",  # tools/eval_knn.py
            "dinov3us-eval-finetune = dinov3_us.launch.cli_eval:finetune",  # tools/eval_finetune.py
            "dinov3us-eval-segmentation = dinov3_us.launch.cli_eval:segmentation",  # tools/eval_segmentation.py
        ],
    },
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
        # interop: dinov3_us.weights reads/writes Hugging Face folders without these; they are for loading the
        # exported backbones in transformers / timm.
        "interop": ["transformers>=5,<6", "timm>=1.0.20"],
    },
)
