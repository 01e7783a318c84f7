"""Adapters that turn non-S3 event feeds into S3 event records for the handler."""
