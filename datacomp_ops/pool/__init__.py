"""Phase 3, the pool: the metadata pass and its models (NSFW, eval-set dedup, faces, CLIP features),
the build's steps, imports of your own data, and publishing a version."""
