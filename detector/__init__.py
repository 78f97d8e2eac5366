"""Turn images into evidence: vectors and hashes for the store, scores for users."""
