"""Phase 1, the crawl: Common Crawl's WAT files (or an import's files) to uid-deduplicated URL partitions."""
