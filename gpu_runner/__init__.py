"""The runner: Dramatiq workers that turn job specs into outputs and final manifests."""
