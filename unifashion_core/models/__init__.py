"""Model parts: vision encoders, the Q-Former, the caption and generation heads, the whole."""
