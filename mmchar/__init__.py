"""mmchar: where the time goes in text-to-image and text-to-video generation."""

__version__ = "0.1.0"
