"""Frame capture from a source URI (jetson-utils style) with a newest-frame thread.

``open_source(uri, capture_cfg)`` turns a URI into a ``FrameSource``;
``CaptureThread`` decodes in its own thread and hands the pipeline the newest
frame (live cameras: stale frames are dropped) or every frame in order (files,
so a recorded video gives the same count on any machine).
"""

import logging

from edge_app.capture.sources import CaptureError, Frame, FrameSource, open_source
from edge_app.capture.thread import CaptureState, CaptureThread
from edge_app.capture.uri import SourceURI, parse_uri

logger = logging.getLogger(__name__)

__all__ = ["CaptureError", "CaptureState", "CaptureThread", "Frame", "FrameSource", "SourceURI",
           "open_source", "parse_uri"]
