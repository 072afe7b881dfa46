"""Installs fashionsearchnet_v2, its experiments and data converters.

`pip install -e .` is all a fresh Python 3.11 machine needs; `pip install -e .[test]` adds the test and
lint tools that `.ci/run` uses.
"""

import setuptools

setuptools.setup(
    name="fashionsearchnet_v2",
    version="0.1.0",
    description="FashionSearchNet-v2: image retrieval with attribute manipulation (TensorFlow/Keras).",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["fashionsearchnet_v2*", "experiments*", "data_prep*"]),
    package_data={"data_prep": ["*.csv"], "fashionsearchnet_v2": ["py.typed"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26,<3",
        "opencv-python-headless>=4.9,<5",
        "scikit-image>=0.22,<0.27",
        "absl-py>=2.1,<3",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "ruff>=0.6,<1", "faiss-cpu>=1.8"],
        "faiss": ["faiss-cpu>=1.8"],
    },
)
