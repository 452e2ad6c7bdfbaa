"""semhash_spark: semantic hashing on Spark."""
