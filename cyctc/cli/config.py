"""``cyctc config``: print cyctc's build configuration."""

EXAMPLES = """\
Prints the version, whether OpenMP is on, the default thread count, the work-space budget per call and which
backends (cpu, cuda) are available, and if not, why (the same as python -c "import cyctc; cyctc.show_config()").

examples:
  # what this installation runs with
  cyctc config

  # what a job started with one thread and a 512 MiB work-space budget would get
  OMP_NUM_THREADS=1 CYCTC_MEMORY_LIMIT=512M cyctc config
"""


def add_arguments(parser):
    """``cyctc config`` has no options."""
    parser.epilog = EXAMPLES


def run(args):
    """Print the version, OpenMP state, default thread count and backends."""
    import cyctc

    cyctc.show_config()
    return 0
