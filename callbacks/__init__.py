"""Lightning callbacks that attach precision emulation to an unmodified Trainer (``boundfinder.callbacks``)."""
