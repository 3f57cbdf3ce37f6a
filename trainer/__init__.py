"""The training half of hpsearch: Keras models, datasets, the training loop and the worker.

Never imports ``service``, FastAPI, SQLAlchemy or Optuna: it talks to the service over HTTP.
"""

import os

# TensorFlow's C++ logging floods stderr with start-up notices; Python-level errors still raise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
