"""Stage 8: browse an atlas in a local web app (`featurelens serve`)."""

from featurelens.serve.app import create_app

__all__ = ["create_app"]
