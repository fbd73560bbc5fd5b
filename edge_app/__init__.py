"""wbc-counter: live five-part leukocyte differential from a hand-moved smear.

The runtime package. It never imports torch: training and export live in
``scripts/``. Heavy or hardware-specific imports (TensorRT, pycuda,
jetson-utils, the TFLite interpreter) are guarded where they are used, so
every machine can import this package.
"""

__version__ = "0.1.0"
