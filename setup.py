from setuptools import find_packages, setup

setup(
    name="lmsrr",
    version="0.1.0",
    description="Fast, faithful continual-learning trainer for LMSRR (multi-source representations, "
    "MSIDF fusion, MLRO refinement, ARO regularisation)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lmsrr", "lmsrr.*", "kernels", "kernels.*"]),
    # The built-in source weights (--pretrained builtin) ship inside the package.
    package_data={"lmsrr": ["weights/*.safetensors", "weights/*.json"]},
    # torch and torchvision are capped so that pip never replaces an installed 2.14.1 build.
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "timm>=1.0",
        "numpy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "safetensors",
    ],
    extras_require={
        # transformers: the tests that map a Hugging Face ViT folder onto a timm source;
        # submitit: the test of lmsrr-compare's SLURM path (through submitit's local executor).
        "dev": ["pytest", "pytest-xdist", "pytest-benchmark", "hypothesis", "transformers", "submitit"],
        "tensorboard": ["tensorboard"],
        # NVIDIA DALI input pipelines (--loader dali; picked by --loader auto when installed).
        "dali": ["nvidia-dali-cuda130"],
        # lmsrr-compare --launcher slurm (job arrays through submitit) and --launcher ray.
        "slurm": ["submitit"],
        "ray": ["ray"],
    },
    entry_points={"console_scripts": ["lmsrr-train=lmsrr.cli:main", "lmsrr-compare=lmsrr.compare:main",
                                      "lmsrr-eval=lmsrr.eval_cli:eval_main",
                                      "lmsrr-export=lmsrr.eval_cli:export_main",
                                      "lmsrr-pretrain=lmsrr.pretrain.train:main"]},
)
