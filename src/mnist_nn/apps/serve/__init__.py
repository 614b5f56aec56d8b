"""``mnist-nn serve``: a web page to draw digits on and a REST API, both on one Predictor.

Needs the ``serve`` extra (``pip install "mnist-nn[serve]"``): FastAPI, uvicorn, python-multipart.
"""

from .app import create_app
from .server import run

__all__ = ["create_app", "run"]
