"""On-disk formats for dictionaries: featurelens' own safetensors + JSON folder."""
