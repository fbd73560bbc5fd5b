"""The kiosk screen: a HUD renderer and the sinks it is shown on.

``render_hud`` draws one 1280x720 BGR picture (live frame with class-coloured
boxes and track ids, the differential as bars with 95% CIs, progress to the
target, fps/backend, focus and camera warnings, the review strip with the
classifier's attention maps). ``open_display`` picks where it goes: a
jetson-utils ``videoOutput`` on a Jetson, a desktop window elsewhere, or
nothing (``--headless``); ``--record`` adds an MP4 of exactly what is shown.
"""

import logging

from edge_app.display.hud import HudInfo, render_hud
from edge_app.display.sinks import DisplayError, HeadlessSink, Mp4Recorder, open_display

logger = logging.getLogger(__name__)

__all__ = ["DisplayError", "HeadlessSink", "HudInfo", "Mp4Recorder", "open_display", "render_hud"]
