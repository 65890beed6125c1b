"""Phase 2, the download: which URLs a run fetches, and img2dataset over each partition into shards."""
