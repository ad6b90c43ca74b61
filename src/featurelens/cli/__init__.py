"""The ``featurelens`` command line: one small module per verb, flags mapped 1:1 onto config dataclasses."""
