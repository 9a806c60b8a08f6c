"""Stage 2, features: CLIP encoders, video frames, feature stores, extraction jobs and the memory bank."""
