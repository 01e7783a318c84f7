"""bucketbrush: an AI image studio whose API is an S3 bucket.

This package holds what every deployable shares: settings, the job and manifest
contracts, the storage and broker connections, and the command line.
"""

__version__ = "0.1.0"
