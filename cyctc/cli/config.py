"""``cyctc config``: print cyctc's build configuration."""


def add_arguments(parser):
    """``cyctc config`` has no options."""


def run(args):
    """Print the version, OpenMP state, default thread count and backends."""
    import cyctc

    cyctc.show_config()
    return 0
