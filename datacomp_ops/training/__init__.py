"""Phase 5, training: a subset resharded, and CLIP trained on it with DataComp's recipe for its scale."""
