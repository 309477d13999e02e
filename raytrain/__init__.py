"""raytrain: distributed TensorFlow training and tuning on Ray, from one experiment YAML."""

import os

# tf.keras must be tf_keras (Keras 2) in every process that builds or loads a model: Keras 3 fails
# under MultiWorkerMirroredStrategy with 2+ workers, and models saved by one Keras do not load in
# the other. It only takes effect if set before TensorFlow is first imported, hence here.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probes, CPU features) buries our output; --verbose
# and an explicit TF_CPP_MIN_LOG_LEVEL bring it back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
