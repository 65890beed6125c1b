"""Synthetic Common Crawl: WAT files, an image server and an evaluation suite."""
