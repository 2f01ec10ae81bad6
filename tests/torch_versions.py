"""Where torch's behaviour differs by release, a test states it per release in a small table."""

from fullgraph.checks._compat import TORCH_VERSION


def per_torch(table):
    """The value `table` gives the running torch.

    `table` maps (major, minor) to what torch does from that release on, until the next key.
    """
    since = [version for version in table if version <= TORCH_VERSION]
    if not since:
        raise LookupError(f"the table starts at torch {min(table)}, this is {TORCH_VERSION}: {table}")
    return table[max(since)]
