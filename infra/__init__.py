"""How the pieces are configured and started: bucket setup and the local stack."""
