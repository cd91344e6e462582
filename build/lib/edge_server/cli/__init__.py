"""``corral``: the operator's command line, ``corral <noun> <verb>``."""
