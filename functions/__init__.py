"""Thin, torch-free handlers: bucket events in, Dramatiq messages and queued manifests out."""
