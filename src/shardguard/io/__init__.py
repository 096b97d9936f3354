"""Reading shards and writing results."""

from shardguard.io.readers import Shard, ShardError, ShardReader, UsageError, discover_shards
from shardguard.io.writers import QuarantineWriter

__all__ = ["Shard", "ShardError", "ShardReader", "UsageError", "discover_shards", "QuarantineWriter"]
