"""FashionSearchNet-v2: attribute localization, attribute representations and search with manipulation.

oneDNN kernels are switched on before TensorFlow is first imported: on the 2-core CPUs this project
targets they are off by default and cost about half the training speed.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
