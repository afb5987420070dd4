"""``wsi-ats view``: a local web app over a ``wsi-ats predict`` output folder.

Two pages: the cohort (the predictions table, sortable and filterable) and a slide (a deep-zoom
viewer with the attention, the sampled tiles and the tissue mask over the slide, and a gallery of
the sampled tiles at full resolution).

The slide viewer is a small canvas viewer of our own (``static/slide.js``, no library), not Bokeh.
Bokeh is a dependency (the Dask dashboard), but a Bokeh viewer means a Bokeh server or a page that
inlines about a megabyte of BokehJS, and its tile sources assume web-map (Mercator) tile schemes;
ours draws the slide's own pyramid tiles and every overlay directly in level-0 pixels, loads in a
few kilobytes from this package (no CDN, no download at run time), and keeps the server a plain
stdlib ``ThreadingHTTPServer`` that serves only the slides the output folder names.
"""

from __future__ import annotations

from .index import OutputIndex, SlideEntry, ViewerError
from .server import ViewerServer, make_server, serve
from .tiles import TILE, TileGrid, TileOutOfRange, read_tile

__all__ = [
    "TILE",
    "OutputIndex",
    "SlideEntry",
    "TileGrid",
    "TileOutOfRange",
    "ViewerError",
    "ViewerServer",
    "make_server",
    "read_tile",
    "serve",
]
