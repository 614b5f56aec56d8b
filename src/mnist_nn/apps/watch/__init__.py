"""``mnist-nn watch``: a local page that shows training runs live, from their run directories.

The loss every ``log_every`` batches, the evaluation loss and accuracy per epoch, the epoch a run
is on, the time per epoch, what the model answers for ten test digits after each epoch, and the
test accuracy once a run ends; several runs overlaid for comparing. It reads the files the trainer
writes anyway (``runs.py``), so it watches a run in progress, a finished one, a resumed one and a
data-parallel one (rank 0's directory) alike.

Needs the ``serve`` extra (FastAPI, uvicorn). The charts are uPlot, vendored under
``static/vendor`` with its licence: the page loads nothing from the internet.
"""

from .runs import Watcher, check_run_dir
from .server import DEFAULT_PORT, WatchServer, beside_training, bind, run

__all__ = ["DEFAULT_PORT", "WatchServer", "Watcher", "beside_training", "bind", "check_run_dir", "run"]
