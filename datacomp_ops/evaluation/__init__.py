"""Phase 6, evaluation: zero-shot evaluation on DataComp's tasks, and the leaderboard over every run."""
