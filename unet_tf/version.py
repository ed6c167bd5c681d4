"""The release, in a module of its own: the model folder, the exports and packaging read it
without importing anything else of unet-tf."""

__version__ = "0.4.0"
