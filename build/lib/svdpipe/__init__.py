"""svdpipe: shared configuration and storage used by every layer."""
