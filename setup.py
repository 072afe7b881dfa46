"""Installs fashionsearchnet_v2, its experiments and data converters.

`pip install -e .` is all a fresh Python 3.11 machine needs; `pip install -e .[test]` adds the test and
lint tools that `.ci/run` uses; `pip install -e .[web]` the search service's web stack; `pip install -e .[beam]`
Apache Beam for embedding catalogues on many workers (`.ci/run` installs it too, for its tests).
"""

import setuptools

# The search service (`python -m experiments.serve`): FastAPI on uvicorn, python-multipart for uploads.
WEB = ["fastapi>=0.110,<1", "uvicorn>=0.29,<1", "python-multipart>=0.0.9,<1", "threadpoolctl>=3.5,<4"]
# Batch embedding on Apache Beam (`python -m experiments.embed_beam`). One minor version: the pipeline
# subclasses Beam's TFRecord source to number the records, and 2.77 is the release checked against
# TensorFlow 2.21 (it needs protobuf < 7 and pillow < 13, which pip then installs: versions TensorFlow,
# TensorBoard, matplotlib and scikit-image accept). google-crc32c: the C CRC32C that Beam's TFRecord IO
# uses when present (its pure-Python fallback checksums every image record byte by byte).
BEAM = ["apache-beam[tfrecord]==2.77.*", "google-crc32c>=1.5,<2"]

setuptools.setup(
    name="fashionsearchnet_v2",
    version="0.1.0",
    description="FashionSearchNet-v2: image retrieval with attribute manipulation (TensorFlow/Keras).",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["fashionsearchnet_v2*", "experiments*", "data_prep*"]),
    package_data={"data_prep": ["*.csv"], "fashionsearchnet_v2": ["py.typed", "serving/static/*"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorboard>=2.21,<2.22",
        # TensorFlow's own dependency, held below 0.7: ml_dtypes 0.7.0 registers its ufunc loops in numpy
        # one by one at import, which took 1.3 s of every process's start on a 2-core EPYC (0.6.0: 6 ms);
        # every command and test process pays it (docs/performance.md, "The test suite").
        "ml_dtypes>=0.5.1,<0.7",
        "numpy>=1.26,<3",
        "opencv-python-headless>=4.9,<5",
        "scikit-image>=0.22,<0.27",
        "absl-py>=2.1,<3",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        # The service's tests run it (TestClient needs httpx2) and drive its page in Chromium (selenium).
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.8,<4",
            # One minor version: ruff's minor releases change the formatter's style (`ruff format --check`
            # in .ci/run would then fail a fresh install on code nobody touched).
            "ruff>=0.17,<0.18",
            "faiss-cpu>=1.8",
            *WEB,
            "httpx2>=2.16,<3",
            "selenium>=4.20,<5",
        ],
        "faiss": ["faiss-cpu>=1.8"],
        "web": WEB,
        "beam": BEAM,
    },
)
